"""Set kernels: the stacked Jacobian's Gram matrix and top singular pairs (power, Gram, LOBPCG).

For a set ``X = {x_1..x_N}``, ``J_X = [J(x_1); ...; J(x_N)]`` (``NK x d``)
and ``G = J_X^T J_X = sum_i J(x_i)^T J(x_i)`` (``d x d``).  Every routine
here needs only the products ``v -> G v`` (one forward pass, a JVP and its
transpose per input), reduced over chunks of the set with
:func:`jacuap.batching.reduce_chunks` (``loop="host"``: a Python loop over
one compiled chunk step, concrete arguments only, faster on CPU;
``loop="scan"``: ``lax.scan``, traceable), except the Gram path, which
accumulates ``G`` itself (small ``d`` only).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Optional, Tuple

import jax
import jax.numpy as jnp

from jacuap import backend
from jacuap.batching import LOOPS, reduce_chunks
from jacuap.checks import check_jacobian_inputs, check_key, check_positive_int
from jacuap.jacobian.kernels import ApplyFn, input_jacobian

__all__ = ["stacked_gram", "stacked_spectral_norm", "stacked_singular_pairs", "GRAM_LIMIT"]

#: ``method="auto"`` accumulates the ``d x d`` Gram matrix up to this ``d`` (64 MB in float32), LOBPCG above.
GRAM_LIMIT = 4096


def _gram_chunk(apply_fn: ApplyFn, gram: jax.Array, params: Any, xc: jax.Array, mc: jax.Array) -> jax.Array:
    """``gram + sum_b mc_b J(xc_b)^T J(xc_b)``: one chunk of :func:`stacked_gram` (``K`` VJPs)."""
    d = gram.shape[0]
    jac = input_jacobian(apply_fn, params, xc).reshape(xc.shape[0], -1, d)
    jac = (jac * mc[:, None, None]).reshape(-1, d)
    return gram + jac.T @ jac


def _gram_times_chunk(apply_fn: ApplyFn, acc: jax.Array, args: Tuple[jax.Array, Any], xc: jax.Array,
                      mc: jax.Array) -> jax.Array:
    """``acc + sum_b mc_b J(xc_b)^T (J(xc_b) v)`` for ``args = (v, params)``: one forward pass, a JVP, its transpose."""
    v, params = args
    _, jvp = jax.linearize(lambda inp: apply_fn(params, inp), xc)
    jv = jvp(jnp.broadcast_to(v, xc.shape))
    (jtjv,) = jax.linear_transpose(jvp, xc)(jv * mc.reshape((-1,) + (1,) * (jv.ndim - 1)))
    return acc + jnp.sum(jtjv, axis=0)


def _gram_times_block_chunk(apply_fn: ApplyFn, acc: jax.Array, args: Tuple[jax.Array, Any], xc: jax.Array,
                            mc: jax.Array) -> jax.Array:
    """``acc + sum_b mc_b J(xc_b)^T J(xc_b) V`` for a block ``args = (V (m, *S), params)``.

    :func:`_gram_times_chunk` mapped over the block's rows: the primal (``xc``,
    ``params``) is not batched, so the forward pass runs once and only the
    ``m`` tangents are.
    """
    block, params = args
    one = lambda v: _gram_times_chunk(apply_fn, jnp.zeros_like(v), (v, params), xc, mc)
    return acc + jax.vmap(one)(block)


def stacked_gram(
    apply_fn: ApplyFn, params: Any, x: jax.Array, batch_size: int = 256, *, loop: str = "scan"
) -> jax.Array:
    """``G = J_X^T J_X = sum_i J(x_i)^T J(x_i)``, a ``d x d`` matrix.

    Accumulated chunk by chunk (``K`` VJPs per chunk), so memory is
    ``O(d^2 + batch_size * K * d)`` whatever ``N``.  Use for small ``d``.

    Args:
      apply_fn, params: the model; x: the set ``(N, *S)``.
      batch_size: chunk size.
      loop: ``"scan"`` (traceable; the default under ``jit``) or ``"host"``
        (a Python loop over one compiled chunk step; concrete arguments only,
        faster on CPU, see :func:`jacuap.batching.reduce_chunks`).
    """
    check_jacobian_inputs(apply_fn, params, x)
    check_positive_int(batch_size, "batch_size")
    x = jnp.asarray(x)
    d = math.prod(x.shape[1:])
    return reduce_chunks(_gram_chunk, apply_fn, jnp.zeros((d, d), x.dtype), params, x, batch_size, loop=loop)


@jax.jit
def _power_update(v, w):
    """The next unit vector ``w / ||w||`` and the Rayleigh quotient ``<v, w>``."""
    return w / jnp.maximum(jnp.linalg.norm(w), 1e-30), jnp.vdot(v, w)


def stacked_spectral_norm(
    apply_fn: ApplyFn,
    params: Any,
    x: jax.Array,
    key: Optional[jax.Array] = None,
    num_iters: int = 50,
    batch_size: int = 256,
    method: str = "power",
    *,
    loop: str = "scan",
) -> Tuple[jax.Array, jax.Array]:
    """Top singular value and right singular vector of the stacked Jacobian.

    ``sigma_max(J_X)^2 = lambda_max(sum_i J_i^T J_i)``; its right singular
    vector is the best first-order l2 universal perturbation (Khrulkov &
    Oseledets 2018).  ``method="power"``: matrix-free power iteration on
    ``v -> sum_i J_i^T (J_i v)`` (one JVP + one VJP per input per iteration),
    the set processed in chunks of ``batch_size`` so memory is
    ``O(batch_size)`` and ``N = 10,000`` is routine; ``sigma`` is the square
    root of the last Rayleigh quotient.  ``method="gram"``: accumulate the
    ``d x d`` matrix ``G`` once (:func:`stacked_gram`) and take its top
    eigenpair exactly.  ``method="lobpcg"``: :func:`stacked_singular_pairs`
    with ``k = 1`` (matrix-free, to a stated residual; for large ``d``, where
    ``G`` does not fit and power iteration converges slowly).
    ``method="auto"``: ``gram`` when ``d <= GRAM_LIMIT`` (4096), else ``lobpcg``.

    Args:
      apply_fn: ``(params, x) -> logits``.
      params: model parameters.
      x: the set, ``(N, *S)``.
      key: PRNG key of the starting vector; required unless the Gram path
        runs (``"gram"``, or ``"auto"`` with ``d <= 4096``).
      num_iters: power iterations, or LOBPCG's maximum iterations.
      batch_size: chunk size.
      method: ``"power"``, ``"gram"``, ``"lobpcg"`` or ``"auto"``.
      loop: ``"scan"`` (traceable: ``lax.scan`` over chunks inside
        ``lax.fori_loop``) or ``"host"`` (Python loops over one compiled
        chunk step; concrete arguments only, 2-4x faster on CPU).  Both give
        the same result up to float rounding.

    Returns:
      ``(sigma, v)``: a scalar and a unit vector of shape ``S``.

    >>> W = jnp.array([[3.0, 0.0], [0.0, 1.0], [0.0, 0.0]])  # d = 3, K = 2
    >>> apply_fn = lambda W, x: x.reshape(len(x), -1) @ W
    >>> x = jnp.ones((4, 3))
    >>> sigma, v = stacked_spectral_norm(apply_fn, W, x, method="gram")
    >>> round(float(sigma), 4), [round(abs(float(t)), 4) for t in v]
    (6.0, [1.0, 0.0, 0.0])
    """
    if loop not in LOOPS:
        raise ValueError(f"stacked_spectral_norm: loop must be one of {LOOPS}, got {loop!r}")
    check_jacobian_inputs(apply_fn, params, x)
    check_positive_int(num_iters, "num_iters")
    check_positive_int(batch_size, "batch_size")
    x = jnp.asarray(x)
    spatial = x.shape[1:]
    d = math.prod(spatial)
    if method == "auto":
        method = "gram" if d <= GRAM_LIMIT else "lobpcg"
    if method == "gram":
        evals, evecs = jnp.linalg.eigh(stacked_gram(apply_fn, params, x, batch_size, loop=loop))
        return jnp.sqrt(jnp.maximum(evals[-1], 0.0)), evecs[:, -1].reshape(spatial)
    if method == "lobpcg":
        sigmas, vectors, _ = stacked_singular_pairs(apply_fn, params, x, key, 1, max_iters=num_iters,
                                                    batch_size=batch_size)
        return sigmas[0], vectors[0]
    if method != "power":
        raise ValueError(
            f"stacked_spectral_norm: unknown method {method!r}; use 'power', 'gram', 'lobpcg' or 'auto'"
        )
    check_key(key, why="by stacked_spectral_norm's power method")
    v0 = jax.random.normal(key, spatial, x.dtype)
    v0 = v0 / jnp.linalg.norm(v0)
    rayleigh0 = jnp.zeros((), x.dtype)

    def gram_times(v, how):
        return reduce_chunks(_gram_times_chunk, apply_fn, jnp.zeros_like(v), (v, params), x, batch_size, loop=how)

    if loop == "host":
        v, rayleigh = v0, rayleigh0
        for _ in range(num_iters):
            v, rayleigh = backend.pace(_power_update(v, gram_times(v, "host")))
    else:
        body = lambda _, carry: _power_update(carry[0], gram_times(carry[0], loop))
        v, rayleigh = jax.lax.fori_loop(0, num_iters, body, (v0, rayleigh0))
    return jnp.sqrt(jnp.maximum(rayleigh, 0.0)), v


def stacked_singular_pairs(
    apply_fn: ApplyFn,
    params: Any,
    x: jax.Array,
    key: Optional[jax.Array],
    k: int = 1,
    *,
    rtol: float = 1e-3,
    max_iters: int = 100,
    batch_size: int = 256,
) -> Tuple[jax.Array, jax.Array, jax.Array]:
    """The top ``k`` singular values and right singular vectors of ``J_X``, by LOBPCG, matrix-free.

    The top eigenpairs of ``G = J_X^T J_X`` by
    ``jax.experimental.sparse.linalg.lobpcg_standard``, which needs only the
    block products ``V -> G V`` (one linearization and ``m`` JVP/transpose
    pairs per chunk of the set, ``lax.scan`` over chunks: memory
    ``O(batch_size * m * d)`` whatever ``N``).  It stops when every pair's
    residual ``||G v - lambda v||_2`` is below about ``rtol * lambda``
    (LOBPCG's ``tol = rtol / (20 d)``: its test is
    ``r < tol * 10 d (lambda + ||G v||)``), or after ``max_iters``.  Then
    ``sigma = sqrt(lambda)``; a residual ``r`` bounds the eigenvalue's error
    by ``r^2 / gap`` (the gap to the next eigenvalue) and the vector's angle
    by ``r / gap``.

    Args:
      apply_fn, params: the model; x: the set ``(N, *S)``, ``d = prod(S)``.
      key: PRNG key of the ``(d, k)`` random start (required).
      k: pairs wanted; LOBPCG needs ``5 k < d``.
      rtol: the relative residual to reach (above).
      max_iters: LOBPCG's iteration cap.
      batch_size: chunk size.

    Returns:
      ``(sigmas, vectors, residuals)``: ``(k,)`` descending, ``(k, *S)``
      unit vectors, and the ``(k,)`` relative residuals
      ``||G v - lambda v|| / lambda`` reached (one more block product).

    >>> W = jnp.diag(jnp.array([3.0, 2.0, 1.0, 0.5, 0.2, 0.1, 0.0]))  # d = 7, K = 7
    >>> apply_fn = lambda W, x: x.reshape(len(x), -1) @ W
    >>> sigmas, vectors, residuals = stacked_singular_pairs(apply_fn, W, jnp.ones((4, 7)), jax.random.PRNGKey(0))
    >>> round(float(sigmas[0]), 3), vectors.shape, bool(residuals[0] < 1e-3)
    (6.0, (1, 7), True)
    """
    check_jacobian_inputs(apply_fn, params, x)
    check_key(key, why="by stacked_singular_pairs (LOBPCG's random start)")
    for value, name in ((k, "k"), (max_iters, "max_iters"), (batch_size, "batch_size")):
        check_positive_int(value, name)
    x = jnp.asarray(x)
    spatial = x.shape[1:]
    d = math.prod(spatial)
    if 5 * k >= d:
        raise ValueError(f"stacked_singular_pairs: LOBPCG needs 5 k < d, got k={k}, d={d}; "
                         f"use stacked_spectral_norm(method='gram') for so small an input")
    if not (isinstance(rtol, (int, float)) and 0 < rtol < 1):
        raise ValueError(f"stacked_singular_pairs: rtol must be in (0, 1), got {rtol!r}")

    return _lobpcg_pairs(apply_fn, params, x, key, jnp.asarray(rtol / (20 * d), x.dtype), k=int(k),
                         max_iters=int(max_iters), batch_size=int(batch_size))


# One compiled program per model, shapes and settings: lobpcg_standard is jitted with its
# operator static, and a fresh closure each call would recompile the whole solver every time.
@functools.partial(jax.jit, static_argnames=("apply_fn", "k", "max_iters", "batch_size"))
def _lobpcg_pairs(apply_fn, params, x, key, tol, *, k, max_iters, batch_size):
    from jax.experimental.sparse.linalg import lobpcg_standard  # experimental: loaded when used

    spatial = x.shape[1:]
    d = math.prod(spatial)

    def gram_times(columns):  # (d, m) -> (d, m)
        block = columns.T.reshape((columns.shape[1],) + spatial)
        out = reduce_chunks(_gram_times_block_chunk, apply_fn, jnp.zeros_like(block), (block, params), x,
                            batch_size, loop="scan")
        return out.reshape(columns.shape[1], d).T

    start = jax.random.normal(key, (d, k), x.dtype)
    theta, vectors, _ = lobpcg_standard(gram_times, start, m=max_iters, tol=tol)
    lam = jnp.maximum(theta, 0.0)
    residuals = jnp.linalg.norm(gram_times(vectors) - vectors * theta, axis=0) / jnp.maximum(lam, 1e-30)
    return jnp.sqrt(lam), vectors.T.reshape((k,) + spatial), residuals
