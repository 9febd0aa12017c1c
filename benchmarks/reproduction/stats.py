"""Bootstrap intervals over seeds and test inputs, correlations, and the verdict rules of the reproduction.

Outcomes are boolean arrays ``(S, N)`` (``(S, E, N)`` over an eps grid): per
training seed ``s`` and test input ``n``, e.g. "wrong under the UAP".  A model's
rate is the mean over all seeds and inputs.  Intervals are hierarchical
percentile bootstraps: a replicate resamples the seeds of each model with
replacement (the same seed indices for both models when ``paired``) and the
test inputs with replacement, with ONE input index vector shared by both
models, since every model is evaluated on the same test inputs.  A replicate's
rate is therefore ``sum_s sum_n c_s d_n x[s, n] / (S N)`` with ``c`` and ``d``
the seed and input draw counts.  The interval at ``level`` is the
``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of the replicates.

With one seed per model the seed draw is trivial and the interval reflects
test-input sampling alone (it then ignores training noise: read it as a lower
bound on the uncertainty).

Every function is deterministic: a ``numpy.random.Generator`` from ``seed``.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import scipy.stats
import threadpoolctl

__all__ = [
    "rate_ratio_interval",
    "difference_interval",
    "eps_at_half",
    "eps50_ratio_interval",
    "correlation_interval",
    "cluster_correlation_interval",
    "ratio_of_sums_interval",
    "median_interval",
    "verdict_robustness",
    "verdict_accuracy",
    "verdict_correlation",
]

# Replicates drawn per block: bounds the (block, N) count matrix's memory.
_BLOCK = 256


def _check_options(reps: Any, level: Any) -> None:
    if isinstance(reps, bool) or not isinstance(reps, numbers.Integral) or reps < 1:
        raise ValueError(f"reps must be an integer >= 1, got {reps!r}")
    if isinstance(level, bool) or not isinstance(level, numbers.Real) or not 0.0 < float(level) < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level!r}")


def _outcomes(values: Any, name: str, ndim: int) -> np.ndarray:
    a = np.asarray(values)
    if a.ndim != ndim or 0 in a.shape:
        raise ValueError(f"{name} must be a non-empty {ndim}-D array of outcomes, got shape {a.shape}")
    if a.dtype != bool:
        if not np.issubdtype(a.dtype, np.number):
            raise ValueError(f"{name} must hold booleans, got dtype {a.dtype}")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{name} holds non-finite values")
        if not np.all((a == 0) | (a == 1)):
            raise ValueError(f"{name} must hold booleans (0 or 1)")
    return a.astype(np.float32)  # exact for 0/1; see _weighted_means


def _pair(base: Any, model: Any, paired: bool, ndim: int) -> Tuple[np.ndarray, np.ndarray]:
    """Both sides as float ``(S, M, N)`` (``M = 1`` without an eps axis)."""
    b, m = _outcomes(base, "base", ndim), _outcomes(model, "model", ndim)
    if b.shape[1:] != m.shape[1:]:
        raise ValueError(f"model's shape {m.shape} does not match base's {b.shape} past the seed axis")
    if b.shape[-1] > 2 ** 24:  # keeps _weighted_means' float32 sums exact
        raise ValueError(f"at most 2**24 test inputs, got {b.shape[-1]}")
    if paired and b.shape[0] != m.shape[0]:
        raise ValueError(f"paired=True needs as many seeds in model ({m.shape[0]}) as in base ({b.shape[0]})")
    if ndim == 2:
        b, m = b[:, None, :], m[:, None, :]
    return b, m


def _counts(rng: np.random.Generator, rows: int, k: int) -> np.ndarray:
    """``(rows, k)`` counts of ``k`` draws with replacement from ``k`` items, per row."""
    idx = rng.integers(0, k, (rows, k)) + k * np.arange(rows)[:, None]
    return np.bincount(idx.ravel(), minlength=rows * k).reshape(rows, k).astype(np.float32)


def _weighted_means(x: np.ndarray, seed_counts: np.ndarray, input_counts: np.ndarray) -> np.ndarray:
    s, m, n = x.shape
    # 0/1 outcomes times integer counts that sum to N: every partial sum is an integer up to N <= 2**24
    # (checked in _pair), exact in float32, whose product is several times faster than float64's here.
    per_seed = (x.reshape(s * m, n) @ input_counts.T).reshape(s, m, -1).astype(np.float64)
    return np.einsum("rs,smr->rm", seed_counts, per_seed) / (s * n)


def _replicate_means(b: np.ndarray, m: np.ndarray, reps: int, seed: Any, paired: bool) -> Tuple[np.ndarray, np.ndarray]:
    """``(reps, M)`` resampled rates of both sides (see the module docstring)."""
    rng = np.random.default_rng(seed)
    out_b, out_m = np.empty((reps, b.shape[1])), np.empty((reps, m.shape[1]))
    # One BLAS thread: these products have a handful of rows, and on a loaded machine (a sweep training beside)
    # BLAS's thread hand-offs made each one up to 100 times slower (4 s instead of 0.4 s per interval).
    with threadpoolctl.threadpool_limits(1, user_api="blas"):
        for start in range(0, reps, _BLOCK):
            rows = min(_BLOCK, reps - start)
            cb = _counts(rng, rows, b.shape[0])
            cm = cb if paired else _counts(rng, rows, m.shape[0])
            cn = _counts(rng, rows, b.shape[2])
            out_b[start:start + rows] = _weighted_means(b, cb, cn)
            out_m[start:start + rows] = _weighted_means(m, cm, cn)
    return out_b, out_m


def _quantile(ordered: np.ndarray, q: float) -> float:
    # Linear interpolation written out, because numpy's turns (inf - x) * 0 into NaN.
    h = (ordered.size - 1) * q
    lo, hi = int(math.floor(h)), int(math.ceil(h))
    if lo == hi or ordered[lo] == ordered[hi]:
        return float(ordered[lo])
    return float(ordered[lo] + (h - lo) * (ordered[hi] - ordered[lo]))


def _interval(estimate: Optional[float], values: np.ndarray, level: float, **extra: Any) -> Dict[str, Any]:
    """Percentile interval of the replicates; NaN replicates (0/0) are dropped and counted."""
    keep = np.sort(values[~np.isnan(values)])
    low = _quantile(keep, (1 - level) / 2) if keep.size else None
    high = _quantile(keep, (1 + level) / 2) if keep.size else None
    return {"estimate": estimate, "low": low, "high": high, "level": float(level),
            "reps": int(keep.size), "skipped": int(values.size - keep.size), **extra}


def _divide(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return a / b


def rate_ratio_interval(base: Any, model: Any, reps: int = 2000, seed: Any = 0, level: float = 0.95,
                        paired: bool = True) -> Dict[str, Any]:
    """Ratio of two models' rates, ``mean(base) / mean(model)``, with a hierarchical bootstrap interval.

    ``base`` ``(S_base, N)`` and ``model`` ``(S_model, N)`` are boolean
    outcomes on the same ``N`` test inputs (e.g. wrong under the UAP: the
    ratio is then how many times fewer errors the model makes).  ``paired``
    needs ``S_base == S_model`` and pairs seed ``s`` of both.  A replicate with
    a zero model rate is ``inf`` (kept), one with both rates zero is dropped
    (``skipped``); ``estimate`` is None when the model's rate is 0.

    Returns ``{"estimate", "low", "high", "level", "reps" (replicates used), "skipped"}``.

    >>> base = np.zeros((2, 100), bool); base[:, :40] = True    # 40% wrong
    >>> model = np.zeros((2, 100), bool); model[:, :10] = True  # 10% wrong
    >>> out = rate_ratio_interval(base, model, reps=200)
    >>> round(out["estimate"], 6), out["low"] > 1, out["low"] <= 4 <= out["high"]
    (4.0, True, True)
    """
    _check_options(reps, level)
    b, m = _pair(base, model, paired, 2)
    rb, rm = _replicate_means(b, m, int(reps), seed, paired)
    mean_b, mean_m = float(b.mean(dtype=np.float64)), float(m.mean(dtype=np.float64))
    estimate = None if mean_m == 0 else mean_b / mean_m
    return _interval(estimate, _divide(rb[:, 0], rm[:, 0]), level)


def difference_interval(base: Any, model: Any, reps: int = 2000, seed: Any = 0, level: float = 0.95,
                        paired: bool = True) -> Dict[str, Any]:
    """Difference of two models' rates, ``mean(base) - mean(model)``, with a hierarchical bootstrap interval.

    Same inputs and resampling as :func:`rate_ratio_interval`.  With
    ``clean_correct`` outcomes, ``100 * difference`` is the model's clean
    accuracy cost in points.

    >>> base = np.ones((1, 50), bool)
    >>> model = np.ones((1, 50), bool); model[0, :5] = False
    >>> out = difference_interval(base, model, reps=100)
    >>> round(out["estimate"], 6), out["low"] > 0
    (0.1, True)
    """
    _check_options(reps, level)
    b, m = _pair(base, model, paired, 2)
    rb, rm = _replicate_means(b, m, int(reps), seed, paired)
    return _interval(float(b.mean(dtype=np.float64) - m.mean(dtype=np.float64)), rb[:, 0] - rm[:, 0], level)


def eps_at_half(eps: Sequence[float], uer: Sequence[float]) -> Optional[float]:
    """The eps at which a UER curve first reaches 0.5, linearly interpolated; None if never.

    Between the last point below 0.5, ``(e0, u0)``, and the first at or above,
    ``(e1, u1)``: ``e0 + (0.5 - u0) (e1 - e0) / (u1 - u0)``; ``e1`` itself when
    the first point is already at or above 0.5.

    >>> eps_at_half([0.1, 0.2, 0.3], [0.1, 0.3, 0.7]), eps_at_half([0.1, 0.2], [0.6, 0.9])
    (0.25, 0.1)
    >>> eps_at_half([0.1, 0.2], [0.1, 0.4]) is None
    True
    """
    eps, uer = list(eps), list(uer)
    if len(eps) != len(uer):
        raise ValueError(f"uer has {len(uer)} values, eps {len(eps)}")
    if not all(math.isfinite(float(v)) for v in eps + uer):
        raise ValueError("eps and uer must be finite")
    prev_e, prev_u = 0.0, None
    for e, u in zip(eps, uer):
        if u >= 0.5:
            if prev_u is None or prev_u >= 0.5:
                return e
            return prev_e + (0.5 - prev_u) * (e - prev_e) / (u - prev_u)
        prev_e, prev_u = e, u
    return None


def _eps50(eps: List[float], curve: Sequence[float]) -> Tuple[float, bool]:
    """(eps at 50% UER, censored): ``eps[-1]`` and True when the curve never reaches 0.5."""
    value = eps_at_half(eps, curve)
    return (float(eps[-1]), True) if value is None else (float(value), False)


def eps50_ratio_interval(eps: Any, base: Any, model: Any, reps: int = 2000, seed: Any = 0, level: float = 0.95,
                         paired: bool = True) -> Dict[str, Any]:
    """Ratio of the eps at 50% UER, ``eps50(model) / eps50(base)``, with a hierarchical bootstrap interval.

    ``base`` and ``model`` ``(S, E, N)`` are "wrong" outcomes over the grid
    ``eps`` ``(E,)``; a curve is the mean over seeds and inputs per eps, and
    :func:`eps_at_half` reads its eps50.  A curve that never reaches 0.5 is
    censored at ``eps[-1]`` (``censored_model``/``censored_base``, and
    ``censored`` if either): a censored model makes the ratio a LOWER bound
    (the model needs more than ``eps[-1]``), a censored base an upper bound;
    when both are, the estimate and interval are None.
    Replicates are resampled as in :func:`rate_ratio_interval`, the same input
    draw for every eps.

    >>> eps = [0.1, 0.2, 0.3]
    >>> base = np.zeros((1, 3, 10), bool); base[0, 0, :5] = True; base[0, 1:, :8] = True
    >>> model = np.zeros((1, 3, 10), bool); model[0, 1, :2] = True; model[0, 2, :5] = True
    >>> out = eps50_ratio_interval(eps, base, model, reps=50)
    >>> round(out["estimate"], 6), out["eps50_base"], round(out["eps50_model"], 6), out["censored"]
    (3.0, 0.1, 0.3, False)
    """
    _check_options(reps, level)
    grid = np.asarray(eps, np.float64)
    if grid.ndim != 1 or grid.size == 0 or not np.all(np.isfinite(grid)):
        raise ValueError(f"eps must be a non-empty 1-D array of finite values, got {np.asarray(eps)!r}")
    b, m = _pair(base, model, paired, 3)
    if b.shape[1] != grid.size:
        raise ValueError(f"base has {b.shape[1]} eps values on axis 1, eps has {grid.size}")
    grid_list = grid.tolist()
    e50_b, cens_b = _eps50(grid_list, b.mean(axis=(0, 2), dtype=np.float64))
    e50_m, cens_m = _eps50(grid_list, m.mean(axis=(0, 2), dtype=np.float64))
    rb, rm = _replicate_means(b, m, int(reps), seed, paired)
    reps_b = np.array([_eps50(grid_list, row)[0] for row in rb])
    reps_m = np.array([_eps50(grid_list, row)[0] for row in rm])
    if cens_b and cens_m:  # neither curve reaches 50%: the grid says nothing about the ratio
        return {"estimate": None, "low": None, "high": None, "level": level, "reps": 0, "skipped": int(reps),
                "eps50_base": None, "eps50_model": None, "censored": True, "censored_base": True,
                "censored_model": True}
    return _interval(None if e50_b == 0 else e50_m / e50_b, _divide(reps_m, reps_b), level,
                     eps50_base=e50_b, eps50_model=e50_m, censored=cens_b or cens_m,
                     censored_base=cens_b, censored_model=cens_m)


def _rowwise_pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    xc, yc = x - x.mean(axis=1, keepdims=True), y - y.mean(axis=1, keepdims=True)
    r = np.sum(xc * yc, axis=1) / np.sqrt(np.sum(xc * xc, axis=1) * np.sum(yc * yc, axis=1))
    return np.clip(r, -1.0, 1.0)  # rounding can leave |r| a hair above 1


def correlation_interval(x: Any, y: Any, reps: int = 2000, seed: Any = 0, level: float = 0.95) -> Dict[str, Any]:
    """Pearson and Spearman correlations of two 1-D samples, with percentile bootstrap intervals.

    Pearson ``r = cov(x, y) / (std(x) std(y))``; Spearman ``rho`` is Pearson
    of the average ranks.  A replicate resamples the ``M`` pairs ``(x_i, y_i)``
    with replacement; replicates where one side is constant (correlation
    undefined) are skipped and counted.  An estimate is None when a whole
    sample is constant.

    Returns ``{"pearson": {"estimate", "low", "high"}, "spearman": {...}, "n": M,
    "reps" (used), "skipped", "level"}``.

    >>> out = correlation_interval([1, 2, 3, 4, 5], [1, 4, 9, 16, 25], reps=100)
    >>> out["spearman"]["estimate"], round(out["pearson"]["estimate"], 4), out["n"]
    (1.0, 0.9811, 5)
    """
    _check_options(reps, level)
    xs, ys = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if xs.ndim != 1 or xs.size < 3:
        raise ValueError(f"x must be a 1-D sample of length >= 3, got shape {xs.shape}")
    if ys.shape != xs.shape:
        raise ValueError(f"y's shape {ys.shape} does not match x's {xs.shape}")
    for values, name in ((xs, "x"), (ys, "y")):
        if not np.all(np.isfinite(values)):
            raise ValueError(f"{name} holds non-finite values")
    return _resampled_correlations(xs, ys, lambda rng, b: rng.integers(0, xs.size, (b, xs.size)), reps, seed, level)


def _resampled_correlations(xs: np.ndarray, ys: np.ndarray, draw, reps: int, seed: Any,
                            level: float) -> Dict[str, Any]:
    """Pearson and Spearman of the 1-D samples ``xs``, ``ys`` with percentile intervals over replicates.

    ``draw(rng, b)`` gives ``b`` replicates as a ``(b, n)`` array of indices into the samples; replicates
    where one side is constant are skipped and counted.
    """
    constant = np.ptp(xs) == 0 or np.ptp(ys) == 0
    # The estimates by the replicates' own formula, so that identical samples give identical values.
    est_r = None if constant else float(_rowwise_pearson(xs[None], ys[None])[0])
    est_rho = None if constant else float(_rowwise_pearson(scipy.stats.rankdata(xs)[None], scipy.stats.rankdata(ys)[None])[0])
    rng = np.random.default_rng(seed)
    pear, spear = [], []
    for start in range(0, int(reps), _BLOCK):
        idx = draw(rng, min(_BLOCK, int(reps) - start))
        bx, by = xs[idx], ys[idx]
        ok = (np.ptp(bx, axis=1) > 0) & (np.ptp(by, axis=1) > 0)
        bx, by = bx[ok], by[ok]
        pear.append(_rowwise_pearson(bx, by))
        spear.append(_rowwise_pearson(scipy.stats.rankdata(bx, axis=1), scipy.stats.rankdata(by, axis=1)))
    pear_all, spear_all = np.concatenate(pear), np.concatenate(spear)
    r, rho = _interval(est_r, pear_all, level), _interval(est_rho, spear_all, level)
    keys = ("estimate", "low", "high")
    return {"pearson": {k: r[k] for k in keys}, "spearman": {k: rho[k] for k in keys}, "n": int(xs.size),
            "reps": int(pear_all.size), "skipped": int(reps) - int(pear_all.size), "level": float(level)}


def cluster_correlation_interval(x: Any, y: Any, reps: int = 2000, seed: Any = 0,
                                 level: float = 0.95) -> Dict[str, Any]:
    """Pearson and Spearman over points grouped in clusters, with a bootstrap that resamples whole clusters.

    ``x`` and ``y`` have shape ``(S, P, M)``: ``S`` training seeds, ``P``
    clusters (e.g. the unordered class pairs ``{i, j}``), ``M`` points per
    cluster and seed (e.g. the two directions ``i -> j`` and ``j -> i``, whose
    ``s_ij`` is the same number).  The estimates are the correlations of all
    ``S P M`` points.  A replicate draws ``S`` seeds and ``P`` clusters with
    replacement (one cluster draw for every seed: the clusters are the same
    classes in every model) and correlates the ``S P M`` points they hold, so
    points that are not independent (one pair's two directions, one model's
    pairs) never count as separate draws.  Replicates where one side is
    constant are skipped and counted.

    Returns the dict of :func:`correlation_interval` plus ``"clusters": P``
    and ``"seeds": S``.

    >>> x = [[[1, 1], [2, 2], [3, 3], [4, 4]]]
    >>> out = cluster_correlation_interval(x, [[[1, 2], [3, 4], [5, 6], [7, 8]]], reps=50)
    >>> round(out["spearman"]["estimate"], 3), out["n"], out["clusters"], out["seeds"]
    (0.976, 8, 4, 1)
    """
    _check_options(reps, level)
    xs, ys = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if xs.ndim != 3 or xs.shape[1] < 3 or xs.shape[0] < 1 or xs.shape[2] < 1:
        raise ValueError(f"x must have shape (seeds, clusters >= 3, points), got {xs.shape}")
    if ys.shape != xs.shape:
        raise ValueError(f"y's shape {ys.shape} does not match x's {xs.shape}")
    for values, name in ((xs, "x"), (ys, "y")):
        if not np.all(np.isfinite(values)):
            raise ValueError(f"{name} holds non-finite values")
    S, P, M = xs.shape

    def draw(rng, b):  # flat indices of the points of S drawn seeds x P drawn clusters
        si, pi = rng.integers(0, S, (b, S)), rng.integers(0, P, (b, P))
        return ((si[:, :, None, None] * P + pi[:, None, :, None]) * M + np.arange(M)).reshape(b, -1)

    out = _resampled_correlations(xs.reshape(-1), ys.reshape(-1), draw, reps, seed, level)
    return {**out, "clusters": int(P), "seeds": int(S)}


def _sample(values: Any, name: str) -> np.ndarray:
    try:
        a = np.asarray(values, np.float64)
    except (TypeError, ValueError):
        a = np.zeros(0)
    if a.ndim != 1 or a.size == 0 or not np.all(np.isfinite(a)):
        raise ValueError(f"{name} must be a non-empty 1-D sample of finite values, got shape {a.shape}")
    return a


def ratio_of_sums_interval(numerator: Any, denominator: Any, reps: int = 2000, seed: Any = 0,
                           level: float = 0.95) -> Dict[str, Any]:
    """``sum_n a_n / sum_n b_n`` over ``N`` paired per-input values, with a percentile bootstrap interval.

    ``numerator`` ``a`` and ``denominator`` ``b`` are ``(N,)`` (e.g. per test
    input ``||J_n v||^2`` and ``||f(x_n + v) - f(x_n)||^2``).  A replicate
    draws ``N`` inputs with replacement (counts ``c``, the same draw for both
    sides) and takes ``sum_n c_n a_n / sum_n c_n b_n``; a replicate with a zero
    denominator is dropped (``skipped``).  A quantity fixed by the whole set
    is held fixed by passing it spread evenly: ``b_n = B / N`` for every ``n``.
    ``estimate`` is None when ``sum b = 0``.  Returns ``{"estimate", "low", "high", "level", "reps" (used), "skipped"}``.

    >>> out = ratio_of_sums_interval([1.0, 2.0, 3.0, 4.0], [2.0, 2.0, 2.0, 2.0], reps=200)
    >>> out["estimate"], out["low"] < 1.25 < out["high"]
    (1.25, True)
    """
    _check_options(reps, level)
    a, b = _sample(numerator, "numerator"), _sample(denominator, "denominator")
    if a.shape != b.shape:
        raise ValueError(f"denominator's shape {b.shape} does not match numerator's {a.shape}")
    rng = np.random.default_rng(seed)
    ratios = []
    with threadpoolctl.threadpool_limits(1, user_api="blas"):  # see _replicate_means
        for start in range(0, int(reps), _BLOCK):
            counts = _counts(rng, min(_BLOCK, int(reps) - start), a.size).astype(np.float64)
            ratios.append(np.where(counts @ b > 0, _divide(counts @ a, counts @ b), np.nan))
    total = float(np.sum(b))
    return _interval(None if total == 0 else float(np.sum(a)) / total, np.concatenate(ratios), level)


def median_interval(values: Any, reps: int = 2000, seed: Any = 0, level: float = 0.95) -> Dict[str, Any]:
    """The median of a 1-D sample (e.g. one value per model) with a percentile bootstrap interval.

    A replicate resamples the ``M`` values with replacement and takes their median (one value: ``[v, v]``).

    >>> out = median_interval([0.2, 0.3, 0.4, 0.5, 0.9], reps=200)
    >>> out["estimate"], 0.2 <= out["low"] <= 0.4 <= out["high"] <= 0.9
    (0.4, True)
    """
    _check_options(reps, level)
    xs = _sample(values, "values")
    rng = np.random.default_rng(seed)
    meds = [np.median(xs[rng.integers(0, xs.size, (min(_BLOCK, int(reps) - start), xs.size))], axis=1)
            for start in range(0, int(reps), _BLOCK)]
    return _interval(float(np.median(xs)), np.concatenate(meds), level, n=int(xs.size))


def _measured(*values: Any) -> bool:
    return all(v is not None and math.isfinite(float(v)) for v in values)


def verdict_robustness(ci_low: Optional[float], ci_high: Optional[float], target: float = 4.0) -> str:
    """Verdict on "up to ``target`` times more robust" from a robustness ratio's interval.

    "holds" if ``high >= target`` and ``low > 1``; "holds partly" if only
    ``low > 1`` (more robust, significantly, but ``target`` is excluded);
    "does not hold" otherwise; "not measured" when a bound is missing.

    >>> verdict_robustness(2.5, 5.0), verdict_robustness(1.2, 2.0), verdict_robustness(0.8, 6.0)
    ('holds', 'holds partly', 'does not hold')
    """
    if not (_measured(ci_low) and (_measured(ci_high) or ci_high == math.inf)):
        return "not measured"
    if ci_low > 1 and ci_high >= target:
        return "holds"
    return "holds partly" if ci_low > 1 else "does not hold"


def verdict_accuracy(cost_low: Optional[float], cost_high: Optional[float], tolerance_points: float = 1.0) -> str:
    """Verdict on "clean accuracy is maintained" from the interval of the accuracy cost in points.

    "holds" if ``high <= tolerance`` (a cost above it is excluded); "holds
    partly" if ``low <= tolerance < high`` (not excluded either way); "does not
    hold" if ``low > tolerance``; "not measured" when a bound is missing.

    >>> verdict_accuracy(-0.5, 0.8), verdict_accuracy(0.2, 1.6), verdict_accuracy(1.5, 3.0)
    ('holds', 'holds partly', 'does not hold')
    """
    if not _measured(cost_low, cost_high):
        return "not measured"
    if cost_high <= tolerance_points:
        return "holds"
    return "holds partly" if cost_low <= tolerance_points else "does not hold"


def verdict_correlation(spearman_low: Optional[float], spearman_estimate: Optional[float], high: float = 0.7) -> str:
    """Verdict on "correlates highly" from a Spearman estimate and its interval's low end.

    "holds" if ``estimate >= high`` and ``low > 0``; "holds partly" if only
    ``low > 0`` (a positive correlation, not shown high); "does not hold"
    otherwise; "not measured" when a value is missing.

    >>> verdict_correlation(0.4, 0.8), verdict_correlation(0.1, 0.5), verdict_correlation(-0.2, 0.9)
    ('holds', 'holds partly', 'does not hold')
    """
    if not _measured(spearman_low, spearman_estimate):
        return "not measured"
    if spearman_low > 0 and spearman_estimate >= high:
        return "holds"
    return "holds partly" if spearman_low > 0 else "does not hold"
