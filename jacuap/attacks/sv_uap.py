"""The singular-vector UAP (Khrulkov & Oseledets 2018): the best first-order universal perturbation."""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jacuap import jacobian, metrics, parallel
from jacuap.attacks.balls import check_norm, scale_to_budget
from jacuap.attacks.result import UAPResult
from jacuap.attacks.registry import AttackSpec, Crafting, register
from jacuap.batching import eager_loop, effective_batch_size, round_up
from jacuap.checks import check_budget, check_key, check_labels, check_model_inputs, check_perturbation, check_positive_int
from jacuap.jacobian import ApplyFn

__all__ = ["singular_vector_uap"]


def singular_vector_uap(
    apply_fn: ApplyFn,
    params: Any,
    x: jax.Array,
    y: jax.Array,
    *,
    eps: float,
    norm: str = "linf",
    key: Optional[jax.Array] = None,
    num_iters: int = 50,
    batch_size: int = 256,
    method: str = "auto",
    direction: Optional[jax.Array] = None,
) -> UAPResult:
    """The best first-order UAP: the top right singular vector of the stacked Jacobian ``J_X``.

    With ``J_X`` the ``(N K) x d`` stack of the per-example input Jacobians
    ``J(x_i)`` (``d = prod(S)``), the first-order change of the logits under a
    shared perturbation is ``J(x_i) u``, and

        u = argmax_{||u||_2 = 1} ||J_X u||^2 = argmax sum_i ||J(x_i) u||^2,

    the top eigenvector of ``G = sum_i J(x_i)^T J(x_i)``, from
    :func:`jacuap.jacobian.stacked_spectral_norm`.  It is put on the budget:
    ``v = eps * u / ||u||_2`` (l2) or ``v = eps * sign(u)`` (l_inf, the vertex
    best aligned with ``u``).  The first-order objective cannot tell ``v``
    from ``-v``; the sign with the larger evasion rate on ``(x, y)`` is kept
    (ties go to ``+``).

    Args:
      apply_fn, params: the model, ``(B, *S) -> (B, K)`` logits.
      x: crafting set ``(N, *S)``; y: its labels ``(N,)``.
      eps: budget radius; norm: ``"linf"`` or ``"l2"``.
      key: PRNG key of the power iteration's start: required with
        ``method="power"`` (and when ``"auto"`` picks the power method),
        unused with ``direction`` or the exact Gram matrix.
      num_iters, batch_size, method: passed to ``stacked_spectral_norm``
        (``"auto"``: exact ``d x d`` Gram matrix when ``d <= 4096``).
      direction: the singular vector ``u`` (shape ``S``) when already known,
        e.g. from an earlier call on the same set for another ``eps``; it
        depends on the model and the set only, never on the budget.

    Returns:
      ``UAPResult(v, history)``: ``v`` of shape ``S`` on the surface of the
      ``eps``-ball and ``history = [UER(v), UER(-v)]``, the evasion rates on
      ``(x, y)`` of ``v`` and of its opposite (``history[0] >= history[1]``).

    Raises:
      ValueError: ``key`` is None while the power method is needed, or
        ``norm`` is unknown.

    >>> import jax.numpy as jnp
    >>> apply_fn = lambda w, x: x.reshape(len(x), -1) @ w
    >>> w = jnp.array([[2.0, 0.0], [0.0, 0.5]])  # pixel 0 moves the logits most
    >>> x, y = jnp.array([[0.2, 0.6], [0.5, 0.9]]), jnp.array([0, 0])
    >>> v, history = singular_vector_uap(apply_fn, w, x, y, eps=0.5, norm="l2")
    >>> float(v[0]), history.tolist()  # -v keeps class 0: v is the sign that evades
    (-0.5, [1.0, 0.0])
    """
    check_norm(norm)
    if direction is None and (key is not None or method == "power"):
        check_key(key, why="by singular_vector_uap with method='power' (the power iteration's start)")
    check_budget(eps, norm)
    check_labels(y, np.shape(x)[0], check_model_inputs(apply_fn, params, x))
    check_positive_int(num_iters, "num_iters")
    check_positive_int(batch_size, "batch_size")
    if direction is not None:
        check_perturbation(direction, np.shape(x)[1:], "direction")
    x = jnp.asarray(x)
    u = direction
    if u is None:
        # Eager: the backend's loop (XLA:CPU runs the chunk VJPs 2-4x faster outside a loop body).
        _, u = jacobian.stacked_spectral_norm(
            apply_fn, params, x, key,
            num_iters=num_iters, batch_size=effective_batch_size(batch_size, x.shape[0]), method=method,
            loop=eager_loop(),
        )
    v = scale_to_budget(u, norm, eps).astype(x.dtype)
    plus = metrics.universal_evasion_rate(apply_fn, params, x, y, v, batch_size=batch_size)
    minus = metrics.universal_evasion_rate(apply_fn, params, x, y, -v, batch_size=batch_size)
    if plus >= minus:
        return UAPResult(v, np.asarray([plus, minus]))
    return UAPResult(-v, np.asarray([minus, plus]))


def _craft(c: Crafting) -> UAPResult:
    # The singular vector depends on the model and the set, not on eps: computed once per crafting set.
    if "sv_direction" not in c.cache:
        batch = round_up(min(256, len(c.x)), parallel.batch_multiple(c.apply_fn))
        _, c.cache["sv_direction"] = jacobian.stacked_spectral_norm(
            c.apply_fn, c.params, jnp.asarray(c.x), c.key, batch_size=batch, method="auto", loop=eager_loop())
    return singular_vector_uap(c.apply_fn, c.params, c.x, c.y, eps=c.eps, norm=c.norm,
                               direction=c.cache["sv_direction"], **c.settings)


register(AttackSpec(
    "sv_uap", singular_vector_uap, craft=_craft,
    gradient_evaluations=lambda s, n, k: 2 * 50 * n,
    summary="eps times the top right singular vector of the stacked Jacobian J_X (Khrulkov & Oseledets, "
            "CVPR 2018), the sign with the larger crafting-set UER"))
