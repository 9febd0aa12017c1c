"""Batching: one place for chunk arithmetic, padding and loops over chunks.

Every set-level computation in jacuap (Gram matrices, power iterations,
metrics over a test set, attack minibatches, evaluation) cuts a set of ``N``
examples into chunks of ``B`` and combines per-chunk results.  This module
holds the only definitions of that:

* :func:`ceil_div`, :func:`round_up`, :func:`effective_batch_size`: the
  arithmetic (``B = min(batch_size, N)``, rounded up to a device multiple).
* :func:`chunk_at`: chunk ``i`` without copying or padding the set, with a
  ``(B,)`` mask; the last chunk overlaps the previous one and masks the
  overlap, so one compiled shape serves every chunk.
* :func:`index_batches`: a permutation of ``N`` indices as ``(C, B)``
  index batches and masks (attacks gather ``x[idx]`` inside their scan).
* :func:`reduce_chunks`: ``carry <- fn(static, carry, args, x_chunk, mask)``
  over all chunks, either inside ``lax.scan`` (``loop="scan"``: traceable,
  works under ``jit``) or from Python over one compiled chunk step
  (``loop="host"``: concrete arguments only).  Both give the same result;
  the host form exists because XLA:CPU ran some convolution VJPs 2-4x
  slower inside loop bodies than outside them.  Callers choose explicitly;
  eager callers (metrics, the singular-vector UAP, attack.py) take
  :func:`eager_loop`, the backend-aware choice.
* :func:`map_batches`: a per-example function over a set on the host, the
  last batch zero-padded (one compiled shape) and its padding dropped.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from jacuap import backend
from jacuap.backend import LOOP_ENV, LOOPS  # noqa: F401  (batching.LOOPS, batching.LOOP_ENV)

__all__ = [
    "LOOPS",
    "eager_loop",
    "ceil_div",
    "round_up",
    "effective_batch_size",
    "chunk_at",
    "index_batches",
    "reduce_chunks",
    "map_batches",
    "pad_rows",
    "is_concrete",
]



def ceil_div(n: int, d: int) -> int:
    """``ceil(n / d)`` for non-negative ``n`` and positive ``d``.

    >>> ceil_div(10, 4), ceil_div(8, 4), ceil_div(0, 3)
    (3, 2, 0)
    """
    return -(-int(n) // int(d))


def round_up(n: int, multiple: int) -> int:
    """``n`` rounded up to a multiple of ``multiple``.

    >>> round_up(10, 8)
    16
    """
    return ceil_div(n, multiple) * int(multiple)


def effective_batch_size(batch_size: int, n: int, multiple: int = 1) -> int:
    """The batch size used on a set of ``n``: ``min(batch_size, n)``, at least 1, rounded up to ``multiple``.

    ``multiple`` is the device count of a batch-sharded model (so batches
    split evenly over the devices).

    >>> effective_batch_size(256, 100), effective_batch_size(256, 1000), effective_batch_size(5, 100, multiple=4)
    (100, 256, 8)
    """
    return round_up(max(1, min(int(batch_size), int(n))), multiple)


def is_concrete(*trees: Any) -> bool:
    """True when no leaf of ``trees`` is a JAX tracer (called outside ``jit``/``vmap``/``grad``)."""
    return not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(trees))


def chunk_at(x: jax.Array, b: int, i: Any) -> Tuple[jax.Array, jax.Array]:
    """Chunk ``i`` of ``x`` (``b`` rows, no copy, no padding) and its ``(b,)`` mask in ``x.dtype``.

    The last chunk starts at ``N - b`` and masks out the rows the previous
    chunk already covered, so every row is counted exactly once.  Requires
    ``1 <= b <= N``.
    """
    n = x.shape[0]
    start = jnp.minimum(i * b, n - b)
    xc = jax.lax.dynamic_slice_in_dim(x, start, b, axis=0)
    return xc, (start + jnp.arange(b) >= i * b).astype(x.dtype)


def index_batches(order: jax.Array, batch_size: int, dtype: Any) -> Tuple[jax.Array, jax.Array]:
    """``order`` (``(N,)`` indices) as zero-padded ``(C, B)`` index batches and a ``(C, B)`` mask.

    ``C = ceil(N / B)``; padding indices point at example 0 and carry mask 0,
    so every example is used once and padding contributes nothing.

    >>> idx, mask = index_batches(jnp.arange(5), 2, jnp.float32)
    >>> idx.tolist(), mask.tolist()
    ([[0, 1], [2, 3], [4, 0]], [[1.0, 1.0], [1.0, 1.0], [1.0, 0.0]])
    """
    n = order.shape[0]
    num = ceil_div(n, batch_size)
    idx = jnp.pad(order.astype(jnp.int32), (0, num * batch_size - n))
    mask = (jnp.arange(num * batch_size) < n).astype(dtype)
    return idx.reshape(num, batch_size), mask.reshape(num, batch_size)


@functools.partial(jax.jit, static_argnums=(0, 1, 5), donate_argnums=(2,))
def _host_chunk_step(fn, static, carry, args, x, b, i):
    return fn(static, carry, args, *chunk_at(x, b, i))


def eager_loop() -> str:
    """The chunk loop for an eager (concrete) call on this backend: :func:`jacuap.backend.chunk_loop`.

    ``"host"`` on CPU, ``"scan"`` elsewhere, ``JACUAP_LOOP=host|scan`` to override (measurements there).

    >>> eager_loop() in LOOPS
    True
    """
    return backend.chunk_loop()


def reduce_chunks(
    fn: Callable[..., Any],
    static: Any,
    carry: Any,
    args: Any,
    x: jax.Array,
    batch_size: int,
    *,
    loop: str = "scan",
) -> Any:
    """Folds ``carry <- fn(static, carry, args, x_chunk, mask)`` over the chunks of ``x``.

    ``fn`` and ``static`` are hashable (a module-level function and, e.g.,
    an ``apply_fn``): with ``loop="host"`` they key the cache of the one
    compiled chunk step, so repeated calls never recompile.  ``args`` is a
    pytree of arrays passed unchanged to every chunk; ``mask`` is ``(b,)``
    in ``x.dtype`` (see :func:`chunk_at`).

    Args:
      loop: ``"scan"`` (a ``lax.scan``; traceable) or ``"host"`` (a Python
        loop dispatching one jitted chunk step per chunk; needs concrete
        arguments and donates ``carry``).
    """
    if loop not in LOOPS:
        raise ValueError(f"loop must be one of {LOOPS}, got {loop!r}")
    n = x.shape[0]
    b = effective_batch_size(batch_size, n)
    num = ceil_div(n, b)
    if loop == "host":
        if not is_concrete(carry, args, x):
            raise ValueError("loop='host' needs concrete arguments (it cannot run under jit/vmap/grad); use loop='scan'")
        x = jnp.asarray(x)
        for i in range(num):
            carry = backend.pace(_host_chunk_step(fn, static, carry, args, x, b, jnp.asarray(i, jnp.int32)))
        return carry

    def body(c, i):
        return fn(static, c, args, *chunk_at(x, b, i)), None

    carry, _ = jax.lax.scan(body, carry, jnp.arange(num))
    return carry


def pad_rows(x: Any, size: int) -> Any:
    """``x`` with zero rows appended up to ``size`` rows (NumPy stays NumPy).

    >>> pad_rows(np.ones((2, 3)), 4).shape
    (4, 3)
    """
    pad = int(size) - x.shape[0]
    if pad <= 0:
        return x
    widths = [(0, pad)] + [(0, 0)] * (x.ndim - 1)
    return np.pad(x, widths) if isinstance(x, np.ndarray) else jnp.pad(x, widths)


def map_batches(step: Callable[[jax.Array], Any], x: Any, batch_size: int, multiple: int = 1) -> np.ndarray:
    """``step`` over ``x`` in fixed-size batches on the host; per-example outputs concatenated (NumPy).

    ``step`` maps ``(B, *S) -> (B, ...)`` with ``B = effective_batch_size(batch_size, N, multiple)``;
    the last batch is zero-padded to ``B`` (so a jitted ``step`` compiles once) and
    its padding dropped.

    >>> map_batches(lambda xb: 2 * xb, np.arange(5.0), 2).tolist()
    [0.0, 2.0, 4.0, 6.0, 8.0]
    """
    n = x.shape[0]
    if n == 0:
        raise ValueError("x is empty: expected at least one example")
    size = effective_batch_size(batch_size, n, multiple)
    outs = [np.asarray(step(pad_rows(x[start : start + size], size))) for start in range(0, n, size)]
    return np.concatenate(outs)[:n]
