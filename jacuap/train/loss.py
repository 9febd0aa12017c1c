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
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import optax

from jacuap import jacobian

__all__ = ["loss_fn"]


def loss_fn(
    params: Any,
    apply_fn: Callable,
    images: jax.Array,
    labels: jax.Array,
    jr_lambda: float,
    key: Optional[jax.Array],
    jr_num_proj: Optional[int],
    input_std: Optional[Tuple[float, ...]] = None,
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

    Returns:
      ``(loss, {"loss", "ce", "penalty", "correct"})``, scalars.

    >>> W = jnp.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])  # d = 3, K = 2: J = W^T
    >>> apply_fn = lambda W, x: x.reshape(len(x), -1) @ W
    >>> loss, parts = loss_fn(W, apply_fn, jnp.zeros((2, 3)), jnp.array([0, 1]), 0.1, None, None)
    >>> float(parts["penalty"]), round(float(parts["ce"]), 4), round(float(loss), 4)  # 0.5 ||W||_F^2
    (45.5, 0.6931, 5.2431)
    """
    if jr_lambda == 0:
        logits = apply_fn(params, images)
        penalty = jnp.zeros((), logits.dtype)
    else:
        if input_std is None:
            jr_apply, jr_inputs = apply_fn, images
        else:
            std = jnp.asarray(input_std, images.dtype)
            # Shift so that the kernel is evaluated at the same point x; the
            # offset cancels and only the chain-rule factor std remains.
            jr_apply = lambda p, z: apply_fn(p, images + std * (z - images / std))
            jr_inputs = images / std
        logits, penalty = jacobian.logits_and_jacobian_penalty(jr_apply, params, jr_inputs, key, jr_num_proj)
    ce = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))
    loss = ce + jr_lambda * penalty
    correct = jnp.sum(jnp.argmax(logits, -1) == labels)
    return loss, {"loss": loss, "ce": ce, "penalty": penalty, "correct": correct}
