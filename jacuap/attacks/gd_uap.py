"""GD-UAP (Mopuri, Ganeshan, Babu, TPAMI 2018): a data-free UAP that saturates the network's layers.

Mopuri et al., "Generalizable Data-free Objective for Crafting Universal
Adversarial Perturbations" (TPAMI 2018): without the task's data or labels,
make ``v`` excite as many features as possible, so that the layers'
activations are dominated by the perturbation:

    max_{||v||_p <= eps}  mean_x sum_{l in L} log ||f_l(clip(x + v, 0, 1))||_2

over a set ``L`` of hidden layers, with one of three priors on ``x``
(:mod:`.priors`): none (``x`` is the centre of the pixel box, the paper's
"no data"), the range prior (random images in the pixel range) or the data
prior (real inputs, still without labels).  Optimised by SGD-UAP's
normalised steps (:func:`~jacuap.attacks.sgd_uap.sgd_uap` with
``loss="log_norms"``); the authors use Adam.  Labels are never read: the
attack is untargeted only.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import jax

from jacuap.attacks.priors import split_prior_key
from jacuap.attacks.registry import AttackSpec, Crafting, epochs_progress, register
from jacuap.attacks.result import UAPResult
from jacuap.attacks.sgd_uap import sgd_uap
from jacuap.jacobian import ApplyFn

__all__ = ["gd_uap"]


def gd_uap(
    apply_fn: ApplyFn,
    params: Any,
    x: Optional[jax.Array] = None,
    y: Optional[jax.Array] = None,
    *,
    eps: float,
    norm: str = "linf",
    key: Optional[jax.Array] = None,
    features_fn: Callable[[Any, jax.Array], Any],
    prior: str = "none",
    input_shape: Optional[Sequence[int]] = None,
    num_inputs: int = 5000,
    num_epochs: int = 5,
    batch_size: int = 128,
    step_size: Optional[float] = None,
    step_decay: float = 0.7,
    init: Optional[jax.Array] = None,
    progress: Optional[Callable[[int, float], None]] = None,
) -> UAPResult:
    """GD-UAP: ``v`` maximising ``mean sum_l log ||f_l(clip(x + v, 0, 1))||`` (module docstring).

    Args:
      apply_fn, params: the model (``apply_fn`` is checked on the inputs).
      x: real inputs for ``prior="data"``; None for ``"none"``/``"range"``.
      y: ignored (no labels); accepted for the common signature.
      features_fn: ``(params, x) -> array or tuple of arrays``, the layers
        ``L`` (e.g. :func:`jacuap.models.layers_features_fn`).  Required.
      prior: ``"none"`` (default, the paper's no-data setting), ``"range"``
        or ``"data"``.
      input_shape, num_inputs: one input's shape and how many prior inputs
        (data-free priors only; with ``"none"`` they are all the same).
      the rest: as for :func:`~jacuap.attacks.sgd_uap.sgd_uap`.

    Returns:
      ``UAPResult(v, history)``, ``history`` the minibatch objectives.

    >>> import jax, jax.numpy as jnp
    >>> W = jnp.array([[1.0, 0.0, -1.0], [0.0, 1.0, -1.0]])
    >>> apply_fn = lambda W, x: x.reshape(len(x), -1) @ W
    >>> relu = lambda W, x: (jax.nn.relu(x.reshape(len(x), -1) @ W),)
    >>> v, _ = gd_uap(apply_fn, W, eps=0.1, key=jax.random.PRNGKey(0), features_fn=relu,
    ...               input_shape=(2,), num_inputs=8, num_epochs=1, batch_size=8)
    >>> print(v)
    [0.1 0.1]
    """
    if features_fn is None or not callable(features_fn):
        raise ValueError("gd_uap: features_fn (the layers whose log norms are ascended) is required")
    inputs, attack_key = split_prior_key(prior, x, key, "gd_uap", shape=input_shape, num_inputs=num_inputs)
    return sgd_uap(apply_fn, params, inputs, None, eps=eps, norm=norm, key=attack_key, num_epochs=num_epochs,
                   batch_size=batch_size, step_size=step_size, step_decay=step_decay, init=init, progress=progress,
                   features_fn=features_fn, loss="log_norms")


def _craft(c: Crafting) -> UAPResult:
    settings = {k: v for k, v in c.settings.items() if k != "layer"}
    prior = settings.pop("prior")
    features_fn = c.require_layers("gd_uap").features(c.layer_names("gd_uap", "hidden"))
    return gd_uap(c.apply_fn, c.params, c.x if prior == "data" else None, None, eps=c.eps, norm=c.norm, key=c.key,
                  features_fn=features_fn, prior=prior, input_shape=c.input_shape, num_inputs=len(c.x),
                  progress=epochs_progress(c), **settings)


register(AttackSpec(
    "gd_uap", gd_uap, needs_data=False, needs_labels=False, layers="many",
    settings={"prior": "none", "layer": None, "num_epochs": 5, "batch_size": 128},
    request_settings={"num_epochs": "sgd_epochs", "layer": "layer", "prior": "prior"}, craft=_craft,
    gradient_evaluations=lambda s, n, k: s["num_epochs"] * n,
    summary="max_v mean_x sum_l log ||f_l(x + v)||, x from no data, a range prior or data (Mopuri et al., "
            "TPAMI 2018)"))
