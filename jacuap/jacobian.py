"""Input-Jacobian kernels: the one place where jacuap differentiates a model.

Every function here takes ``apply_fn(params, x) -> logits``, a pure function
mapping a batch ``x`` of shape ``(B, *S)`` (pixels in [0, 1]) to logits of
shape ``(B, K)``, in which each example's logits depend on that example only
(no batch statistics).  Training, attacks and metrics all call these kernels;
nothing else in jacuap computes a Jacobian.

Notation (SPEC §2).  ``f: R^d -> R^K`` with ``d = prod(S)``;
``J(x) = df/dx`` is ``K x d``.  For a set ``X = {x_1..x_N}`` the stacked
Jacobian is ``J_X = [J(x_1); ...; J(x_N)]`` (``NK x d``) and one shared
perturbation ``v`` moves the logits by, to first order,

    sum_i ||J(x_i) v||^2 = ||J_X v||^2 <= sigma_max(J_X)^2 ||v||_2^2
                         <= sum_i sigma_max(J_i)^2 ||v||^2
                         <= sum_i ||J_i||_F^2 ||v||^2.

Jacobian regularization shrinks the last term, and with it the bound on every
universal perturbation.

All functions are pure, jit- and vmap-friendly; ``K`` and ``S`` are static
(read from shapes), so the Python loops below unroll at trace time.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Optional, Tuple

import chex
import jax
import jax.numpy as jnp

ApplyFn = Callable[[Any, jax.Array], jax.Array]

__all__ = [
    "input_jacobian",
    "logits_and_input_jacobian",
    "logits_and_frobenius_sq",
    "frobenius_sq",
    "jacobian_penalty",
    "spectral_norm",
    "stacked_spectral_norm",
    "stacked_gram",
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
    about 4x faster (SPEC §2).  Forward mode (``d`` JVPs) when ``d <= K``.

    Args:
      apply_fn: ``(params, x) -> logits``, ``(B, *S) -> (B, K)``.
      params: model parameters (any pytree).
      x: inputs, shape ``(B, *S)``.

    Returns:
      ``(logits (B, K), jac (B, K, *S))`` with
      ``jac[b, k] = d logits[b, k] / d x[b]``.
    """
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
    """
    logits, vjp = jax.vjp(lambda inp: apply_fn(params, inp), x)
    batch, num_classes = logits.shape
    if num_proj is None:
        eye = jnp.eye(num_classes, dtype=logits.dtype)
        cotangents = [jnp.broadcast_to(eye[k], logits.shape) for k in range(num_classes)]
        scale = 1.0
    else:
        if key is None:
            raise ValueError("frobenius_sq: a PRNG key is required when num_proj is set")
        if num_proj < 1:
            raise ValueError(f"frobenius_sq: num_proj must be >= 1 or None, got {num_proj}")
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
    estimate ``K * mean_p ||u_p^T J||^2`` (see ``logits_and_frobenius_sq``).
    """
    return logits_and_frobenius_sq(apply_fn, params, x, key, num_proj)[1]


def jacobian_penalty(
    apply_fn: ApplyFn,
    params: Any,
    x: jax.Array,
    key: Optional[jax.Array] = None,
    num_proj: Optional[int] = None,
) -> jax.Array:
    """The JR penalty ``mean_b ||J(x_b)||_F^2`` (a scalar).

    jacuap's training loss is ``CE + lambda * mean_b ||J(x_b)||_F^2``, without
    Hoffman et al.'s factor 1/2: their ``lambda_JR`` equals our ``2 * lambda``.
    """
    return jnp.mean(frobenius_sq(apply_fn, params, x, key, num_proj))


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
      key: PRNG key for the starting vectors (power method).
      num_iters: power iterations.
      method: ``"power"`` or ``"exact"``.
    """
    if method == "exact":
        jac = input_jacobian(apply_fn, params, x)
        jac = jac.reshape(jac.shape[:2] + (-1,))
        gram = jnp.einsum("bkd,bld->bkl", jac, jac)
        return jnp.sqrt(jnp.maximum(jnp.linalg.eigvalsh(gram)[:, -1], 0.0))
    if method != "power":
        raise ValueError(f"spectral_norm: unknown method {method!r}; use 'power' or 'exact'")
    if key is None:
        key = jax.random.PRNGKey(0)
    # One forward pass: linearize stores the residuals, its transpose is the VJP.
    _, jvp = jax.linearize(lambda inp: apply_fn(params, inp), x)
    vjp = jax.linear_transpose(jvp, x)

    def body(_, v):
        return _unit_rows(vjp(jvp(v))[0])

    v0 = _unit_rows(jax.random.normal(key, x.shape, x.dtype))
    v = jax.lax.fori_loop(0, num_iters, body, v0)
    return jnp.sqrt(_per_example_sq_norm(jvp(v)))


def _chunks(x: jax.Array, batch_size: int) -> Tuple[jax.Array, jax.Array]:
    """``(N, *S)`` -> zero-padded ``(C, batch_size, *S)`` and a ``(C, batch_size)`` mask."""
    n = x.shape[0]
    num_chunks = -(-n // batch_size)
    pad = num_chunks * batch_size - n
    xp = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1))
    mask = (jnp.arange(num_chunks * batch_size) < n).astype(x.dtype)
    return (
        xp.reshape((num_chunks, batch_size) + x.shape[1:]),
        mask.reshape(num_chunks, batch_size),
    )


def _chunk_at(x: jax.Array, b: int, i) -> Tuple[jax.Array, jax.Array]:
    """Chunk ``i`` of ``x`` (size ``b``, no copy, no padding) and its ``(b,)`` mask.

    The last chunk starts at ``N - b`` and masks out the examples the previous
    chunk already covered.
    """
    n = x.shape[0]
    start = jnp.minimum(i * b, n - b)
    xc = jax.lax.dynamic_slice_in_dim(x, start, b, axis=0)
    return xc, (start + jnp.arange(b) >= i * b).astype(x.dtype)


def _scan_chunks(step, init, x: jax.Array, batch_size: int):
    """``lax.scan`` of ``step(carry, x_chunk, mask) -> carry`` over ``x`` in chunks.

    Unlike :func:`_chunks` nothing is copied or padded (see :func:`_chunk_at`):
    peak memory is that of one chunk, whatever ``N``.
    """
    n = x.shape[0]
    b = max(1, min(int(batch_size), n))

    def body(carry, i):
        return step(carry, *_chunk_at(x, b, i)), None

    carry, _ = jax.lax.scan(body, init, jnp.arange(-(-n // b)))
    return carry


def _concrete(*trees) -> bool:
    """True when no leaf is a tracer: the kernel was called outside ``jit``/``vmap``/``grad``."""
    return not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(trees))


# Set loops run from Python when the kernel is called eagerly: one compiled
# chunk step, dispatched ceil(N / batch_size) times.  Measured on CPU (XLA
# 0.10, jax 0.10.2), the same step inside a ``lax.scan``/``while`` body ran
# 2-4x slower: XLA keeps the transposed convolutions of the VJP in the
# ``01oi`` kernel layout there, which its CPU convolution runs slowly,
# while outside a loop it materialises the transposed kernel (``01io``).
# Under ``jit`` the ``lax.scan`` path is used (same results).


@functools.partial(jax.jit, static_argnums=(0, 4), donate_argnums=(1,))
def _gram_chunk_step(apply_fn, gram, params, x, b, i):
    xc, mc = _chunk_at(x, b, i)
    jac = input_jacobian(apply_fn, params, xc).reshape(b, -1, gram.shape[0])
    jac = (jac * mc[:, None, None]).reshape(-1, gram.shape[0])
    return gram + jac.T @ jac


def _gram_times_chunk(apply_fn, acc, v, params, xc, mc):
    """``acc + sum_i J_i^T (J_i v)`` over a chunk: one forward pass (linearize), JVP, transpose."""
    _, jvp = jax.linearize(lambda inp: apply_fn(params, inp), xc)
    jv = jvp(jnp.broadcast_to(v, xc.shape))
    (jtjv,) = jax.linear_transpose(jvp, xc)(jv * mc.reshape((-1,) + (1,) * (jv.ndim - 1)))
    return acc + jnp.sum(jtjv, axis=0)


@functools.partial(jax.jit, static_argnums=(0, 5), donate_argnums=(1,))
def _gram_times_chunk_step(apply_fn, acc, v, params, x, b, i):
    return _gram_times_chunk(apply_fn, acc, v, params, *_chunk_at(x, b, i))


def stacked_gram(
    apply_fn: ApplyFn, params: Any, x: jax.Array, batch_size: int = 256
) -> jax.Array:
    """``G = J_X^T J_X = sum_i J(x_i)^T J(x_i)``, a ``d x d`` matrix.

    Accumulated chunk by chunk (``K`` VJPs per chunk), so memory is
    ``O(d^2 + batch_size * K * d)`` whatever ``N``.  Use for small ``d``.
    """
    d = math.prod(x.shape[1:])
    if _concrete(params, x):
        x = jnp.asarray(x)
        b = max(1, min(int(batch_size), x.shape[0]))
        gram = jnp.zeros((d, d), x.dtype)
        for i in range(-(-x.shape[0] // b)):
            gram = _gram_chunk_step(apply_fn, gram, params, x, b, jnp.asarray(i, jnp.int32))
        return gram

    def step(gram, xc, mc):
        jac = input_jacobian(apply_fn, params, xc).reshape(xc.shape[0], -1, d)
        jac = (jac * mc[:, None, None]).reshape(-1, d)
        return gram + jac.T @ jac

    return _scan_chunks(step, jnp.zeros((d, d), x.dtype), x, batch_size)


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
) -> Tuple[jax.Array, jax.Array]:
    """Top singular value and right singular vector of the stacked Jacobian.

    ``sigma_max(J_X)^2 = lambda_max(sum_i J_i^T J_i)``; its right singular
    vector is the best first-order l2 universal perturbation (Khrulkov &
    Oseledets 2018).  ``method="power"``: matrix-free power iteration on
    ``v -> sum_i J_i^T (J_i v)`` (one JVP + one VJP per input per iteration),
    the set processed in chunks of ``batch_size`` so memory is
    ``O(batch_size)`` and ``N = 10,000`` is routine; ``sigma`` is the square
    root of the last Rayleigh quotient.  ``method="gram"``: accumulate the
    ``d x d`` matrix ``G`` once (``stacked_gram``) and take its top
    eigenpair exactly; ``method="auto"`` picks ``gram`` when ``d <= 4096``.

    Args:
      apply_fn: ``(params, x) -> logits``.
      params: model parameters.
      x: the set, ``(N, *S)``.
      key: PRNG key for the starting vector (power method).
      num_iters: power iterations.
      batch_size: chunk size.
      method: ``"power"``, ``"gram"`` or ``"auto"``.

    Returns:
      ``(sigma, v)``: a scalar and a unit vector of shape ``S``.
    """
    spatial = x.shape[1:]
    d = math.prod(spatial)
    if method == "auto":
        method = "gram" if d <= 4096 else "power"
    if method == "gram":
        evals, evecs = jnp.linalg.eigh(stacked_gram(apply_fn, params, x, batch_size))
        return jnp.sqrt(jnp.maximum(evals[-1], 0.0)), evecs[:, -1].reshape(spatial)
    if method != "power":
        raise ValueError(
            f"stacked_spectral_norm: unknown method {method!r}; use 'power', 'gram' or 'auto'"
        )
    if key is None:
        key = jax.random.PRNGKey(0)
    v0 = jax.random.normal(key, spatial, x.dtype)
    v0 = v0 / jnp.linalg.norm(v0)
    if _concrete(params, x, v0):
        x = jnp.asarray(x)
        b = max(1, min(int(batch_size), x.shape[0]))
        v, rayleigh = v0, jnp.zeros((), x.dtype)
        for _ in range(num_iters):
            w = jnp.zeros_like(v)
            for i in range(-(-x.shape[0] // b)):
                w = _gram_times_chunk_step(apply_fn, w, v, params, x, b, jnp.asarray(i, jnp.int32))
            v, rayleigh = _power_update(v, w)
        return jnp.sqrt(jnp.maximum(rayleigh, 0.0)), v

    def gram_times(v):
        step = lambda acc, xc, mc: _gram_times_chunk(apply_fn, acc, v, params, xc, mc)
        return _scan_chunks(step, jnp.zeros_like(v), x, batch_size)

    def body(_, carry):
        return _power_update(carry[0], gram_times(carry[0]))

    v, rayleigh = jax.lax.fori_loop(0, num_iters, body, (v0, jnp.zeros((), x.dtype)))
    return jnp.sqrt(jnp.maximum(rayleigh, 0.0)), v
