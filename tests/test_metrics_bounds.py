"""Jacobian bounds (jacuap.metrics.bounds) against brute-force float64 references."""

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
        power = metrics.universality_ratio(d["apply_fn"], params, x, jax.random.PRNGKey(0), batch_size=3,
                                           num_iters=300, method="power")
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


def test_stacked_sigma_max_is_the_kernels_sigma(digits):
    d = digits
    x = d["x"][:50]
    key = jax.random.PRNGKey(4)
    for method in ("gram", "power"):
        sigma, _ = jacobian.stacked_spectral_norm(d["apply_fn"], d["params"], x, key, num_iters=20,
                                                  batch_size=16, method=method)
        got = metrics.stacked_sigma_max(d["apply_fn"], d["params"], x, key, num_iters=20, batch_size=16,
                                        method=method)
        assert isinstance(got, float)
        assert got == pytest.approx(float(sigma), rel=1e-5), method
    with pytest.raises(ValueError, match="key"):
        metrics.stacked_sigma_max(d["apply_fn"], d["params"], x, method="power")
