"""Cosine-UAP (Zhang, Benz, Karjauv, Kweon, ICCV 2021): decorrelate the perturbed logits from the clean ones.

Zhang et al., "Data-free Universal Adversarial Perturbation and Black-box
Attack" (ICCV 2021) observe that a UAP works by making the model's output
on ``x + v`` independent of its output on ``x``, and so minimise their
cosine similarity, with no labels:

    min_{||v||_p <= eps}  mean_x cos(f(clip(x + v, 0, 1)), f(x))

over real data or over proxy data; the data-free form crafts on inputs that
carry no information about the task (:mod:`.priors`: ``"range"``, random
images in the pixel range, or ``"none"``).  Optimised here by SGD-UAP's
normalised steps (:func:`~jacuap.attacks.sgd_uap.sgd_uap` with
``loss="cosine"``) from a random point of the ball: the cosine is at its
maximum, so stationary, at ``v = 0``, where its gradient is rounding noise.
The authors use Adam on ``v`` with clamping.  Labels are
never read, so the attack is untargeted only.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import jax

from jacuap.attacks.priors import split_prior_key
from jacuap.attacks.registry import AttackSpec, Crafting, epochs_progress, register
from jacuap.attacks.result import UAPResult
from jacuap.attacks.sgd_uap import sgd_uap
from jacuap.jacobian import ApplyFn

__all__ = ["cosine_uap"]


def cosine_uap(
    apply_fn: ApplyFn,
    params: Any,
    x: Optional[jax.Array] = None,
    y: Optional[jax.Array] = None,
    *,
    eps: float,
    norm: str = "linf",
    key: Optional[jax.Array] = None,
    prior: str = "data",
    input_shape: Optional[Sequence[int]] = None,
    num_inputs: int = 5000,
    num_epochs: int = 5,
    batch_size: int = 128,
    step_size: Optional[float] = None,
    step_decay: float = 0.7,
    init: Optional[jax.Array] = None,
    progress: Optional[Callable[[int, float], None]] = None,
) -> UAPResult:
    """Cosine-UAP: ``v`` minimising ``mean cos(f(clip(x + v, 0, 1)), f(x))`` (module docstring).

    Args:
      apply_fn, params: the model, ``(B, *S) -> (B, K)`` logits.
      x: crafting inputs ``(N, *S)`` for ``prior="data"`` (real or proxy
        data); must be None for the data-free priors.
      y: ignored (the objective reads no labels); accepted so that every
        universal attack has the same signature.
      eps, norm: the budget ``||v||_p <= eps``.
      key: PRNG key (required): the prior's images and the minibatch order.
      prior: ``"data"``, ``"range"`` or ``"none"`` (:mod:`.priors`).
      input_shape, num_inputs: one input's shape and how many prior inputs
        to draw (data-free priors only).
      num_epochs, batch_size, step_size, step_decay, init, progress: as for
        :func:`~jacuap.attacks.sgd_uap.sgd_uap`.

    Returns:
      ``UAPResult(v, history)`` with ``history`` the minibatch objectives
      (``-cos``, so rising towards 0 or above as the attack decorrelates).

    >>> import jax, jax.numpy as jnp
    >>> W = jnp.array([[1.0, 0.0, -1.0], [0.0, 1.0, -1.0]])
    >>> apply_fn = lambda W, x: x.reshape(len(x), -1) @ W
    >>> v, _ = cosine_uap(apply_fn, W, None, eps=0.1, key=jax.random.PRNGKey(0), prior="range",
    ...                   input_shape=(2,), num_inputs=64, num_epochs=2, batch_size=16)
    >>> v.shape, bool(jnp.max(jnp.abs(v)) <= 0.1)
    ((2,), True)
    """
    inputs, attack_key = split_prior_key(prior, x, key, "cosine_uap", shape=input_shape, num_inputs=num_inputs)
    return sgd_uap(apply_fn, params, inputs, None, eps=eps, norm=norm, key=attack_key, num_epochs=num_epochs,
                   batch_size=batch_size, step_size=step_size, step_decay=step_decay, init=init, progress=progress,
                   loss="cosine")


def _craft(c: Crafting) -> UAPResult:
    settings = dict(c.settings)
    prior = settings.pop("prior")
    data_free = prior != "data"
    return cosine_uap(c.apply_fn, c.params, None if data_free else c.x, None, eps=c.eps, norm=c.norm, key=c.key,
                      prior=prior, input_shape=c.input_shape, num_inputs=len(c.x), progress=epochs_progress(c),
                      **settings)


register(AttackSpec(
    "cosine_uap", cosine_uap, needs_labels=False,
    settings={"prior": "data", "num_epochs": 5, "batch_size": 128},
    request_settings={"num_epochs": "sgd_epochs", "prior": "prior"},
    craft=_craft, gradient_evaluations=lambda s, n, k: s["num_epochs"] * n,
    summary="min_v mean_x cos(f(x + v), f(x)) on the logits, real or proxy data (Zhang et al., ICCV 2021)"))
