"""The Jacobian-regularized training loss.

    loss(params) = mean_b CE(f(x_b), y_b) + jr_lambda * 0.5 * mean_b ||J(z_b)||_F^2

Hoffman, Roberts & Yaida (2019)'s ``JacobianReg`` convention exactly, so a
``jr_lambda`` means what ``lambda_JR`` means in their PyTorch code: the
factor 1/2, and (``jr_space="normalized"``, the default) the Jacobian with
respect to the normalised input ``z = (x - mean) / std``, which is what that
code differentiates when normalisation is a data transform.  Since
``J(z) = J(x) diag(std)``, this is the pixel-space penalty with each channel
weighted by ``std_c^2``; ``jr_space="pixels"`` penalises ``J(x)`` itself,
in the units of the UAP bounds (``sum_i ||J(x_i) v||^2 <= sigma_max(J_X)^2
||v||^2``).  ``||J||_F^2`` is exact (``jr_num_proj=None``, ``K`` VJPs) or
estimated with ``jr_num_proj`` random projections; the logits and the
penalty share one forward pass
(:func:`jacuap.jacobian.logits_and_jacobian_penalty`).

``jr_mode`` swaps the penalty for another of :mod:`.regularizers`
(``stacked_spectral``: ``sigma_max(J_B)^2 / |B|``; ``alignment``: the mean
squared Frobenius cosine of pairs' Jacobians), on the same input space.
TRADES (``adv_images`` given) adds ``trades_beta * mean_b KL(softmax f(x_b)
|| softmax f(x'_b))`` (:func:`trades_kl`).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import optax

from jacuap import jacobian
from jacuap.train import regularizers

__all__ = ["PENALTIES", "loss_fn", "skips_penalty", "trades_kl"]


def trades_kl(logits: jax.Array, adv_logits: jax.Array) -> jax.Array:
    """``mean_b KL(softmax(logits_b) || softmax(adv_logits_b))``, TRADES' robust term (Zhang et al. 2019).

    >>> float(trades_kl(jnp.zeros((2, 3)), jnp.zeros((2, 3))))
    0.0
    """
    logp, logq = jax.nn.log_softmax(logits), jax.nn.log_softmax(adv_logits)
    return jnp.mean(jnp.sum(jnp.exp(logp) * (logp - logq), axis=-1))


def _stacked_spectral(apply_fn, params, x, key, num_proj, jr_vec):
    if jr_vec is None:
        raise ValueError("loss_fn: jr_mode='stacked_spectral' needs jr_vec (the train state's jr_vec)")
    return regularizers.logits_and_stacked_spectral_penalty(apply_fn, params, x, jr_vec)


#: ``jr_mode -> (apply_fn, params, x, key, jr_num_proj, jr_vec) -> (logits, penalty)``: the penalty
#: ``jr_lambda`` weighs, one entry per mode (:data:`jacuap.train.regularizers.JR_MODES` lists the same).
PENALTIES = {
    "frobenius": lambda f, p, x, key, num_proj, jr_vec: jacobian.logits_and_jacobian_penalty(f, p, x, key, num_proj),
    "stacked_spectral": _stacked_spectral,
    "alignment": lambda f, p, x, key, num_proj, jr_vec: regularizers.logits_and_alignment_penalty(f, p, x),
}


def skips_penalty(jr_lambda: Any) -> bool:
    """Whether the penalty is skipped: ``jr_lambda`` is the Python number 0 (known while tracing).

    A traced ``jr_lambda`` (one per model of a :mod:`~jacuap.train.population`) cannot decide that, so the
    penalty is computed and weighed by it, 0 included.
    """
    return isinstance(jr_lambda, (int, float)) and jr_lambda == 0


def loss_fn(
    params: Any,
    apply_fn: Callable,
    images: jax.Array,
    labels: jax.Array,
    jr_lambda: float,
    key: Optional[jax.Array],
    jr_num_proj: Optional[int],
    input_std: Optional[Tuple[float, ...]] = None,
    jr_mode: str = "frobenius",
    jr_vec: Optional[jax.Array] = None,
    adv_images: Optional[jax.Array] = None,
    trades_beta: float = 0.0,
) -> Tuple[jax.Array, Dict[str, jax.Array]]:
    """``CE + jr_lambda * 0.5 * mean_b ||J||_F^2`` and its parts.

    Args:
      params: model parameters.
      apply_fn: ``(params, x) -> logits``, ``(B, *S) -> (B, K)``.
      images: ``(B, *S)`` pixels in ``[0, 1]``; ``labels``: ``(B,)`` int.
      jr_lambda: penalty weight; with ``0`` (a Python number) the penalty is
        not computed at all, so the plain model trains at plain speed.
      key: PRNG key of the random projections (required when
        ``jr_num_proj`` is set and ``jr_lambda > 0``).
      jr_num_proj: projections, or None for the exact ``||J||_F^2``.
      input_std: per-channel std of the model's input normalisation; when
        given, the Jacobian is taken with respect to ``z = (x - mean) / std``
        (``jr_space="normalized"``), by the same kernel on
        ``z -> f(x + std * (z - z_b))`` at ``z = z_b``, whose Jacobian is
        ``J(x) diag(std)``.
      jr_mode: ``"frobenius"`` (the above), ``"stacked_spectral"``
        (``||J_B v||^2 / |B|`` with ``jr_vec`` = ``v``, the unit right
        singular vector estimate, held constant) or ``"alignment"``
        (:mod:`jacuap.train.regularizers`); ``penalty`` is then that value,
        without the factor 1/2.
      jr_vec: ``v`` for ``"stacked_spectral"`` (shape of one input).
      adv_images: TRADES' ``x'`` (``(B, *S)``, treated as constants): adds
        ``trades_beta * trades_kl(f(x), f(x'))`` to the loss.

    Returns:
      ``(loss, {"loss", "ce", "penalty", "correct"})``, scalars.

    >>> W = jnp.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])  # d = 3, K = 2: J = W^T
    >>> apply_fn = lambda W, x: x.reshape(len(x), -1) @ W
    >>> loss, parts = loss_fn(W, apply_fn, jnp.zeros((2, 3)), jnp.array([0, 1]), 0.1, None, None)
    >>> float(parts["penalty"]), round(float(parts["ce"]), 4), round(float(loss), 4)  # 0.5 ||W||_F^2
    (45.5, 0.6931, 5.2431)
    """
    if skips_penalty(jr_lambda):
        logits = apply_fn(params, images)
        penalty = jnp.zeros((), logits.dtype)
    else:
        jr_apply, jr_inputs = regularizers.jr_view(apply_fn, images, input_std)
        if jr_mode not in PENALTIES:
            raise ValueError(f"loss_fn: unknown jr_mode {jr_mode!r}; use one of {tuple(PENALTIES)}")
        logits, penalty = PENALTIES[jr_mode](jr_apply, params, jr_inputs, key, jr_num_proj, jr_vec)
    ce = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))
    loss = ce + jr_lambda * penalty
    if adv_images is not None:
        loss = loss + trades_beta * trades_kl(logits, apply_fn(params, jax.lax.stop_gradient(adv_images)))
    correct = jnp.sum(jnp.argmax(logits, -1) == labels)
    return loss, {"loss": loss, "ce": ce, "penalty": penalty, "correct": correct}
