"""Layer maximisation (Co et al. 2021): a UAP that maximises one hidden layer's activations.

Co, Munoz-Gonzalez, de Maupeou and Lupu, "Jacobian Regularization for
Mitigating Universal Adversarial Perturbations" (ICANN 2021) craft UAPs
that blow up the activations of one layer ``a``:

    max_{||v||_p <= eps}  mean_x ||a(clip(x + v, 0, 1))||_2^2,

by SGD-UAP's minibatch sign-gradient steps
(:func:`~jacuap.attacks.sgd_uap.sgd_uap` with ``features_fn`` and
``loss="norm"``); no labels are read.  The authors maximise the batch
Frobenius norm ``sqrt(sum_b ||a_b||^2)``, whose gradient is a positive
multiple of this one, so the sign steps coincide.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax

from jacuap.attacks.registry import AttackSpec, Crafting, epochs_progress, register
from jacuap.attacks.result import UAPResult
from jacuap.attacks.sgd_uap import sgd_uap
from jacuap.jacobian import ApplyFn

__all__ = ["layer_max_uap"]


def layer_max_uap(apply_fn: ApplyFn, params: Any, x: jax.Array, y: Optional[jax.Array] = None, *, eps: float,
                  norm: str = "linf", key: Optional[jax.Array] = None,
                  features_fn: Callable[[Any, jax.Array], jax.Array], **sgd_uap_kwargs: Any) -> UAPResult:
    """``v`` maximising ``mean_x ||a(clip(x + v, 0, 1))||^2`` (module docstring); ``y`` is ignored.

    ``features_fn`` (required) gives the layer's output, e.g.
    :func:`jacuap.models.layer_features_fn`; ``sgd_uap_kwargs`` go to
    :func:`~jacuap.attacks.sgd_uap.sgd_uap` (``num_epochs``, ``batch_size``, ...).
    """
    if features_fn is None or not callable(features_fn):
        raise ValueError("layer_max_uap: features_fn (the layer to maximise) is required")
    return sgd_uap(apply_fn, params, x, None, eps=eps, norm=norm, key=key, features_fn=features_fn, loss="norm",
                   **sgd_uap_kwargs)


def _craft(c: Crafting) -> UAPResult:
    settings = {k: v for k, v in c.settings.items() if k != "layer"}
    return layer_max_uap(c.apply_fn, c.params, c.x, None, eps=c.eps, norm=c.norm, key=c.key,
                         features_fn=c.layers.feature(c.layer_names("layer_max", "penultimate")[0]),
                         progress=epochs_progress(c), **settings)


register(AttackSpec(
    "layer_max", layer_max_uap, needs_labels=False, layers="one",
    settings={"layer": None, "num_epochs": 5, "batch_size": 128},
    request_settings={"num_epochs": "sgd_epochs", "layer": "layer"}, craft=_craft,
    gradient_evaluations=lambda s, n, k: s["num_epochs"] * n,
    summary="max_v mean_x ||a(x + v)||^2 for one hidden layer a (Co et al., ICANN 2021)"))
