"""The Jacobian penalties beyond JR's Frobenius norm (``config.jr_mode``).

Each is computed on the same input as today's JR (``jr_space``: the
normalised input ``z`` or the pixels, see :func:`jr_view`), for a minibatch
``B`` of ``|B|`` inputs with per-example input Jacobians ``J_b`` (``K x d``):

* ``"frobenius"`` (the default, :mod:`jacuap.jacobian`):
  ``0.5 * mean_b ||J_b||_F^2``.
* ``"stacked_spectral"``: ``sigma_max(J_B)^2 / |B|``, ``J_B`` the stacked
  ``(|B| K x d)`` Jacobian of the batch, i.e. ``max_{||v||=1} mean_b
  ||J_b v||^2``: the mean squared first-order logit change that the batch's
  worst *shared* (universal) l2 direction causes.  Estimated matrix-free:
  :func:`spectral_power_iterations` runs a few power iterations on
  ``v -> J_B^T J_B v`` (one JVP and its transpose per iteration) from the
  vector the train state carries from the previous step (a warm start),
  then :func:`logits_and_stacked_spectral_penalty` takes
  ``||J_B v||^2 / |B|`` with ``v`` held constant (stop-gradient).  By the
  envelope (Danskin) theorem, at the top right singular vector ``v*``,
  ``d sigma_max^2 / d theta = d ||J_B(theta) v||^2 / d theta`` at ``v = v*``
  (``v*`` maximises the Rayleigh quotient, so its own variation contributes
  nothing), so differentiating through the last iterate only is the exact
  gradient once the iterate has converged, and costs one JVP's double
  backward instead of unrolling the iterations.
* ``"alignment"`` (:func:`logits_and_alignment_penalty`): the mean *squared*
  Frobenius cosine between the Jacobians of distinct pairs,
  ``mean_{i != j} c_ij^2`` with ``c_ij = <J_i, J_j>_F / (||J_i||_F ||J_j||_F)``
  (exact Jacobians, ``K`` one-hot VJPs).  Shared Jacobian directions are
  what a universal perturbation exploits.  The square rather than ``c_ij``
  itself: the mean cosine can be driven down by making pairs *anti*-aligned
  (``J_j ~ -J_i``), which share their input directions just as much
  (``sigma_max(J_B)`` is unchanged by ``J_b -> -J_b``); ``c_ij^2`` is
  sign-blind, non-negative and zero exactly when the Jacobians are pairwise
  orthogonal.  It is scale-free: it does not shrink the Jacobians, only
  decorrelates them.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Tuple

import jax
import jax.numpy as jnp

__all__ = ["JR_MODES", "jr_view", "init_spectral_vector", "spectral_power_iterations",
           "logits_and_stacked_spectral_penalty", "logits_and_alignment_penalty"]

#: The penalties ``config.jr_mode`` names.
JR_MODES = ("frobenius", "stacked_spectral", "alignment")


def jr_view(apply_fn: Callable, images: jax.Array,
            input_std: Optional[Tuple[float, ...]]) -> Tuple[Callable, jax.Array]:
    """``(jr_apply, jr_inputs)``: the function and point whose input Jacobian the penalties take.

    ``input_std`` None: ``apply_fn`` at the pixels.  Else the normalised
    input ``z = x / std`` (up to a constant offset that cancels) through
    ``z -> f(x + std * (z - x / std))``, whose Jacobian at ``z = x / std`` is
    ``J(x) diag(std)``.
    """
    if input_std is None:
        return apply_fn, images
    std = jnp.asarray(input_std, images.dtype)
    # Shift so that the kernel is evaluated at the same point x; the offset
    # cancels and only the chain-rule factor std remains.
    return (lambda p, z: apply_fn(p, images + std * (z - images / std))), images / std


def init_spectral_vector(key: jax.Array, image_shape: Tuple[int, ...], dtype=jnp.float32) -> jax.Array:
    """A random unit vector of shape ``image_shape``: the first power iteration's start.

    >>> v = init_spectral_vector(jax.random.PRNGKey(0), (2, 3))
    >>> v.shape, round(float(jnp.linalg.norm(v)), 5)
    ((2, 3), 1.0)
    """
    v = jax.random.normal(key, image_shape, dtype)
    return v / jnp.linalg.norm(v)


def spectral_power_iterations(apply_fn: Callable, params: Any, x: jax.Array, v: jax.Array,
                              num_iters: int) -> jax.Array:
    """``num_iters`` power iterations ``v <- J_B^T J_B v / ||J_B^T J_B v||`` from ``v`` (no gradient).

    ``J_B v`` is one JVP of the batch with the tangent ``v`` broadcast to every
    input, and ``J_B^T u = sum_b J_b^T u_b`` its transpose (a VJP) summed over
    the batch: one forward pass (``jax.linearize``) serves every iteration.
    A zero ``J_B^T J_B v`` keeps ``v``.  Returns a unit vector of ``v``'s
    shape and dtype, stop-gradient'ed.
    """
    params, x = jax.lax.stop_gradient(params), jax.lax.stop_gradient(x)
    _, jvp = jax.linearize(lambda inp: apply_fn(params, inp), x)
    transpose = jax.linear_transpose(jvp, x)

    def body(_, v):
        (w,) = transpose(jvp(jnp.broadcast_to(v.astype(x.dtype), x.shape)))
        w = jnp.sum(w, axis=0)
        n = jnp.linalg.norm(w)
        return jnp.where(n > 0, w / jnp.maximum(n, 1e-30), v.astype(x.dtype)).astype(v.dtype)

    return jax.lax.stop_gradient(jax.lax.fori_loop(0, num_iters, body, v))


def logits_and_stacked_spectral_penalty(apply_fn: Callable, params: Any, x: jax.Array,
                                        v: jax.Array) -> Tuple[jax.Array, jax.Array]:
    """Logits and ``||J_B v||^2 / |B| = mean_b ||J_b v||^2`` from ONE forward pass (a JVP).

    ``v`` (unit, shape of one input) is held constant: with ``v`` the top
    right singular vector of ``J_B`` this is ``sigma_max(J_B)^2 / |B|`` and,
    by the envelope theorem, its gradient with respect to the parameters is
    that of ``sigma_max(J_B)^2 / |B|`` (see the module's docstring).

    >>> W = jnp.array([[3.0, 0.0], [0.0, 1.0], [0.0, 0.0]])  # d = 3, K = 2: J_b = W^T
    >>> apply_fn = lambda W, x: x.reshape(len(x), -1) @ W
    >>> _, p = logits_and_stacked_spectral_penalty(apply_fn, W, jnp.ones((4, 3)), jnp.array([1.0, 0.0, 0.0]))
    >>> float(p)  # sigma_max(J_B)^2 / |B| = 4 * 9 / 4
    9.0
    """
    v = jax.lax.stop_gradient(v).astype(x.dtype)
    logits, jv = jax.jvp(lambda inp: apply_fn(params, inp), (x,), (jnp.broadcast_to(v, x.shape),))
    return logits, jnp.sum(jnp.square(jv)) / x.shape[0]


def _safe_inverse_norm(g: jax.Array) -> jax.Array:
    """``1 / ||g_b||`` per row of ``g`` ``(B, n)``, 0 (with a zero gradient) for a zero row."""
    sq = jnp.sum(jnp.square(g), axis=1)
    nonzero = sq > 0
    return jnp.where(nonzero, jax.lax.rsqrt(jnp.where(nonzero, sq, 1.0)), 0.0)


def logits_and_alignment_penalty(apply_fn: Callable, params: Any, x: jax.Array) -> Tuple[jax.Array, jax.Array]:
    """Logits and ``mean_{i != j} (<J_i, J_j>_F / (||J_i||_F ||J_j||_F))^2`` from ONE forward pass.

    Exact per-example Jacobians (``K`` one-hot VJPs, as
    :func:`jacuap.jacobian.logits_and_input_jacobian` takes them), flattened and
    normalised to unit Frobenius norm; the cosines are the off-diagonal
    entries of their ``|B| x |B|`` Gram matrix.  A zero Jacobian has cosine 0
    with every other; a batch of one has penalty 0.

    >>> _, p = logits_and_alignment_penalty(lambda W, x: (x * x) @ W, jnp.eye(2), jnp.array([[1.0, 0.0], [0.0, 1.0]]))
    >>> float(p)  # J_1 = diag(2, 0), J_2 = diag(0, 2): orthogonal
    0.0
    """
    # jacobian.logits_and_input_jacobian's K one-hot VJPs, without its [0, 1] input check
    # (the normalised input z is not in [0, 1]).
    logits, vjp = jax.vjp(lambda inp: apply_fn(params, inp), x)
    eye = jnp.eye(logits.shape[-1], dtype=logits.dtype)
    b = x.shape[0]
    g = jnp.concatenate([vjp(jnp.broadcast_to(eye[k], logits.shape))[0].reshape(b, -1)
                         for k in range(logits.shape[-1])], axis=1)  # (B, K d): J_b flattened
    n = g * _safe_inverse_norm(g)[:, None]
    cos = n @ n.T
    off = jnp.square(cos) * (1.0 - jnp.eye(b, dtype=cos.dtype))
    return logits, jnp.sum(off) / max(b * (b - 1), 1)

