"""Pairwise sharing (jacuap.metrics.pairwise) against dense float64 references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jacuap import jacobian, metrics


@pytest.fixture(scope="module")
def digits(trained_digits):
    """The shared trained MLP (conftest.py); its 397 held-out inputs."""
    d = trained_digits
    return dict(apply_fn=d["apply_fn"], params=d["params"], x=d["xe"], y=d["ye"])


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
