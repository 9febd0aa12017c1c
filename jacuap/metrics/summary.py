"""The Jacobian metrics of a model on a set, as one JSON-able dict, and correlations across models.

:func:`jacobian_metrics` gathers the bounds of :mod:`jacuap.metrics.bounds`
over a whole set and the pairwise sharing of :mod:`jacuap.metrics.pairwise`
over a random subset (overall and per class pair); :func:`pearson` and
:func:`spearman` correlate such values with attack success across models.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from jacuap.checks import check_finite, check_jacobian_inputs, check_key, check_labels, check_positive_int
from jacuap.jacobian import ApplyFn
from jacuap.metrics.bounds import _ratio, input_jacobians, mean_frobenius_sq, per_example_spectral_norms, stacked_sigma_max
from jacuap.metrics.pairwise import class_pair_summary, pairwise_metrics_from_jacobians

__all__ = ["jacobian_metrics", "pearson", "spearman"]


def _jsonable(table: np.ndarray) -> list:
    """Nested lists with NaN as None (strict JSON has no NaN)."""
    return [[None if not np.isfinite(value) else float(value) for value in row] for row in table]


def jacobian_metrics(
    apply_fn: ApplyFn,
    params: Any,
    x: Any,
    y: Any,
    key: Optional[jax.Array],
    num_pairs_inputs: int = 200,
    batch_size: int = 256,
    num_iters: int = 50,
    num_classes: Optional[int] = None,
) -> Dict[str, Any]:
    """The Jacobian metrics of a model on a set, as a JSON-able dict.

    Set-level quantities use all ``N`` inputs of ``x``, with ``J_i = J(x_i)``:

    * ``mean_frobenius_sq``: ``mean_i ||J_i||_F^2``;
    * ``stacked_spectral_norm``: ``sigma_max(J_X)``, ``J_X = [J_1; ...; J_N]``;
    * ``mean_spectral_norm_sq``: ``mean_i sigma_max(J_i)^2``;
    * ``universality_ratio``: ``sigma_max(J_X)^2 / sum_i sigma_max(J_i)^2``.

    Pairwise quantities use ``num_pairs_inputs`` inputs drawn without
    replacement (with ``key``): the off-diagonal means of the three pairwise
    matrices of :data:`jacuap.metrics.PAIRWISE_METRICS` and, under
    ``<name>_by_class``, their ``K x K`` per-class-pair means (None where a
    class pair is absent).

    Args:
      apply_fn, params: the model; x ``(N, *S)``; y ``(N,)`` labels.
      key: PRNG key (input sampling, power iteration), required.
      num_pairs_inputs: inputs for the ``O(n^2)`` pairwise metrics.
      batch_size: Jacobian batch size.
      num_iters: power iterations when ``d > 4096``.
      num_classes: ``K`` for the tables (default: the model's output size).

    >>> W = jnp.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])  # a linear model: one Jacobian for all
    >>> out = jacobian_metrics(lambda W, x: x @ W, W, jnp.ones((4, 3)), [0, 1, 0, 1], jax.random.PRNGKey(0))
    >>> out["mean_frobenius_sq"], round(out["universality_ratio"], 4), round(out["jacobian_cosine"], 4)
    (91.0, 1.0, 1.0)
    """
    check_key(key, why="by jacobian_metrics (input sampling, power iteration)")
    model_classes = check_jacobian_inputs(apply_fn, params, x)
    if num_classes is not None:
        check_positive_int(num_classes, "num_classes")
    check_labels(y, np.shape(x)[0], model_classes if num_classes is None else num_classes)
    for value, name in ((num_pairs_inputs, "num_pairs_inputs"), (batch_size, "batch_size"), (num_iters, "num_iters")):
        check_positive_int(value, name)
    x = jnp.asarray(x)
    y = np.asarray(y)
    n = x.shape[0]
    sample_key, power_key = jax.random.split(key)
    sigma = stacked_sigma_max(apply_fn, params, x, power_key, num_iters, batch_size)
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


def _samples(a: Any, b: Any, who: str) -> Tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    if a.shape != b.shape or a.size < 2:
        raise ValueError(f"{who}: need two samples of equal length >= 2, got {a.shape} and {b.shape}")
    check_finite(a, "a")
    check_finite(b, "b")
    return a, b


def _constant(a: np.ndarray) -> bool:
    # scipy warns and returns NaN on constant input; NaN without the warning here.
    return bool(np.all(a == a[0]))


def pearson(a: Any, b: Any) -> float:
    """Pearson correlation ``cov(a, b) / (std(a) std(b))`` of two 1-D samples (``scipy.stats.pearsonr``).

    NaN when one sample is constant (the correlation is undefined); ValueError
    unless both have the same length ``>= 2`` and hold finite numbers.

    >>> pearson([1, 2, 3], [2, 4, 7]), pearson([1, 1, 1], [1, 2, 3])
    (0.9933992677987828, nan)
    """
    import scipy.stats  # here, not at the top: it costs every program 0.7 s of start-up

    a, b = _samples(a, b, "pearson")
    if _constant(a) or _constant(b):
        return float("nan")
    return float(scipy.stats.pearsonr(a, b).statistic)


def spearman(a: Any, b: Any) -> float:
    """Spearman rank correlation: Pearson of the average ranks, ties averaged (``scipy.stats.spearmanr``).

    NaN when one sample is constant; ValueError unless both have the same
    length ``>= 2`` and hold finite numbers.

    >>> spearman([1, 2, 3], [2, 4, 7]), spearman([1, 2, 2], [3, 1, 2])
    (1.0, -0.8660254037844387)
    """
    import scipy.stats  # at call time: see pearson

    a, b = _samples(a, b, "spearman")
    if _constant(a) or _constant(b):
        return float("nan")
    return float(scipy.stats.spearmanr(a, b).statistic)
