"""Metrics: accuracy, universal evasion, Jacobian bounds and pairwise sharing.

Conventions as in :mod:`jacuap.jacobian`: ``apply_fn(params, x) -> logits``,
``x`` of shape ``(N, *S)`` with pixels in ``[0, 1]``, ``J_i = J(x_i)`` the
``K x d`` input Jacobian.  A universal perturbation ``v`` has shape ``S``;
the model sees ``clip(x + v, 0, 1)``.

Three families (SPEC §2-3):

* Predictions: :func:`predict`, :func:`accuracy`,
  :func:`universal_evasion_rate` (UER, share with ``argmax f(clip(x+v)) != y``)
  and :func:`fooling_rate` (share whose prediction ``v`` changes).
* Bounds on every UAP: ``sum_i ||J_i v||^2 <= sigma_max(J_X)^2 ||v||_2^2
  <= sum_i sigma_max(J_i)^2 ||v||^2 <= sum_i ||J_i||_F^2 ||v||^2``:
  :func:`mean_frobenius_sq`, :func:`per_example_spectral_norms`,
  :func:`first_order_uap_bound`, and :func:`universality_ratio`
  ``sigma_max(J_X)^2 / sum_i sigma_max(J_i)^2`` in ``[1/N, 1]``.
* Pairwise sharing, from ``K x K`` products ``G_ij = J_i J_j^T`` only (never a
  ``d x d`` matrix): :func:`shared_perturbation_strength`,
  :func:`jacobian_cosine`, :func:`gram_cosine`, each also on given Jacobians
  (``*_from_jacobians``), summarised by :func:`class_pair_summary`.

Loops over the data run batch by batch on the host with ONE compiled
function per (model, batch size): the last batch is zero-padded, so any
``N`` reuses it.  Scalar results are Python floats (JSON-able).  To use every
device, pass ``jacuap.parallel.batch_sharded_apply(apply_fn, mesh)`` and
parameters replicated on the mesh: batch sizes are then rounded up to a
multiple of the device count and each batch is split over the devices.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

from jacuap import jacobian, parallel

ApplyFn = jacobian.ApplyFn

__all__ = [
    "predict",
    "accuracy",
    "universal_evasion_rate",
    "fooling_rate",
    "mean_frobenius_sq",
    "per_example_spectral_norms",
    "stacked_spectral_norm",
    "first_order_uap_bound",
    "universality_ratio",
    "input_jacobians",
    "pairwise_metrics_from_jacobians",
    "shared_perturbation_strength_from_jacobians",
    "jacobian_cosine_from_jacobians",
    "gram_cosine_from_jacobians",
    "shared_perturbation_strength",
    "jacobian_cosine",
    "gram_cosine",
    "class_pair_summary",
    "pearson",
    "spearman",
    "jacobian_metrics",
]

PAIRWISE_METRICS = ("shared_perturbation_strength", "jacobian_cosine", "gram_cosine")


# --------------------------------------------------------------------------
# Batched evaluation on the host: one compiled step, padded last batch.
# --------------------------------------------------------------------------


def _map_batches(step: Callable[[jax.Array], jax.Array], x: Any, batch_size: int, multiple: int = 1) -> np.ndarray:
    """``step`` over ``x`` in batches of a fixed size; per-example outputs concatenated.

    ``step`` maps ``(B, *S) -> (B, ...)``.  ``B = min(batch_size, N)`` rounded up
    to a multiple of ``multiple`` (the device count of a model sharded with
    :func:`jacuap.parallel.batch_sharded_apply`, so batches split evenly); the last
    batch is zero-padded to ``B`` (and its padding dropped) so the compiled
    ``step`` sees one shape only.
    """
    n = x.shape[0]
    if n == 0:
        raise ValueError("metrics: empty input set")
    size = parallel.round_up(max(1, min(int(batch_size), n)), multiple)
    outs = []
    for start in range(0, n, size):
        xb = x[start : start + size]
        if xb.shape[0] < size:
            pad = [(0, size - xb.shape[0])] + [(0, 0)] * (xb.ndim - 1)
            xb = jnp.pad(jnp.asarray(xb), pad)
        outs.append(step(xb))
    return np.concatenate([np.asarray(o) for o in outs])[:n]


@functools.partial(jax.jit, static_argnames="apply_fn")
def _predict_batch(apply_fn: ApplyFn, params: Any, xb: jax.Array, v: Optional[jax.Array]) -> jax.Array:
    """``argmax f(xb)`` or, with ``v``, ``argmax f(clip(xb + v, 0, 1))``: ``(B,)`` int."""
    if v is not None:
        xb = jnp.clip(xb + v, 0.0, 1.0)
    return jnp.argmax(apply_fn(params, xb), axis=-1)


def _perturbed_predictions(apply_fn, params, x, v, batch_size) -> np.ndarray:
    x = jnp.asarray(x)
    if v is not None:
        v = jnp.asarray(v, x.dtype)
        chex.assert_shape(v, x.shape[1:])
    return _map_batches(lambda xb: _predict_batch(apply_fn, params, xb, v), x, batch_size,
                        parallel.batch_multiple(apply_fn))


def predict(apply_fn: ApplyFn, params: Any, x: Any, batch_size: int = 1000) -> np.ndarray:
    """Predicted classes ``argmax_k f(x)_k``, shape ``(N,)`` int (NumPy)."""
    return _perturbed_predictions(apply_fn, params, x, None, batch_size)


def accuracy(apply_fn: ApplyFn, params: Any, x: Any, y: Any, batch_size: int = 1000) -> float:
    """Share of inputs with ``argmax f(x) == y``."""
    y = np.asarray(y)
    chex.assert_shape(y, (x.shape[0],))
    return float(np.mean(predict(apply_fn, params, x, batch_size) == y))


def universal_evasion_rate(
    apply_fn: ApplyFn, params: Any, x: Any, y: Any, v: Any, batch_size: int = 1000
) -> float:
    """UER: share of inputs with ``argmax f(clip(x + v, 0, 1)) != y``.

    At ``v = 0`` it is ``1 - accuracy``.  ``v`` has shape ``S``.
    """
    y = np.asarray(y)
    chex.assert_shape(y, (x.shape[0],))
    return float(np.mean(_perturbed_predictions(apply_fn, params, x, v, batch_size) != y))


def fooling_rate(apply_fn: ApplyFn, params: Any, x: Any, v: Any, batch_size: int = 1000) -> float:
    """Share of inputs whose prediction ``v`` changes: ``k(clip(x + v)) != k(x)``."""
    clean = predict(apply_fn, params, x, batch_size)
    return float(np.mean(_perturbed_predictions(apply_fn, params, x, v, batch_size) != clean))


# --------------------------------------------------------------------------
# Bounds.
# --------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames="apply_fn")
def _frobenius_sq_batch(apply_fn: ApplyFn, params: Any, xb: jax.Array) -> jax.Array:
    return jacobian.frobenius_sq(apply_fn, params, xb)


@functools.partial(jax.jit, static_argnames="apply_fn")
def _spectral_norm_batch(apply_fn: ApplyFn, params: Any, xb: jax.Array) -> jax.Array:
    return jacobian.spectral_norm(apply_fn, params, xb, method="exact")


@functools.partial(jax.jit, static_argnames="apply_fn")
def _input_jacobian_batch(apply_fn: ApplyFn, params: Any, xb: jax.Array) -> jax.Array:
    return jacobian.input_jacobian(apply_fn, params, xb)


_stacked_spectral_norm = jax.jit(
    jacobian.stacked_spectral_norm,
    static_argnums=0,
    static_argnames=("num_iters", "batch_size", "method"),
)


def mean_frobenius_sq(apply_fn: ApplyFn, params: Any, x: Any, batch_size: int = 256) -> float:
    """Exact ``mean_i ||J(x_i)||_F^2`` over the set (``K`` VJPs per batch)."""
    fro = _map_batches(lambda xb: _frobenius_sq_batch(apply_fn, params, xb), x, batch_size,
                        parallel.batch_multiple(apply_fn))
    return float(np.mean(fro))


def per_example_spectral_norms(apply_fn: ApplyFn, params: Any, x: Any, batch_size: int = 256) -> np.ndarray:
    """Exact ``sigma_max(J(x_i))`` for each input, shape ``(N,)`` (top eigenvalue of ``J J^T``)."""
    return _map_batches(lambda xb: _spectral_norm_batch(apply_fn, params, xb), x, batch_size,
                        parallel.batch_multiple(apply_fn))


def stacked_spectral_norm(
    apply_fn: ApplyFn,
    params: Any,
    x: Any,
    key: Optional[jax.Array] = None,
    num_iters: int = 50,
    batch_size: int = 256,
    method: str = "auto",
) -> float:
    """``sigma_max(J_X)`` of the stacked Jacobian (the kernel, called eagerly).

    ``method="auto"``: exact from the ``d x d`` Gram matrix when ``d <= 4096``,
    otherwise power iteration (a lower bound converging to ``sigma_max``).
    """
    x = jnp.asarray(x)
    # Eager on purpose: outside jit the kernel loops over chunks from Python
    # with one compiled chunk step, 2-4x faster on CPU than lax.scan (SPEED.md).
    sigma, _ = jacobian.stacked_spectral_norm(
        apply_fn, params, x, key, num_iters=num_iters, method=method,
        batch_size=parallel.round_up(min(batch_size, x.shape[0]), parallel.batch_multiple(apply_fn)),
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
    """
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

    The share of the per-input worst case that ONE perturbation can reach
    (SPEC §2): 1 when all inputs share their worst direction, ``1/N`` when
    the worst directions are mutually orthogonal with equal strengths.
    ``sigma_max(J_X)`` from :func:`jacuap.jacobian.stacked_spectral_norm`
    (``method``), each ``sigma_max(J_i)`` exact.
    """
    sigma = stacked_spectral_norm(apply_fn, params, x, key, num_iters, batch_size, method)
    sigmas = per_example_spectral_norms(apply_fn, params, x, batch_size)
    return _ratio(sigma**2, float(np.sum(np.square(sigmas, dtype=np.float64))))


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator > 0 else float("nan")


# --------------------------------------------------------------------------
# Pairwise sharing from K x K products.
# --------------------------------------------------------------------------


def input_jacobians(apply_fn: ApplyFn, params: Any, x: Any, batch_size: int = 256) -> jax.Array:
    """Exact per-example Jacobians ``(N, K, *S)`` by :func:`jacuap.jacobian.input_jacobian`, in batches."""
    x = jnp.asarray(x)
    jac = _map_batches(lambda xb: _input_jacobian_batch(apply_fn, params, xb), x, batch_size,
                        parallel.batch_multiple(apply_fn))
    return jnp.asarray(jac)


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
    """
    jac = jnp.asarray(jac)
    n, k = jac.shape[:2]
    jac = jac.reshape(n, k, -1)
    which = tuple(which)
    if row_block is None:
        row_block = max(1, _PAIR_BLOCK_ELEMENTS // (n * 4 * k * k))
    row_block = min(int(row_block), n)
    blocks = []
    for start in range(0, n, row_block):
        rows = jac[start : start + row_block]
        if rows.shape[0] < row_block:
            rows = jnp.pad(rows, [(0, row_block - rows.shape[0]), (0, 0), (0, 0)])
        blocks.append(_pairwise_rows(rows, jac, which))
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
    """:func:`shared_perturbation_strength_from_jacobians` of the model's Jacobians on ``x``, ``(N, N)``."""
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
    """
    matrix = np.asarray(matrix, np.float64)
    labels = np.asarray(labels).astype(np.int64)
    n = labels.shape[0]
    chex.assert_shape(matrix, (n, n))
    off = ~np.eye(n, dtype=bool)
    onehot = np.eye(num_classes)[labels]  # (N, K)
    sums = onehot.T @ np.where(off, matrix, 0.0) @ onehot
    counts = onehot.T @ off.astype(np.float64) @ onehot
    with np.errstate(invalid="ignore", divide="ignore"):
        table = np.where(counts > 0, sums / np.maximum(counts, 1.0), np.nan)
    overall = float(matrix[off].mean()) if n > 1 else float("nan")
    return table, overall


# --------------------------------------------------------------------------
# Correlations across models.
# --------------------------------------------------------------------------


def pearson(a: Any, b: Any) -> float:
    """Pearson correlation ``cov(a, b) / (std(a) std(b))`` of two 1-D samples (NaN if one is constant)."""
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    if a.shape != b.shape or a.size < 2:
        raise ValueError(f"pearson: need two samples of equal length >= 2, got {a.shape} and {b.shape}")
    a = a - a.mean()
    b = b - b.mean()
    den = math.sqrt(float(np.dot(a, a)) * float(np.dot(b, b)))
    return float(np.dot(a, b) / den) if den > 0 else float("nan")


def _average_ranks(a: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties sharing the mean of the ranks they span (``scipy.stats.rankdata``'s default)."""
    order = np.argsort(a, kind="mergesort")
    sorted_a = a[order]
    # Start index of each run of equal values, and the run of each sorted position.
    starts = np.concatenate([[True], sorted_a[1:] != sorted_a[:-1]])
    run = np.cumsum(starts) - 1
    first = np.flatnonzero(starts)
    last = np.concatenate([first[1:], [a.size]]) - 1
    mean_rank = (first + last) / 2.0 + 1.0
    ranks = np.empty(a.size)
    ranks[order] = mean_rank[run]
    return ranks


def spearman(a: Any, b: Any) -> float:
    """Spearman rank correlation: Pearson of the average ranks (ties averaged)."""
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"spearman: samples of different lengths {a.shape} and {b.shape}")
    return pearson(_average_ranks(a), _average_ranks(b))


# --------------------------------------------------------------------------
# Everything at once, JSON-able.
# --------------------------------------------------------------------------


def _jsonable(table: np.ndarray) -> list:
    """Nested lists with NaN as None (strict JSON has no NaN)."""
    return [[None if not np.isfinite(value) else float(value) for value in row] for row in table]


def jacobian_metrics(
    apply_fn: ApplyFn,
    params: Any,
    x: Any,
    y: Any,
    key: Optional[jax.Array] = None,
    num_pairs_inputs: int = 200,
    batch_size: int = 256,
    num_iters: int = 50,
    num_classes: Optional[int] = None,
) -> Dict[str, Any]:
    """The Jacobian metrics of a model on a set, as a JSON-able dict.

    Set-level quantities use all of ``x``: ``mean_frobenius_sq``
    (``mean_i ||J_i||_F^2``), ``stacked_spectral_norm`` (``sigma_max(J_X)``),
    ``mean_spectral_norm_sq`` (``mean_i sigma_max(J_i)^2``) and
    ``universality_ratio``.  Pairwise quantities use ``num_pairs_inputs``
    inputs drawn without replacement (with ``key``): the off-diagonal means of
    the three pairwise matrices and, under ``<name>_by_class``, their
    ``K x K`` per-class-pair means (None where a class pair is absent).

    Args:
      apply_fn, params: the model; x ``(N, *S)``; y ``(N,)`` labels.
      key: PRNG key (sampling, power iteration); default ``PRNGKey(0)``.
      num_pairs_inputs: inputs for the ``O(n^2)`` pairwise metrics.
      batch_size: Jacobian batch size.
      num_iters: power iterations when ``d > 4096``.
      num_classes: ``K`` for the tables (default: the model's output size).
    """
    x = jnp.asarray(x)
    y = np.asarray(y)
    n = x.shape[0]
    if key is None:
        key = jax.random.PRNGKey(0)
    sample_key, power_key = jax.random.split(key)
    sigma = stacked_spectral_norm(apply_fn, params, x, power_key, num_iters, batch_size)
    sigmas_sq = np.square(per_example_spectral_norms(apply_fn, params, x, batch_size).astype(np.float64))
    result: Dict[str, Any] = {
        "num_inputs": int(n),
        "mean_frobenius_sq": mean_frobenius_sq(apply_fn, params, x, batch_size),
        "stacked_spectral_norm": sigma,
        "mean_spectral_norm_sq": float(np.mean(sigmas_sq)),
        "universality_ratio": _ratio(sigma**2, float(np.sum(sigmas_sq))),
    }
    m = min(int(num_pairs_inputs), n)
    index = np.sort(np.asarray(jax.random.choice(sample_key, n, (m,), replace=False)))
    jac = input_jacobians(apply_fn, params, x[index], batch_size)
    if num_classes is None:
        num_classes = int(jac.shape[1])
    result["num_pairs_inputs"] = m
    for name, matrix in pairwise_metrics_from_jacobians(jac).items():
        table, overall = class_pair_summary(matrix, y[index], num_classes)
        result[name] = overall
        result[f"{name}_by_class"] = _jsonable(table)
    return result
