"""FG-UAP (Ye et al., 2022): a feature-gathering UAP from the cosine of one layer's features.

Ye, Liu, Zhang, Jiang, Chen and Cheng, "FG-UAP: Feature-Gathering Universal
Adversarial Perturbation" (arXiv 2209.13113): attack a hidden layer ``a``
(by default the one before the classifier) instead of the logits,

    min_{||v||_p <= eps}  mean_x cos(a(clip(x + v, 0, 1)), a(x)),

with no labels.  The paper's explanation of why this works is *feature
gathering*: the perturbed features collapse onto one dominant direction,
whatever the input, so every input lands in the same region of feature space
and then in the same wrong class.  :func:`feature_gathering` measures it, as
the share of the feature matrix's energy along its top singular direction,

    d(A) = sigma_1(A)^2 / ||A||_F^2          (A: N x d, one row per input)

which is 1 when every row lies on one line and ``1/min(N, d)`` at most
spread; the attack should raise ``d`` from the clean to the perturbed
features.  Optimised by SGD-UAP's normalised steps
(:func:`~jacuap.attacks.sgd_uap.sgd_uap` with ``loss="cosine"`` and
``features_fn``), from a random point of the ball (the cosine is at its
maximum, so stationary, at ``v = 0``); untargeted only.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jacuap.attacks.result import UAPResult
from jacuap.attacks.registry import AttackSpec, Crafting, epochs_progress, register
from jacuap.attacks.sgd_uap import sgd_uap
from jacuap.jacobian import ApplyFn

__all__ = ["fg_uap", "feature_gathering", "dominance"]


def fg_uap(
    apply_fn: ApplyFn,
    params: Any,
    x: jax.Array,
    y: Optional[jax.Array] = None,
    *,
    eps: float,
    norm: str = "linf",
    key: Optional[jax.Array] = None,
    features_fn: Callable[[Any, jax.Array], jax.Array],
    num_epochs: int = 5,
    batch_size: int = 128,
    step_size: Optional[float] = None,
    step_decay: float = 0.7,
    init: Optional[jax.Array] = None,
    progress: Optional[Callable[[int, float], None]] = None,
) -> UAPResult:
    """FG-UAP: ``v`` minimising ``mean cos(a(clip(x + v, 0, 1)), a(x))`` (module docstring).

    Args:
      apply_fn, params: the model (checked on ``x``).
      x: crafting inputs ``(N, *S)`` (real or proxy data).
      y: ignored (no labels); accepted for the common signature.
      features_fn: ``(params, x) -> (B, ...)``, the attacked layer (e.g.
        :func:`jacuap.models.layer_features_fn`).  Required.
      the rest: as for :func:`~jacuap.attacks.sgd_uap.sgd_uap`.

    >>> import jax, jax.numpy as jnp
    >>> W = jnp.array([[1.0, 0.0, -1.0], [0.0, 1.0, -1.0]])
    >>> apply_fn = lambda W, x: x.reshape(len(x), -1) @ W
    >>> x = jax.random.uniform(jax.random.PRNGKey(1), (32, 2))
    >>> v, _ = fg_uap(apply_fn, W, x, eps=0.2, key=jax.random.PRNGKey(0), features_fn=apply_fn, num_epochs=2)
    >>> bool(jnp.max(jnp.abs(v)) <= 0.2)
    True
    """
    if features_fn is None or not callable(features_fn):
        raise ValueError("fg_uap: features_fn (the attacked layer) is required")
    return sgd_uap(apply_fn, params, x, None, eps=eps, norm=norm, key=key, num_epochs=num_epochs,
                   batch_size=batch_size, step_size=step_size, step_decay=step_decay, init=init, progress=progress,
                   features_fn=features_fn, loss="cosine")


def dominance(features: Any) -> float:
    """``sigma_1(A)^2 / ||A||_F^2`` of the ``(N, d)`` matrix of flattened features, in float64.

    >>> dominance(np.array([[1.0, 2.0], [2.0, 4.0]])), dominance(np.eye(2))
    (1.0, 0.5)
    """
    a = np.asarray(features, np.float64).reshape(len(features), -1)
    total = float(np.sum(a * a))
    if total == 0.0:
        return float("nan")
    return float(np.linalg.norm(a, 2) ** 2 / total)


def feature_gathering(features_fn: Callable[[Any, jax.Array], jax.Array], params: Any, x: Any, v: Any,
                      batch_size: int = 500) -> Dict[str, float]:
    """How far ``v`` gathers a layer's features onto one direction: ``{"clean": d(A0), "perturbed": d(A)}``.

    ``A0`` holds the features of ``x``, ``A`` those of ``clip(x + v, 0, 1)``
    (computed in batches of ``batch_size``); ``d`` is :func:`dominance`.
    """
    x = np.asarray(x)
    clean, perturbed = [], []
    for start in range(0, len(x), batch_size):
        xb = jnp.asarray(x[start:start + batch_size])
        clean.append(np.asarray(features_fn(params, xb)).reshape(len(xb), -1))
        perturbed.append(np.asarray(features_fn(params, jnp.clip(xb + v, 0.0, 1.0))).reshape(len(xb), -1))
    return {"clean": dominance(np.concatenate(clean)), "perturbed": dominance(np.concatenate(perturbed))}


def _features(c: Crafting) -> Callable:
    return c.require_layers("fg_uap").feature(c.layer_names("fg_uap", "penultimate")[0])


def _craft(c: Crafting) -> UAPResult:
    settings = {k: v for k, v in c.settings.items() if k != "layer"}
    return fg_uap(c.apply_fn, c.params, c.x, None, eps=c.eps, norm=c.norm, key=c.key, features_fn=_features(c),
                  progress=epochs_progress(c), **settings)


def _report(c: Crafting, v: Any) -> Dict[str, Any]:
    gathering = feature_gathering(_features(c), c.params, np.asarray(c.x)[:1000], v)
    return {"layer": c.layer_names("fg_uap", "penultimate")[0], "feature_dominance_clean": gathering["clean"],
            "feature_dominance_perturbed": gathering["perturbed"]}


register(AttackSpec(
    "fg_uap", fg_uap, needs_labels=False, layers="one",
    settings={"layer": None, "num_epochs": 5, "batch_size": 128},
    request_settings={"num_epochs": "sgd_epochs", "layer": "layer"}, craft=_craft, report=_report,
    gradient_evaluations=lambda s, n, k: s["num_epochs"] * n,
    summary="min_v mean_x cos(a(x + v), a(x)) for the layer a before the classifier; reports the features' "
            "dominance sigma_1^2/||A||_F^2 (Ye et al., 2022)"))
