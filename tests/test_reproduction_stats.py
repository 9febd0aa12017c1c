"""benchmarks/reproduction/stats.py: bootstrap intervals, eps at 50% UER, correlations, verdict rules."""

import doctest
import math

import numpy as np
import pytest

from benchmarks.reproduction import stats

REPS = 200


def outcomes(rates, n, seed=0):
    """(S, n) booleans with exactly round(rate * n) True per row, at random positions."""
    rng = np.random.default_rng(seed)
    out = np.zeros((len(rates), n), bool)
    for s, rate in enumerate(rates):
        out[s, rng.permutation(n)[: int(round(rate * n))]] = True
    return out


def width(out):
    return out["high"] - out["low"]


def test_doctests():
    assert doctest.testmod(stats).failed == 0


def test_known_ratio_is_estimated_and_significant():
    base, model = outcomes([0.4], 5000, 1), outcomes([0.1], 5000, 2)
    out = stats.rate_ratio_interval(base, model, reps=REPS)
    assert out["estimate"] == pytest.approx(4.0)
    assert 1 < out["low"] < 4 < out["high"] < 5
    assert out["reps"] == REPS and out["skipped"] == 0 and out["level"] == 0.95


def test_interval_narrows_with_more_inputs():
    small = stats.rate_ratio_interval(outcomes([0.4], 500, 1), outcomes([0.1], 500, 2), reps=REPS)
    large = stats.rate_ratio_interval(outcomes([0.4], 20000, 1), outcomes([0.1], 20000, 2), reps=REPS)
    assert width(large) < 0.5 * width(small)


def test_paired_bootstrap_cancels_a_shared_seed_effect():
    # The seed moves both models' rates together: pairing removes that variation from the ratio.
    rates = [0.05, 0.2, 0.4, 0.6, 0.8]
    base = outcomes(rates, 2000, 1)
    model = outcomes([r / 2 for r in rates], 2000, 2)
    paired = stats.rate_ratio_interval(base, model, reps=REPS, paired=True)
    unpaired = stats.rate_ratio_interval(base, model, reps=REPS, paired=False)
    assert paired["estimate"] == unpaired["estimate"] == pytest.approx(2.0)
    assert paired["low"] <= 2.0 <= paired["high"]
    assert width(paired) < 0.5 * width(unpaired)


def test_paired_needs_equal_seed_counts_unpaired_does_not():
    base, model = outcomes([0.4, 0.5], 100), outcomes([0.1], 100)
    with pytest.raises(ValueError, match="paired"):
        stats.rate_ratio_interval(base, model, reps=REPS)
    assert stats.rate_ratio_interval(base, model, reps=REPS, paired=False)["estimate"] == pytest.approx(4.5)


def test_same_seed_same_output_other_seed_differs():
    base, model = outcomes([0.4, 0.3], 300, 1), outcomes([0.1, 0.2], 300, 2)
    a = stats.rate_ratio_interval(base, model, reps=REPS, seed=3)
    assert a == stats.rate_ratio_interval(base, model, reps=REPS, seed=3)
    assert a != stats.rate_ratio_interval(base, model, reps=REPS, seed=4)
    e = [0.1, 0.2]
    b3, m3 = np.stack([base, base], 1), np.stack([model, base], 1)
    assert stats.eps50_ratio_interval(e, b3, m3, reps=REPS, seed=3) == stats.eps50_ratio_interval(e, b3, m3, reps=REPS, seed=3)


def test_zero_model_rate_gives_no_estimate_and_infinite_high():
    out = stats.rate_ratio_interval(outcomes([0.4], 100), np.zeros((1, 100), bool), reps=REPS)
    assert out["estimate"] is None and out["high"] == math.inf
    both_zero = stats.rate_ratio_interval(np.zeros((1, 10), bool), np.zeros((1, 10), bool), reps=REPS)
    assert both_zero["estimate"] is None and both_zero["reps"] == 0 and both_zero["skipped"] == REPS
    assert both_zero["low"] is None and both_zero["high"] is None


def test_difference_interval_accuracy_cost():
    base, model = outcomes([0.90, 0.90], 4000, 1), outcomes([0.85, 0.85], 4000, 2)
    out = stats.difference_interval(base, model, reps=REPS)
    assert out["estimate"] == pytest.approx(0.05)
    assert 0 < out["low"] < 0.05 < out["high"] < 0.1
    same = stats.difference_interval(base, base, reps=REPS)
    assert same["estimate"] == 0 and same["low"] == same["high"] == 0  # paired and identical: no variation


@pytest.mark.parametrize("uer,expected", [
    ([0.1, 0.3, 0.7], 0.25),   # interpolated between eps 0.2 and 0.3
    ([0.6, 0.8, 0.9], 0.1),    # already above at the first eps
    ([0.1, 0.2, 0.4], None),   # never reaches 50%
    ([0.1, 0.5, 0.9], 0.2),    # exactly at a grid point
    ([0.2, 0.6, 0.9], 0.175),  # interpolated from the first point, not from 0
])
def test_eps_at_half(uer, expected):
    value = stats.eps_at_half([0.1, 0.2, 0.3], uer)
    assert value == (pytest.approx(expected) if expected is not None else None)


def test_eps_at_half_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="uer"):
        stats.eps_at_half([0.1, 0.2], [0.5])


def curves(rates_per_eps, n, seed=0):
    """(1, E, n) outcomes, one rate per eps."""
    return np.stack([outcomes([r], n, seed + i)[0] for i, r in enumerate(rates_per_eps)])[None]


def test_eps50_ratio_and_censoring():
    eps = [0.1, 0.2, 0.3, 0.4]
    base, model = curves([0.3, 0.7, 0.9, 0.95], 1000), curves([0.1, 0.3, 0.5, 0.8], 1000, 10)
    out = stats.eps50_ratio_interval(eps, base, model, reps=REPS)
    assert out["eps50_base"] == pytest.approx(0.15) and out["eps50_model"] == pytest.approx(0.3)
    assert out["estimate"] == pytest.approx(2.0) and out["low"] <= 2.0 <= out["high"]
    assert not out["censored"]
    never = stats.eps50_ratio_interval(eps, base, curves([0.05, 0.1, 0.2, 0.3], 1000, 20), reps=REPS)
    assert never["censored"] and never["censored_model"] and not never["censored_base"]
    assert never["eps50_model"] == 0.4 and never["estimate"] == pytest.approx(0.4 / 0.15)  # a lower bound


def test_correlation_of_a_monotone_relation():
    x = np.linspace(0.0, 1.0, 20)
    out = stats.correlation_interval(x, np.exp(5 * x), reps=REPS)
    assert out["spearman"]["estimate"] == pytest.approx(1.0)
    assert out["spearman"]["low"] == pytest.approx(1.0)
    assert out["pearson"]["estimate"] < 0.95 and out["n"] == 20 and out["reps"] == REPS
    noise = stats.correlation_interval(x, np.random.default_rng(0).random(20), reps=REPS)
    assert noise["spearman"]["low"] < 0 < noise["spearman"]["high"]


def test_correlation_skips_constant_replicates():
    out = stats.correlation_interval([1.0, 1.0, 2.0], [3.0, 3.0, 5.0], reps=REPS)
    assert out["skipped"] > 0 and out["reps"] + out["skipped"] == REPS
    constant = stats.correlation_interval([1.0, 1.0, 1.0], [1.0, 2.0, 3.0], reps=REPS)
    assert constant["pearson"]["estimate"] is None and constant["reps"] == 0


@pytest.mark.parametrize("call,match", [
    (lambda: stats.rate_ratio_interval(np.ones(5, bool), np.ones((1, 5), bool)), "base"),
    (lambda: stats.rate_ratio_interval(np.ones((1, 5), bool), np.ones((1, 6), bool)), "model"),
    (lambda: stats.rate_ratio_interval(np.ones((1, 0), bool), np.ones((1, 0), bool)), "base"),
    (lambda: stats.rate_ratio_interval(np.full((1, 3), np.nan), np.ones((1, 3))), "base"),
    (lambda: stats.rate_ratio_interval(np.ones((1, 3)), np.full((1, 3), 2.0)), "model"),
    (lambda: stats.rate_ratio_interval(np.ones((1, 3)), np.ones((1, 3)), level=1.0), "level"),
    (lambda: stats.difference_interval(np.ones((1, 3)), np.ones((1, 3)), level=0), "level"),
    (lambda: stats.difference_interval(np.ones((1, 3)), np.ones((1, 3)), reps=0), "reps"),
    (lambda: stats.eps50_ratio_interval([0.1], np.ones((1, 2, 3)), np.ones((1, 2, 3))), "eps"),
    (lambda: stats.eps50_ratio_interval([0.1, np.inf], np.ones((1, 2, 3)), np.ones((1, 2, 3))), "eps"),
    (lambda: stats.eps50_ratio_interval([0.1, 0.2], np.ones((1, 3)), np.ones((1, 3))), "base"),
    (lambda: stats.correlation_interval([1, 2], [1, 2]), "x"),
    (lambda: stats.correlation_interval([1, 2, 3], [1, 2]), "y"),
    (lambda: stats.correlation_interval([1, 2, 3], [1, 2, np.nan]), "y"),
    (lambda: stats.correlation_interval([1, 2, 3], [1, 2, 3], level=1.5), "level"),
    (lambda: stats.cluster_correlation_interval(np.ones((1, 2, 2)), np.ones((1, 2, 2))), "x"),
    (lambda: stats.cluster_correlation_interval(np.ones((6,)), np.ones((6,))), "x"),
    (lambda: stats.cluster_correlation_interval(np.ones((1, 3, 2)), np.ones((1, 3, 1))), "y"),
    (lambda: stats.cluster_correlation_interval(np.ones((1, 3, 2)), np.full((1, 3, 2), np.nan)), "y"),
])
def test_bad_inputs_raise_naming_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("low,high,expected", [
    (2.0, 4.5, "holds"), (1.5, 3.0, "holds partly"), (0.9, 5.0, "does not hold"),
    (1.1, math.inf, "holds"), (None, 3.0, "not measured")])
def test_verdict_robustness(low, high, expected):
    assert stats.verdict_robustness(low, high) == expected


@pytest.mark.parametrize("low,high,expected", [
    (-0.3, 0.9, "holds"), (0.5, 1.5, "holds partly"), (1.2, 2.0, "does not hold"), (0.1, None, "not measured")])
def test_verdict_accuracy(low, high, expected):
    assert stats.verdict_accuracy(low, high) == expected


@pytest.mark.parametrize("low,estimate,expected", [
    (0.3, 0.75, "holds"), (0.1, 0.5, "holds partly"), (-0.1, 0.8, "does not hold"), (None, 0.9, "not measured")])
def test_verdict_correlation(low, estimate, expected):
    assert stats.verdict_correlation(low, estimate) == expected


def test_eps50_ratio_is_undefined_when_neither_curve_reaches_half():
    eps = [0.1, 0.2]
    low = np.zeros((1, 2, 20), bool)
    low[0, :, :3] = True
    out = stats.eps50_ratio_interval(eps, low, low.copy(), reps=20)
    assert out["estimate"] is None and out["low"] is None and out["censored_base"] and out["censored_model"]


def _explicit_replicates(b, m, reps, seed, paired):
    """The replicates by literal resampling in float64: the same draws, indexed instead of counted."""
    rng = np.random.default_rng(seed)
    out_b, out_m = [], []
    for start in range(0, reps, stats._BLOCK):
        rows = min(stats._BLOCK, reps - start)
        sb = rng.integers(0, b.shape[0], (rows, b.shape[0]))
        sm = sb if paired else rng.integers(0, m.shape[0], (rows, m.shape[0]))
        n = rng.integers(0, b.shape[2], (rows, b.shape[2]))
        for r in range(rows):
            out_b.append(b[sb[r]][:, :, n[r]].astype(np.float64).mean(axis=(0, 2)))
            out_m.append(m[sm[r]][:, :, n[r]].astype(np.float64).mean(axis=(0, 2)))
    return np.array(out_b), np.array(out_m)


@pytest.mark.parametrize("paired", [True, False])
def test_replicates_equal_explicit_resampling_in_float64(paired):
    # reps spans two blocks, the second partial; 3 eps values; float32 products must stay exact.
    rng = np.random.default_rng(5)
    b = rng.random((3, 3, 700)) < 0.4
    m = rng.random((3 if paired else 2, 3, 700)) < 0.2
    want_b, want_m = _explicit_replicates(b, m, 300, 7, paired)
    got_b, got_m = stats._replicate_means(*stats._pair(b, m, paired, 3), 300, 7, paired)
    np.testing.assert_allclose(got_b, want_b, rtol=0, atol=1e-12)
    np.testing.assert_allclose(got_m, want_m, rtol=0, atol=1e-12)


def test_cluster_bootstrap_counts_a_cluster_once():
    """Each of 20 clusters holds the same point twice (a class pair's two directions): the estimate is the
    points' correlation, and the interval is as wide as the one over the 20 distinct points, where the
    point-level bootstrap over 40 points would be about sqrt(2) too narrow."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=20)
    y = x + rng.normal(size=20)
    twice = lambda v: np.repeat(v[None, :, None], 2, axis=2)  # (1 seed, 20 clusters, 2 points)
    clustered = stats.cluster_correlation_interval(twice(x), twice(y), reps=2000, seed=1)
    distinct = stats.correlation_interval(x, y, reps=2000, seed=1)
    points = stats.correlation_interval(np.repeat(x, 2), np.repeat(y, 2), reps=2000, seed=1)
    assert clustered["n"] == 40 and clustered["clusters"] == 20 and clustered["seeds"] == 1
    assert clustered["pearson"]["estimate"] == pytest.approx(points["pearson"]["estimate"], abs=1e-12)
    w = lambda out: out["pearson"]["high"] - out["pearson"]["low"]
    assert w(clustered) == pytest.approx(w(distinct), rel=0.15)
    assert w(points) < 0.85 * w(clustered)


def test_cluster_bootstrap_resamples_seeds():
    """Two seeds whose relations disagree: resampling seeds widens the interval beyond one seed's."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(2, 30, 2))
    y = np.stack([x[0] + 0.3 * rng.normal(size=(30, 2)), -x[1] + 0.3 * rng.normal(size=(30, 2))])
    both = stats.cluster_correlation_interval(x, y, reps=1000, seed=0)
    one = stats.cluster_correlation_interval(x[:1], y[:1], reps=1000, seed=0)
    assert both["seeds"] == 2 and abs(both["spearman"]["estimate"]) < 0.3
    assert both["spearman"]["low"] < -0.5 and both["spearman"]["high"] > 0.5  # a draw of one seed twice
    assert one["spearman"]["low"] > 0.8
