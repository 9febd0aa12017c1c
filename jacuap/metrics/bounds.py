"""Jacobian bounds on every universal perturbation, measured on a set.

``J_i = J(x_i)`` is the ``K x d`` input Jacobian of ``f = apply_fn(params, .)``
at ``x_i`` and ``J_X = [J_1; ...; J_N]`` the stacked Jacobian.  To first
order a perturbation ``v`` moves the logits by

    sum_i ||J_i v||^2 = ||J_X v||^2 <= sigma_max(J_X)^2 ||v||_2^2
                      <= sum_i sigma_max(J_i)^2 ||v||_2^2
                      <= sum_i ||J_i||_F^2 ||v||_2^2,

measured here by :func:`stacked_sigma_max`, :func:`per_example_spectral_norms`
and :func:`mean_frobenius_sq`; :func:`universality_ratio` is the share of the
per-input worst case that one perturbation can reach.  Per-example values are
computed on the host in fixed-size batches (:func:`jacuap.batching.map_batches`);
set-level reductions call the kernels of :mod:`jacuap.jacobian` eagerly with
``loop="host"``.  Scalars are Python floats.
"""

from __future__ import annotations

import functools
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jacuap import jacobian, parallel
from jacuap.batching import eager_loop, effective_batch_size, map_batches
from jacuap.checks import check_budget, check_jacobian_inputs, check_number, check_positive_int
from jacuap.jacobian import ApplyFn

__all__ = [
    "mean_frobenius_sq",
    "per_example_spectral_norms",
    "input_jacobians",
    "stacked_sigma_max",
    "first_order_uap_bound",
    "universality_ratio",
]


@functools.partial(jax.jit, static_argnames="apply_fn")
def _frobenius_sq_batch(apply_fn: ApplyFn, params: Any, xb: jax.Array) -> jax.Array:
    return jacobian.frobenius_sq(apply_fn, params, xb)


@functools.partial(jax.jit, static_argnames="apply_fn")
def _spectral_norm_batch(apply_fn: ApplyFn, params: Any, xb: jax.Array) -> jax.Array:
    return jacobian.spectral_norm(apply_fn, params, xb, method="exact")


def _checked(apply_fn: ApplyFn, params: Any, x: Any, batch_size: int) -> None:
    """Images, model and batch size (:mod:`jacuap.checks`)."""
    check_jacobian_inputs(apply_fn, params, x)
    check_positive_int(batch_size, "batch_size")


@functools.partial(jax.jit, static_argnames="apply_fn")
def _input_jacobian_batch(apply_fn: ApplyFn, params: Any, xb: jax.Array) -> jax.Array:
    return jacobian.input_jacobian(apply_fn, params, xb)


def mean_frobenius_sq(apply_fn: ApplyFn, params: Any, x: Any, batch_size: int = 256) -> float:
    """Exact ``mean_i ||J(x_i)||_F^2`` over the set (``K`` VJPs per batch).

    >>> W = jnp.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])  # d = 3, K = 2: J = W^T
    >>> mean_frobenius_sq(lambda W, x: x @ W, W, jnp.ones((5, 3)))
    91.0
    """
    _checked(apply_fn, params, x, batch_size)
    fro = map_batches(lambda xb: _frobenius_sq_batch(apply_fn, params, xb), x, batch_size,
                      parallel.batch_multiple(apply_fn))
    return float(np.mean(fro))


def per_example_spectral_norms(apply_fn: ApplyFn, params: Any, x: Any, batch_size: int = 256) -> np.ndarray:
    """Exact ``sigma_max(J(x_i))`` for each input, shape ``(N,)`` (top eigenvalue of ``J J^T``).

    >>> W = jnp.array([[3.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    >>> per_example_spectral_norms(lambda W, x: x @ W, W, jnp.ones((2, 3))).round(4).tolist()
    [3.0, 3.0]
    """
    _checked(apply_fn, params, x, batch_size)
    return map_batches(lambda xb: _spectral_norm_batch(apply_fn, params, xb), x, batch_size,
                       parallel.batch_multiple(apply_fn))


def input_jacobians(apply_fn: ApplyFn, params: Any, x: Any, batch_size: int = 256) -> jax.Array:
    """Exact per-example Jacobians ``(N, K, *S)`` by :func:`jacuap.jacobian.input_jacobian`, in batches.

    >>> W = jnp.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    >>> input_jacobians(lambda W, x: x @ W, W, jnp.ones((4, 3))).shape
    (4, 2, 3)
    """
    _checked(apply_fn, params, x, batch_size)
    x = jnp.asarray(x)
    jac = map_batches(lambda xb: _input_jacobian_batch(apply_fn, params, xb), x, batch_size,
                      parallel.batch_multiple(apply_fn))
    return jnp.asarray(jac)


def stacked_sigma_max(
    apply_fn: ApplyFn,
    params: Any,
    x: Any,
    key: Optional[jax.Array] = None,
    num_iters: int = 50,
    batch_size: int = 256,
    method: str = "auto",
) -> float:
    """``sigma_max(J_X)`` of the stacked Jacobian, a float.

    :func:`jacuap.jacobian.stacked_spectral_norm` (which also returns the
    singular vector) called eagerly with ``loop="host"``.  ``method="auto"``:
    exact from the ``d x d`` Gram matrix when ``d <= 4096``, otherwise power
    iteration (a lower bound converging to ``sigma_max``), which needs ``key``.
    ``batch_size`` is rounded up to the device count of a sharded model.

    >>> W = jnp.array([[3.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    >>> round(stacked_sigma_max(lambda W, x: x @ W, W, jnp.ones((4, 3))), 4)  # sqrt(4 * 3^2)
    6.0
    """
    _checked(apply_fn, params, x, batch_size)
    x = jnp.asarray(x)
    sigma, _ = jacobian.stacked_spectral_norm(
        apply_fn, params, x, key, num_iters=num_iters, method=method,
        batch_size=effective_batch_size(batch_size, x.shape[0], parallel.batch_multiple(apply_fn)),
        loop=eager_loop(),
    )
    return float(sigma)


def first_order_uap_bound(sigma_stacked: Any, eps: Any, norm: str, input_dim: int) -> Any:
    """Bound on the first-order effect ``sum_i ||J_i v||^2`` of any UAP in the budget.

    ``sum_i ||J_i v||^2 = ||J_X v||^2 <= sigma_max(J_X)^2 r^2`` with ``r`` the
    largest l2 norm in the ball: ``r = eps`` (l2) or ``r = eps sqrt(d)``
    (l_inf, ``||v||_2 <= sqrt(d) ||v||_inf``).

    Args:
      sigma_stacked: ``sigma_max(J_X)`` (float or array).
      eps: budget radius; norm: ``"linf"`` or ``"l2"``.
      input_dim: ``d = prod(S)``.

    Returns:
      ``sigma^2 r^2``, of the type of the inputs.

    >>> first_order_uap_bound(2.0, 0.5, "l2", 64), first_order_uap_bound(2.0, 0.5, "linf", 64)
    (1.0, 64.0)
    """
    check_number(sigma_stacked, "sigma_stacked", minimum=0.0)
    check_budget(eps, norm)
    check_positive_int(input_dim, "input_dim")
    if norm == "l2":
        radius_sq = eps * eps
    elif norm == "linf":
        radius_sq = eps * eps * input_dim
    else:
        raise ValueError(f"first_order_uap_bound: unknown norm {norm!r}; use 'linf' or 'l2'")
    return sigma_stacked * sigma_stacked * radius_sq


def universality_ratio(
    apply_fn: ApplyFn,
    params: Any,
    x: Any,
    key: Optional[jax.Array] = None,
    batch_size: int = 256,
    num_iters: int = 50,
    method: str = "auto",
) -> float:
    """``sigma_max(J_X)^2 / sum_i sigma_max(J_i)^2`` in ``[1/N, 1]``.

    The share of the per-input worst case that ONE perturbation can reach:
    1 when all inputs share their worst direction, ``1/N`` when the worst
    directions are mutually orthogonal with equal strengths.
    ``sigma_max(J_X)`` from :func:`stacked_sigma_max` (``method``; the power
    method needs ``key``), each ``sigma_max(J_i)`` exact.

    >>> W = jnp.array([[3.0, 0.0], [0.0, 1.0], [0.0, 0.0]])  # a linear model: one Jacobian for all
    >>> round(universality_ratio(lambda W, x: x @ W, W, jnp.ones((4, 3))), 4)
    1.0
    """
    sigma = stacked_sigma_max(apply_fn, params, x, key, num_iters, batch_size, method)
    sigmas = per_example_spectral_norms(apply_fn, params, x, batch_size)
    return _ratio(sigma**2, float(np.sum(np.square(sigmas, dtype=np.float64))))


def _ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator`` as a float, NaN when the denominator is not positive (vanishing Jacobians)."""
    return float(numerator / denominator) if denominator > 0 else float("nan")
