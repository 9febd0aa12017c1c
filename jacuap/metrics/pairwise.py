"""Pairwise sharing of worst-case directions between inputs, from ``K x K`` products.

For inputs ``x_i, x_j`` with ``K x d`` Jacobians ``J_i, J_j`` every quantity
here comes from the blocks ``G_ij = J_i J_j^T`` (``K x K``; never a ``d x d``
matrix):

* shared perturbation strength
  ``s_ij = sigma_max([J_i; J_j])^2 / (sigma_max(J_i)^2 + sigma_max(J_j)^2)``
  in ``[1/2, 1]`` (:func:`shared_perturbation_strength`);
* Frobenius cosine ``<J_i, J_j>_F / (||J_i||_F ||J_j||_F)`` in ``[-1, 1]``
  (:func:`jacobian_cosine`);
* Gram cosine ``||J_i J_j^T||_F^2 / (||J_i J_i^T||_F ||J_j J_j^T||_F)`` in
  ``[0, 1]`` (:func:`gram_cosine`).

Each has a ``*_from_jacobians`` form taking given Jacobians ``(N, K, *S)``;
:func:`pairwise_metrics_from_jacobians` computes several at once in row
blocks, and :func:`class_pair_summary` averages an ``(N, N)`` matrix per
class pair.
"""

from __future__ import annotations

import functools
from typing import Any, Dict, Optional, Sequence, Tuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

from jacuap.batching import pad_rows
from jacuap.checks import InputError, check_finite, check_jacobians, check_labels, check_positive_int
from jacuap.jacobian import ApplyFn
from jacuap.metrics.bounds import input_jacobians

__all__ = [
    "PAIRWISE_METRICS",
    "pairwise_metrics_from_jacobians",
    "shared_perturbation_strength_from_jacobians",
    "jacobian_cosine_from_jacobians",
    "gram_cosine_from_jacobians",
    "shared_perturbation_strength",
    "jacobian_cosine",
    "gram_cosine",
    "class_pair_summary",
]

PAIRWISE_METRICS = ("shared_perturbation_strength", "jacobian_cosine", "gram_cosine")


def _top_eigenvalue(sym: jax.Array) -> jax.Array:
    """``lambda_max`` of symmetric matrices ``(..., m, m)`` (>= 0 here: Gram matrices)."""
    return jnp.maximum(jnp.linalg.eigvalsh(sym)[..., -1], 0.0)


def _safe_div(num: jax.Array, den: jax.Array, empty: float) -> jax.Array:
    """``num / den``, and ``empty`` where ``den == 0`` (vanishing Jacobians)."""
    ok = den > 0
    return jnp.where(ok, num / jnp.where(ok, den, 1.0), empty)


@functools.partial(jax.jit, static_argnames="which")
def _pairwise_rows(rows: jax.Array, jac: jax.Array, which: Tuple[str, ...]) -> Tuple[jax.Array, ...]:
    """Pairwise metrics between a block of inputs and all inputs, ``(r, N)`` each.

    ``rows`` ``(r, K, d)``, ``jac`` ``(N, K, d)``; every quantity comes from the
    blocks ``G_ij = J_i J_j^T`` (``K x K``):

    * strength ``s_ij = lambda_max([[G_ii, G_ij], [G_ji, G_jj]]) /
      (lambda_max(G_ii) + lambda_max(G_jj))``, since the ``2K x 2K`` matrix is
      the Gram matrix ``[J_i; J_j][J_i; J_j]^T`` whose top eigenvalue is
      ``sigma_max([J_i; J_j])^2``; 1 where both Jacobians vanish;
    * Frobenius cosine ``tr(G_ij) / sqrt(tr(G_ii) tr(G_jj))``; 0 where one vanishes;
    * Gram cosine ``||G_ij||_F^2 / (||G_ii||_F ||G_jj||_F)``; 0 where one vanishes.
    """
    gram_rows = jnp.einsum("ikd,jld->ijkl", rows, jac)  # (r, N, K, K)
    diag_rows = jnp.einsum("ikd,ild->ikl", rows, rows)  # (r, K, K)
    diag = jnp.einsum("ikd,ild->ikl", jac, jac)  # (N, K, K)
    out = []
    for name in which:
        if name == "shared_perturbation_strength":
            r, n, k, _ = gram_rows.shape
            top_left = jnp.broadcast_to(diag_rows[:, None], (r, n, k, k))
            bottom_right = jnp.broadcast_to(diag[None], (r, n, k, k))
            bottom_left = jnp.swapaxes(gram_rows, -1, -2)
            block = jnp.concatenate(
                [
                    jnp.concatenate([top_left, gram_rows], axis=-1),
                    jnp.concatenate([bottom_left, bottom_right], axis=-1),
                ],
                axis=-2,
            )
            den = _top_eigenvalue(diag_rows)[:, None] + _top_eigenvalue(diag)[None, :]
            out.append(_safe_div(_top_eigenvalue(block), den, 1.0))
        elif name == "jacobian_cosine":
            inner = jnp.trace(gram_rows, axis1=-2, axis2=-1)
            norms_rows = jnp.sqrt(jnp.trace(diag_rows, axis1=-2, axis2=-1))
            norms = jnp.sqrt(jnp.trace(diag, axis1=-2, axis2=-1))
            out.append(_safe_div(inner, norms_rows[:, None] * norms[None, :], 0.0))
        elif name == "gram_cosine":
            cross = jnp.sum(jnp.square(gram_rows), axis=(-2, -1))
            norms_rows = jnp.sqrt(jnp.sum(jnp.square(diag_rows), axis=(-2, -1)))
            norms = jnp.sqrt(jnp.sum(jnp.square(diag), axis=(-2, -1)))
            out.append(_safe_div(cross, norms_rows[:, None] * norms[None, :], 0.0))
        else:
            raise ValueError(f"unknown pairwise metric {name!r}; use one of {PAIRWISE_METRICS}")
    return tuple(out)


# Budget of floats for one row block of 2K x 2K matrices (plus eigvalsh workspace).
_PAIR_BLOCK_ELEMENTS = 1 << 24


def pairwise_metrics_from_jacobians(
    jac: Any,
    which: Sequence[str] = PAIRWISE_METRICS,
    row_block: Optional[int] = None,
) -> Dict[str, jax.Array]:
    """The pairwise matrices of ``which`` from per-example Jacobians, ``(N, N)`` each.

    Rows are processed in blocks of ``row_block`` inputs (default: as many as
    keep ``r * N * (2K)^2`` under ~16M floats), the last block zero-padded so
    one compiled program serves all blocks.  Results are symmetrised
    (``(M + M^T) / 2``: the formulas are symmetric, float rounding is not)
    and clipped to their mathematical ranges (strength ``[1/2, 1]``,
    cosines ``[-1, 1]`` and ``[0, 1]``).

    Args:
      jac: ``(N, K, *S)`` or ``(N, K, d)`` Jacobians (any float dtype).
      which: names from ``PAIRWISE_METRICS``.
      row_block: rows per block.

    Returns:
      ``{name: (N, N) array}``.

    >>> jac = jnp.array([[[1.0, 0.0]], [[0.0, 1.0]]])  # N = 2, K = 1, d = 2: orthogonal rows
    >>> {name: m.round(4).tolist() for name, m in pairwise_metrics_from_jacobians(jac).items()}
    {'shared_perturbation_strength': [[1.0, 0.5], [0.5, 1.0]], 'jacobian_cosine': [[1.0, 0.0], [0.0, 1.0]], 'gram_cosine': [[1.0, 0.0], [0.0, 1.0]]}
    """
    check_jacobians(jac)
    which = (which,) if isinstance(which, str) else tuple(which)
    unknown = [name for name in which if name not in PAIRWISE_METRICS]
    if unknown or not which:
        raise InputError(f"which must name pairwise metrics from {PAIRWISE_METRICS}, got {which}")
    if row_block is not None:
        check_positive_int(row_block, "row_block")
    jac = jnp.asarray(jac)
    n, k = jac.shape[:2]
    jac = jac.reshape(n, k, -1)
    if row_block is None:
        row_block = max(1, _PAIR_BLOCK_ELEMENTS // (n * 4 * k * k))
    row_block = min(int(row_block), n)
    blocks = []
    for start in range(0, n, row_block):
        blocks.append(_pairwise_rows(pad_rows(jac[start : start + row_block], row_block), jac, which))
    ranges = {"shared_perturbation_strength": (0.5, 1.0), "jacobian_cosine": (-1.0, 1.0), "gram_cosine": (0.0, 1.0)}
    result = {}
    for index, name in enumerate(which):
        full = jnp.concatenate([b[index] for b in blocks], axis=0)[:n]
        full = 0.5 * (full + full.T)
        result[name] = jnp.clip(full, *ranges[name])
        chex.assert_shape(result[name], (n, n))
    return result


def shared_perturbation_strength_from_jacobians(jac: Any, row_block: Optional[int] = None) -> jax.Array:
    """``s_ij = sigma_max([J_i; J_j])^2 / (sigma_max(J_i)^2 + sigma_max(J_j)^2)``, ``(N, N)``.

    In ``[1/2, 1]``: 1 when one direction is worst-case for both inputs
    (e.g. ``J_j = c J_i``), 1/2 when their worst directions are orthogonal
    with equal strengths; ``(1 + |cos theta_ij|) / 2`` for rank-one equal-norm
    Jacobians.  From ``K x K`` blocks only (see :func:`_pairwise_rows`).

    Args: jac ``(N, K, *S)``.  Returns: ``(N, N)``, symmetric, diagonal 1.

    >>> jac = jnp.array([[[1.0, 0.0]], [[-2.0, 0.0]], [[0.6, 0.8]]])  # J_1 = -2 J_0; cos(J_0, J_2) = 0.6
    >>> np.round(np.asarray(shared_perturbation_strength_from_jacobians(jac)[0], float), 4).tolist()  # (1 + 0.6) / 2
    [1.0, 1.0, 0.8]
    """
    return pairwise_metrics_from_jacobians(jac, ("shared_perturbation_strength",), row_block)[
        "shared_perturbation_strength"
    ]


def jacobian_cosine_from_jacobians(jac: Any, row_block: Optional[int] = None) -> jax.Array:
    """Frobenius cosine ``<J_i, J_j>_F / (||J_i||_F ||J_j||_F)``, ``(N, N)`` in ``[-1, 1]``."""
    return pairwise_metrics_from_jacobians(jac, ("jacobian_cosine",), row_block)["jacobian_cosine"]


def gram_cosine_from_jacobians(jac: Any, row_block: Optional[int] = None) -> jax.Array:
    """Gram cosine ``||J_i J_j^T||_F^2 / (||J_i J_i^T||_F ||J_j J_j^T||_F)``, ``(N, N)`` in ``[0, 1]``.

    Equals ``<A_i, A_j>_F / (||A_i||_F ||A_j||_F)`` for ``A = J^T J``, the
    cosine of the two inputs' ``d x d`` quadratic forms ``v -> ||J v||^2``,
    computed from ``K x K`` products (Cauchy-Schwarz gives the range).
    """
    return pairwise_metrics_from_jacobians(jac, ("gram_cosine",), row_block)["gram_cosine"]


def shared_perturbation_strength(apply_fn: ApplyFn, params: Any, x: Any, batch_size: int = 256) -> jax.Array:
    """:func:`shared_perturbation_strength_from_jacobians` of the model's Jacobians on ``x``, ``(N, N)``.

    >>> W = jnp.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])  # a linear model: one Jacobian for all
    >>> shared_perturbation_strength(lambda W, x: x @ W, W, jnp.ones((2, 3))).round(4).tolist()
    [[1.0, 1.0], [1.0, 1.0]]
    """
    return shared_perturbation_strength_from_jacobians(input_jacobians(apply_fn, params, x, batch_size))


def jacobian_cosine(apply_fn: ApplyFn, params: Any, x: Any, batch_size: int = 256) -> jax.Array:
    """:func:`jacobian_cosine_from_jacobians` of the model's Jacobians on ``x``, ``(N, N)``."""
    return jacobian_cosine_from_jacobians(input_jacobians(apply_fn, params, x, batch_size))


def gram_cosine(apply_fn: ApplyFn, params: Any, x: Any, batch_size: int = 256) -> jax.Array:
    """:func:`gram_cosine_from_jacobians` of the model's Jacobians on ``x``, ``(N, N)``."""
    return gram_cosine_from_jacobians(input_jacobians(apply_fn, params, x, batch_size))


def class_pair_summary(matrix: Any, labels: Any, num_classes: int) -> Tuple[np.ndarray, float]:
    """Mean of a pairwise matrix's OFF-diagonal entries per class pair, and overall.

    Args:
      matrix: ``(N, N)`` pairwise values.
      labels: ``(N,)`` classes in ``[0, num_classes)``.
      num_classes: ``K``.

    Returns:
      ``(table, overall)``: ``table[a, b]`` is the mean of ``matrix[i, j]`` over
      ``i != j`` with ``labels[i] = a``, ``labels[j] = b`` (NaN where no such
      pair), ``overall`` the mean over all ``i != j`` (NaN when ``N < 2``).

    >>> m = np.array([[1.0, 0.2, 0.4], [0.2, 1.0, 0.6], [0.4, 0.6, 1.0]])
    >>> table, overall = class_pair_summary(m, [0, 0, 1], 2)
    >>> table.round(4).tolist(), round(overall, 4)
    ([[0.2, 0.5], [0.5, nan]], 0.4)
    """
    check_positive_int(num_classes, "num_classes")
    n = np.shape(matrix)[0] if np.ndim(matrix) else 0
    if np.shape(matrix) != (n, n):
        raise InputError(f"matrix must be a square (N, N) pairwise matrix, got shape {np.shape(matrix)}")
    check_finite(matrix, "matrix")
    check_labels(labels, n, num_classes, name="labels")
    matrix = np.asarray(matrix, np.float64)
    labels = np.asarray(labels).astype(np.int64)
    off = ~np.eye(n, dtype=bool)
    onehot = np.eye(num_classes)[labels]  # (N, K)
    sums = onehot.T @ np.where(off, matrix, 0.0) @ onehot
    counts = onehot.T @ off.astype(np.float64) @ onehot
    with np.errstate(invalid="ignore", divide="ignore"):
        table = np.where(counts > 0, sums / np.maximum(counts, 1.0), np.nan)
    overall = float(matrix[off].mean()) if n > 1 else float("nan")
    return table, overall
