"""Metrics against brute-force float64 references: rates, bounds, pairwise sharing, correlations."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

import jacuap
from jacuap import jacobian, metrics

SHAPE = (8, 8, 1)


@pytest.fixture(scope="module")
def digits(trained_digits):
    """The shared trained MLP (conftest.py); its 397 held-out inputs."""
    d = trained_digits
    return dict(apply_fn=d["apply_fn"], params=d["params"], x=d["xe"], y=d["ye"])


# --------------------------------------------------------------------------
# Predictions and rates.
# --------------------------------------------------------------------------


def test_predict_pads_the_last_batch(digits):
    d = digits
    expected = np.argmax(d["apply_fn"](d["params"], d["x"]), axis=-1)
    # 397 inputs in batches of 100: the last batch is padded, one compiled step.
    np.testing.assert_array_equal(metrics.predict(d["apply_fn"], d["params"], d["x"], batch_size=100), expected)
    size = metrics._predict_batch._cache_size()
    np.testing.assert_array_equal(
        metrics.predict(d["apply_fn"], d["params"], d["x"][:250], batch_size=100), expected[:250]
    )
    assert metrics._predict_batch._cache_size() == size
    acc = metrics.accuracy(d["apply_fn"], d["params"], d["x"], d["y"], batch_size=100)
    assert acc == pytest.approx(np.mean(expected == np.asarray(d["y"]))) and acc > 0.9


def test_rates_at_zero_and_under_a_perturbation(digits):
    d = digits
    zero = jnp.zeros(SHAPE)
    acc = metrics.accuracy(d["apply_fn"], d["params"], d["x"], d["y"])
    assert metrics.universal_evasion_rate(d["apply_fn"], d["params"], d["x"], d["y"], zero) == pytest.approx(1 - acc)
    assert metrics.fooling_rate(d["apply_fn"], d["params"], d["x"], zero) == 0.0
    v = 0.4 * jnp.sign(jax.random.normal(jax.random.PRNGKey(0), SHAPE))
    perturbed = np.argmax(d["apply_fn"](d["params"], jnp.clip(d["x"] + v, 0, 1)), axis=-1)
    clean = np.argmax(d["apply_fn"](d["params"], d["x"]), axis=-1)
    uer = metrics.universal_evasion_rate(d["apply_fn"], d["params"], d["x"], d["y"], v, batch_size=100)
    assert uer == pytest.approx(np.mean(perturbed != np.asarray(d["y"])))
    fool = metrics.fooling_rate(d["apply_fn"], d["params"], d["x"], v, batch_size=100)
    assert fool == pytest.approx(np.mean(perturbed != clean)) and fool > 0


# --------------------------------------------------------------------------
# Bounds.
# --------------------------------------------------------------------------


def test_mean_frobenius_sq_is_exact(digits):
    d = digits
    jac = jacobian.input_jacobian(d["apply_fn"], d["params"], d["x"])
    expected = float(jnp.mean(jnp.sum(jnp.square(jac.reshape(jac.shape[0], -1)), axis=1)))
    got = metrics.mean_frobenius_sq(d["apply_fn"], d["params"], d["x"], batch_size=128)
    assert got == pytest.approx(expected, rel=1e-5)


def test_first_order_uap_bound():
    assert metrics.first_order_uap_bound(2.0, 0.5, "l2", 64) == pytest.approx(4.0 * 0.25)
    assert metrics.first_order_uap_bound(2.0, 0.5, "linf", 64) == pytest.approx(4.0 * 0.25 * 64)
    with pytest.raises(ValueError):
        metrics.first_order_uap_bound(2.0, 0.5, "l1", 64)


def _dense_jacobians(apply_fn, params, x):
    """``(N, K, d)`` by jacfwd of the single-example function, in NumPy float64."""
    single = lambda xi: apply_fn(params, xi[None])[0]
    jac = jax.jit(jax.vmap(jax.jacfwd(single)))(x)
    return np.asarray(jac).reshape(x.shape[0], jac.shape[1], -1)


def test_universality_ratio_matches_dense_svd(digits):
    d = digits
    with jax.enable_x64(True):
        params = jax.tree_util.tree_map(lambda p: jnp.asarray(p, jnp.float64), d["params"])
        x = jnp.asarray(d["x"][:7], jnp.float64)
        jac = _dense_jacobians(d["apply_fn"], params, x)
        n, k = jac.shape[:2]
        stacked = np.linalg.svd(jac.reshape(n * k, -1), compute_uv=False)[0]
        per = np.array([np.linalg.svd(j, compute_uv=False)[0] for j in jac])
        expected = stacked**2 / np.sum(per**2)
        got = metrics.universality_ratio(d["apply_fn"], params, x, batch_size=3)
        assert 1.0 / n <= got <= 1.0
        np.testing.assert_allclose(got, expected, rtol=1e-8)
        np.testing.assert_allclose(metrics.per_example_spectral_norms(d["apply_fn"], params, x, 3), per, rtol=1e-8)
        # The power method (used when d > 4096) converges to the same value.
        power = metrics.universality_ratio(d["apply_fn"], params, x, batch_size=3, num_iters=300, method="power")
        np.testing.assert_allclose(power, expected, rtol=1e-6)


def test_universality_ratio_extremes():
    with jax.enable_x64(True):
        # A linear model: every input has the same Jacobian, ratio 1.
        w = jnp.array([[1.0, 2.0, 0.0, -1.0], [0.5, 0.0, 1.0, 1.0]])
        linear = lambda p, x: x @ w.T
        x = jax.random.uniform(jax.random.PRNGKey(0), (5, 4), jnp.float64)
        assert metrics.universality_ratio(linear, None, x) == pytest.approx(1.0)
        # f(a, b) = <a, b> at a = 0, b = e_i: J(x_i) = [e_i^T, 0], orthogonal
        # rank-one Jacobians of equal norm, ratio 1/N.
        bilinear = lambda p, x: jnp.sum(x[:, :4] * x[:, 4:], axis=1, keepdims=True)
        x = jnp.concatenate([jnp.zeros((4, 4)), jnp.eye(4)], axis=1)
        assert metrics.universality_ratio(bilinear, None, x) == pytest.approx(1.0 / 4)


# --------------------------------------------------------------------------
# Pairwise metrics.
# --------------------------------------------------------------------------


def _dense_strength(jac):
    n = jac.shape[0]
    top = lambda m: np.linalg.svd(m, compute_uv=False)[0]
    out = np.empty((n, n))
    for i in range(n):
        for j in range(n):
            out[i, j] = top(np.concatenate([jac[i], jac[j]])) ** 2 / (top(jac[i]) ** 2 + top(jac[j]) ** 2)
    return out


def _dense_cosines(jac):
    n = jac.shape[0]
    fro = np.empty((n, n))
    gram = np.empty((n, n))
    for i in range(n):
        for j in range(n):
            fro[i, j] = np.sum(jac[i] * jac[j]) / (np.linalg.norm(jac[i]) * np.linalg.norm(jac[j]))
            gram[i, j] = np.linalg.norm(jac[i] @ jac[j].T) ** 2 / (
                np.linalg.norm(jac[i] @ jac[i].T) * np.linalg.norm(jac[j] @ jac[j].T)
            )
    return fro, gram


def test_strength_of_identical_and_scaled_jacobians():
    jac = np.random.RandomState(0).randn(1, 3, 20)
    jac = np.concatenate([jac, jac, -2.5 * jac])
    s = np.asarray(metrics.shared_perturbation_strength_from_jacobians(jac))
    np.testing.assert_allclose(s, 1.0, rtol=1e-5)
    np.testing.assert_allclose(metrics.jacobian_cosine_from_jacobians(jac)[0], [1, 1, -1], rtol=1e-5)
    np.testing.assert_allclose(metrics.gram_cosine_from_jacobians(jac), 1.0, rtol=1e-5)


def test_strength_of_rank_one_jacobians_is_half_one_plus_abs_cos():
    rng = np.random.RandomState(1)
    d, k = 12, 3
    directions = rng.randn(6, d)
    # Make direction 2 exactly orthogonal to direction 0.
    directions[2] -= directions[2].dot(directions[0]) / directions[0].dot(directions[0]) * directions[0]
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    # Rank one, equal Frobenius norm: J_i = c u_i^T with a shared output vector c.
    c = rng.randn(k)
    c /= np.linalg.norm(c)
    jac = np.einsum("k,nd->nkd", c, directions) * 1.7
    cos = directions @ directions.T
    s = np.asarray(metrics.shared_perturbation_strength_from_jacobians(jac))
    np.testing.assert_allclose(s, (1 + np.abs(cos)) / 2, atol=1e-5)
    assert s[0, 2] == pytest.approx(0.5, abs=1e-5)
    # Rank one with DIFFERENT output vectors: the strength still depends only on the input directions.
    outs = rng.randn(6, k)
    outs /= np.linalg.norm(outs, axis=1, keepdims=True)
    jac2 = np.einsum("nk,nd->nkd", outs, directions)
    np.testing.assert_allclose(
        metrics.shared_perturbation_strength_from_jacobians(jac2), (1 + np.abs(cos)) / 2, atol=1e-5
    )
    # Frobenius cosine: the product of the output and input cosines; Gram
    # cosine (J_i J_j^T = cos_ij o_i o_j^T): the input cosine squared only.
    np.testing.assert_allclose(metrics.jacobian_cosine_from_jacobians(jac2), (outs @ outs.T) * cos, atol=1e-5)
    np.testing.assert_allclose(metrics.gram_cosine_from_jacobians(jac2), cos**2, atol=1e-5)


@pytest.mark.parametrize("seed,n,k,d", [(0, 5, 3, 7), (1, 9, 4, 30), (2, 4, 6, 5)])
def test_pairwise_metrics_match_dense_float64(seed, n, k, d):
    jac = np.random.RandomState(seed).randn(n, k, d)
    # Give some inputs shared structure so values spread over the range.
    jac[1] = 0.7 * jac[0] + 0.3 * jac[1]
    with jax.enable_x64(True):
        got = metrics.pairwise_metrics_from_jacobians(jnp.asarray(jac), row_block=2)
        strength = np.asarray(got["shared_perturbation_strength"])
        np.testing.assert_allclose(strength, _dense_strength(jac), rtol=1e-10)
        fro, gram = _dense_cosines(jac)
        np.testing.assert_allclose(got["jacobian_cosine"], fro, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(got["gram_cosine"], gram, rtol=1e-10)
    assert np.all(strength >= 0.5) and np.all(strength <= 1.0)
    np.testing.assert_allclose(strength, strength.T)
    np.testing.assert_allclose(np.diag(strength), 1.0)
    # float32, one block: the same values to float32 accuracy.
    np.testing.assert_allclose(
        metrics.shared_perturbation_strength_from_jacobians(jac.astype(np.float32)), strength, rtol=2e-5
    )


def test_pairwise_metrics_of_a_model_match_dense(digits):
    d = digits
    x = d["x"][:12]
    jac = np.asarray(jacobian.input_jacobian(d["apply_fn"], d["params"], x), np.float64).reshape(12, 10, -1)
    s = np.asarray(metrics.shared_perturbation_strength(d["apply_fn"], d["params"], x, batch_size=5))
    np.testing.assert_allclose(s, _dense_strength(jac), rtol=1e-4)
    fro, gram = _dense_cosines(jac)
    np.testing.assert_allclose(metrics.jacobian_cosine(d["apply_fn"], d["params"], x, batch_size=5), fro, atol=1e-5)
    np.testing.assert_allclose(metrics.gram_cosine(d["apply_fn"], d["params"], x, batch_size=5), gram, atol=1e-5)
    assert np.all((s >= 0.5) & (s <= 1.0))


def test_class_pair_summary_matches_loops():
    rng = np.random.RandomState(0)
    n, k = 9, 3
    m = rng.rand(n, n)
    labels = np.array([0, 0, 1, 1, 1, 0, 0, 1, 1])  # class 2 absent
    table, overall = metrics.class_pair_summary(m, labels, k)
    assert table.shape == (k, k)
    for a in range(k):
        for b in range(k):
            vals = [m[i, j] for i in range(n) for j in range(n) if i != j and labels[i] == a and labels[j] == b]
            if vals:
                assert table[a, b] == pytest.approx(np.mean(vals))
            else:
                assert np.isnan(table[a, b])
    assert overall == pytest.approx(m[~np.eye(n, dtype=bool)].mean())


# --------------------------------------------------------------------------
# Correlations and the summary dict.
# --------------------------------------------------------------------------


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
    np.testing.assert_allclose(metrics._average_ranks(a.astype(float)), scipy.stats.rankdata(a))
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
