"""Per-input Jacobian kernels: ``J(x)``, ``||J(x)||_F^2`` (exact or projected), the JR penalty, ``sigma_max(J(x))``."""

from __future__ import annotations

import math
from typing import Any, Callable, Optional, Tuple

import chex
import jax
import jax.numpy as jnp

from jacuap.checks import check_jacobian_inputs, check_key, check_positive_int

ApplyFn = Callable[[Any, jax.Array], jax.Array]

__all__ = [
    "ApplyFn",
    "input_jacobian",
    "logits_and_input_jacobian",
    "logits_and_frobenius_sq",
    "frobenius_sq",
    "logits_and_jacobian_penalty",
    "jacobian_penalty",
    "spectral_norm",
]


def _per_example_sq_norm(a: jax.Array) -> jax.Array:
    """``||a_b||^2`` for each leading index ``b``: ``(B, ...) -> (B,)``."""
    return jnp.sum(jnp.square(a.reshape(a.shape[0], -1)), axis=1)


def _unit_rows(a: jax.Array, eps: float = 1e-12) -> jax.Array:
    """Each example of ``a`` (``(B, ...)``) scaled to unit l2 norm."""
    norm = jnp.sqrt(_per_example_sq_norm(a))
    return a / jnp.maximum(norm, eps).reshape((-1,) + (1,) * (a.ndim - 1))


def logits_and_input_jacobian(apply_fn: ApplyFn, params: Any, x: jax.Array) -> Tuple[jax.Array, jax.Array]:
    """Logits and exact per-example input Jacobians from ONE forward pass.

    Reverse mode when ``K < d``: one forward pass, then ``K`` batched VJPs
    with the one-hot cotangents ``e_k``; because examples are independent,
    the VJP of ``e_k`` broadcast over the batch returns row ``k`` of every
    example's Jacobian at once.  A Python loop of ``K`` VJPs is used rather
    than ``vmap`` over the cotangents or ``vmap(jacrev)``: on CPU it measured
    about 4x faster.  Forward mode (``d`` JVPs) when ``d <= K``.

    Args:
      apply_fn: ``(params, x) -> logits``, ``(B, *S) -> (B, K)``.
      params: model parameters (any pytree).
      x: inputs, shape ``(B, *S)``.

    Returns:
      ``(logits (B, K), jac (B, K, *S))`` with
      ``jac[b, k] = d logits[b, k] / d x[b]``.
    """
    check_jacobian_inputs(apply_fn, params, x)
    f = lambda inp: apply_fn(params, inp)
    batch, spatial = x.shape[0], x.shape[1:]
    d = math.prod(spatial)
    num_classes = jax.eval_shape(f, x).shape[-1]
    if num_classes < d:
        logits, vjp = jax.vjp(f, x)
        eye = jnp.eye(num_classes, dtype=logits.dtype)
        rows = [vjp(jnp.broadcast_to(eye[k], logits.shape))[0] for k in range(num_classes)]
        jac = jnp.stack(rows, axis=1)
    else:
        logits, jvp = jax.linearize(f, x)
        basis = jnp.eye(d, dtype=x.dtype).reshape((d, 1) + spatial)
        cols = jax.vmap(lambda t: jvp(jnp.broadcast_to(t, x.shape)))(basis)  # (d, B, K)
        jac = jnp.transpose(cols, (1, 2, 0)).reshape((batch, num_classes) + spatial)
    chex.assert_shape(logits, (batch, num_classes))
    chex.assert_shape(jac, (batch, num_classes) + spatial)
    return logits, jac


def input_jacobian(apply_fn: ApplyFn, params: Any, x: jax.Array) -> jax.Array:
    """Exact per-example input Jacobians ``J(x_b) = d f(x_b) / d x_b``, ``(B, K, *S)``.

    See :func:`logits_and_input_jacobian` (this drops the logits).

    >>> W = jnp.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])  # d = 3, K = 2
    >>> apply_fn = lambda W, x: x.reshape(len(x), -1) @ W
    >>> jac = input_jacobian(apply_fn, W, jnp.ones((1, 3)))  # J = W^T for a linear model
    >>> jac.shape, jac[0].tolist()
    ((1, 2, 3), [[1.0, 3.0, 5.0], [2.0, 4.0, 6.0]])
    """
    return logits_and_input_jacobian(apply_fn, params, x)[1]


def _sphere(key: jax.Array, shape: Tuple[int, ...], dtype) -> jax.Array:
    """Samples uniform on the unit sphere of the last axis."""
    u = jax.random.normal(key, shape, dtype)
    return u / jnp.linalg.norm(u, axis=-1, keepdims=True)


def logits_and_frobenius_sq(
    apply_fn: ApplyFn,
    params: Any,
    x: jax.Array,
    key: Optional[jax.Array] = None,
    num_proj: Optional[int] = None,
) -> Tuple[jax.Array, jax.Array]:
    """Logits and ``||J(x_b)||_F^2`` from ONE forward pass (training uses this).

    Exact (``num_proj is None``): ``sum_k ||e_k^T J||^2`` with ``K`` VJPs.
    Estimated (Hoffman, Roberts & Yaida 2019): with ``u_p`` uniform on the unit
    sphere of ``R^K``, ``E ||u^T J||^2 = ||J||_F^2 / K``, so

        ||J||_F^2 ~= K * mean_p ||u_p^T J||^2,

    unbiased, one VJP per projection (``u_p`` drawn independently per example).

    Args:
      apply_fn: ``(params, x) -> logits``.
      params: model parameters.
      x: ``(B, *S)``.
      key: PRNG key, required when ``num_proj`` is set.
      num_proj: number of random projections, or None for the exact value.

    Returns:
      ``(logits (B, K), frobenius_sq (B,))``.

    Raises:
      ValueError: ``num_proj`` is set and ``key`` is None, or ``num_proj < 1``; a bad input
        (:mod:`jacuap.checks`; ``x`` need not lie in ``[0, 1]`` here: training passes normalised inputs).
    """
    check_jacobian_inputs(apply_fn, params, x, unit_range=False)
    logits, vjp = jax.vjp(lambda inp: apply_fn(params, inp), x)
    batch, num_classes = logits.shape
    if num_proj is None:
        eye = jnp.eye(num_classes, dtype=logits.dtype)
        cotangents = [jnp.broadcast_to(eye[k], logits.shape) for k in range(num_classes)]
        scale = 1.0
    else:
        check_key(key, why="when num_proj is set (frobenius_sq's random projections)")
        check_positive_int(num_proj, "num_proj")
        keys = jax.random.split(key, num_proj)
        cotangents = [_sphere(k, logits.shape, logits.dtype) for k in keys]
        scale = num_classes / num_proj
    total = sum(_per_example_sq_norm(vjp(c)[0]) for c in cotangents)
    fro = scale * total
    chex.assert_shape(fro, (batch,))
    return logits, fro


def frobenius_sq(
    apply_fn: ApplyFn,
    params: Any,
    x: jax.Array,
    key: Optional[jax.Array] = None,
    num_proj: Optional[int] = None,
) -> jax.Array:
    """Per-example squared Frobenius norm ``||J(x_b)||_F^2``, shape ``(B,)``.

    Exact when ``num_proj is None``; otherwise the unbiased random-projection
    estimate ``K * mean_p ||u_p^T J||^2`` (see :func:`logits_and_frobenius_sq`;
    ``key`` is then required).

    >>> W = jnp.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])  # d = 3, K = 2
    >>> apply_fn = lambda W, x: x.reshape(len(x), -1) @ W
    >>> frobenius_sq(apply_fn, W, jnp.ones((2, 3))).tolist()  # ||W||_F^2 = 91
    [91.0, 91.0]
    """
    check_jacobian_inputs(apply_fn, params, x)
    return logits_and_frobenius_sq(apply_fn, params, x, key, num_proj)[1]


def logits_and_jacobian_penalty(
    apply_fn: ApplyFn,
    params: Any,
    x: jax.Array,
    key: Optional[jax.Array] = None,
    num_proj: Optional[int] = None,
) -> Tuple[jax.Array, jax.Array]:
    """Logits and the Jacobian penalty ``0.5 * mean_b ||J(x_b)||_F^2`` from ONE forward pass.

    Hoffman, Roberts & Yaida (2019)'s convention: the training loss is
    ``CE + lambda_JR * 0.5 * mean_b ||J(x_b)||_F^2``.  ``||J||_F^2`` is exact
    or estimated as in :func:`logits_and_frobenius_sq`.

    Returns:
      ``(logits (B, K), penalty ())``.
    """
    logits, fro = logits_and_frobenius_sq(apply_fn, params, x, key, num_proj)
    return logits, 0.5 * jnp.mean(fro)


def jacobian_penalty(
    apply_fn: ApplyFn,
    params: Any,
    x: jax.Array,
    key: Optional[jax.Array] = None,
    num_proj: Optional[int] = None,
) -> jax.Array:
    """The Jacobian-regularization penalty ``0.5 * mean_b ||J(x_b)||_F^2`` (a scalar).

    The second output of :func:`logits_and_jacobian_penalty` (Hoffman et
    al.'s convention, which training uses).  ``key`` is required when
    ``num_proj`` is set.

    >>> W = jnp.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])  # d = 3, K = 2
    >>> apply_fn = lambda W, x: x.reshape(len(x), -1) @ W
    >>> float(jacobian_penalty(apply_fn, W, jnp.ones((2, 3))))  # 0.5 * ||W||_F^2
    45.5
    """
    check_jacobian_inputs(apply_fn, params, x)
    return logits_and_jacobian_penalty(apply_fn, params, x, key, num_proj)[1]


def spectral_norm(
    apply_fn: ApplyFn,
    params: Any,
    x: jax.Array,
    key: Optional[jax.Array] = None,
    num_iters: int = 20,
    method: str = "power",
) -> jax.Array:
    """Per-example largest singular value ``sigma_max(J(x_b))``, shape ``(B,)``.

    ``method="power"``: matrix-free power iteration on ``v -> J^T (J v)``
    (one JVP and one VJP per iteration, all examples at once), returning
    ``||J v||`` for the final unit ``v``, a lower bound that converges to
    ``sigma_max``.  ``method="exact"``: the ``K`` rows of ``J`` by
    ``input_jacobian`` and the top eigenvalue of the ``K x K`` matrix
    ``J J^T`` (cheap when ``K`` is small).

    Args:
      apply_fn: ``(params, x) -> logits``.
      params: model parameters.
      x: ``(B, *S)``.
      key: PRNG key of the starting vectors; required by the power method.
      num_iters: power iterations.
      method: ``"power"`` or ``"exact"``.
    """
    check_jacobian_inputs(apply_fn, params, x)
    if method == "exact":
        jac = input_jacobian(apply_fn, params, x)
        jac = jac.reshape(jac.shape[:2] + (-1,))
        gram = jnp.einsum("bkd,bld->bkl", jac, jac)
        return jnp.sqrt(jnp.maximum(jnp.linalg.eigvalsh(gram)[:, -1], 0.0))
    if method != "power":
        raise ValueError(f"spectral_norm: unknown method {method!r}; use 'power' or 'exact'")
    check_key(key, why="by spectral_norm's power method (its starting vectors)")
    check_positive_int(num_iters, "num_iters")
    # One forward pass: linearize stores the residuals, its transpose is the VJP.
    _, jvp = jax.linearize(lambda inp: apply_fn(params, inp), x)
    vjp = jax.linear_transpose(jvp, x)

    def body(_, v):
        return _unit_rows(vjp(jvp(v))[0])

    v0 = _unit_rows(jax.random.normal(key, x.shape, x.dtype))
    v = jax.lax.fori_loop(0, num_iters, body, v0)
    return jnp.sqrt(_per_example_sq_norm(jvp(v)))
