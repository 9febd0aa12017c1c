"""The summary dict (jacuap.metrics.summary) and the correlations across models."""

import json

import jax
import numpy as np
import pytest
import scipy.stats

from jacuap import metrics


@pytest.fixture(scope="module")
def digits(trained_digits):
    """The shared trained MLP (conftest.py); its 397 held-out inputs."""
    d = trained_digits
    return dict(apply_fn=d["apply_fn"], params=d["params"], x=d["xe"], y=d["ye"])


def test_pearson_and_spearman_match_scipy():
    rng = np.random.RandomState(0)
    a = rng.randn(30)
    b = 0.5 * a + rng.randn(30)
    assert metrics.pearson(a, b) == pytest.approx(scipy.stats.pearsonr(a, b)[0], rel=1e-10)
    assert metrics.spearman(a, b) == pytest.approx(scipy.stats.spearmanr(a, b)[0], rel=1e-10)
    # Ties are averaged.
    a = np.array([1, 2, 2, 3, 3, 3, 7, 0, 2])
    b = np.array([5, 1, 1, 4, 2, 2, 9, 0, 0])
    assert metrics.spearman(a, b) == pytest.approx(scipy.stats.spearmanr(a, b)[0], rel=1e-10)
    assert np.isnan(metrics.pearson([1, 1, 1], [1, 2, 3]))


def test_jacobian_metrics_is_json_and_consistent(digits):
    d = digits
    x, y = d["x"][:120], d["y"][:120]
    out = metrics.jacobian_metrics(d["apply_fn"], d["params"], x, y, jax.random.PRNGKey(0), num_pairs_inputs=40)
    json.dumps(out, allow_nan=False)
    assert out["num_inputs"] == 120 and out["num_pairs_inputs"] == 40
    assert out["mean_frobenius_sq"] == pytest.approx(metrics.mean_frobenius_sq(d["apply_fn"], d["params"], x), rel=1e-5)
    # The chain of bounds: sigma(J_X)^2 <= sum sigma_i^2 <= sum ||J_i||_F^2.
    assert out["stacked_spectral_norm"] ** 2 <= 120 * out["mean_spectral_norm_sq"] * (1 + 1e-5)
    assert out["mean_spectral_norm_sq"] <= out["mean_frobenius_sq"] * (1 + 1e-5)
    assert 1 / 120 <= out["universality_ratio"] <= 1
    assert 0.5 <= out["shared_perturbation_strength"] <= 1
    assert -1 <= out["jacobian_cosine"] <= 1 and 0 <= out["gram_cosine"] <= 1
    table = out["shared_perturbation_strength_by_class"]
    assert len(table) == 10 and all(len(row) == 10 for row in table)


def test_correlations_refuse_mismatched_or_tiny_samples():
    for corr in (metrics.pearson, metrics.spearman):
        with pytest.raises(ValueError):
            corr([1.0, 2.0, 3.0], [1.0, 2.0])
        with pytest.raises(ValueError):
            corr([1.0], [2.0])
        assert np.isnan(corr([1, 2, 3], [4, 4, 4]))


def test_jacobian_metrics_needs_a_key(digits):
    d = digits
    with pytest.raises(ValueError, match="key"):
        metrics.jacobian_metrics(d["apply_fn"], d["params"], d["x"][:10], d["y"][:10], None)
