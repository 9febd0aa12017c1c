"""Kernels against independent float64 references: jacfwd, finite differences, numpy SVD."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jacuap
from jacuap import jacobian as jk

pytestmark = pytest.mark.usefixtures("x64")


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def _model(name, shape, num_classes=5, seed=0):
    small = {
        "mlp": dict(hidden=(16,)),
        "cnn": dict(features=(4, 4), dense=8),
        "resnet_tiny": {},
    }[name]
    ctor = jacuap.models.MODELS[name]
    channels = shape[-1]
    model = ctor(num_classes=num_classes, mean=(0.3,) * channels, std=(0.7,) * channels, **small)
    params = model.init(jax.random.PRNGKey(seed), jnp.zeros((1,) + shape, jnp.float64))["params"]
    params = jax.tree_util.tree_map(lambda p: p.astype(jnp.float64), params)
    return jacuap.make_apply_fn(model), params


def _inputs(shape, batch=3, seed=1):
    return jax.random.uniform(jax.random.PRNGKey(seed), (batch,) + shape, jnp.float64)


def _reference_jacobian(apply_fn, params, x):
    """jacfwd of the single-example function, example by example."""
    single = lambda xi: apply_fn(params, xi[None])[0]
    return jnp.stack([jax.jacfwd(single)(xi) for xi in x])


MODELS = [("mlp", (4, 4, 1)), ("cnn", (8, 8, 1)), ("resnet_tiny", (8, 8, 3))]


@pytest.mark.parametrize("name,shape", MODELS)
def test_input_jacobian_matches_jacfwd(name, shape):
    apply_fn, params = _model(name, shape)
    x = _inputs(shape)
    logits, jac = jax.jit(jk.logits_and_input_jacobian, static_argnums=0)(apply_fn, params, x)
    assert jac.shape == (3, 5) + shape
    np.testing.assert_allclose(jac, _reference_jacobian(apply_fn, params, x), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(logits, apply_fn(params, x), rtol=1e-12)


def test_input_jacobian_forward_mode_when_d_le_k():
    # d = 4 < K = 7: the forward-mode branch.
    w = jax.random.normal(jax.random.PRNGKey(0), (4, 7), jnp.float64)
    apply_fn = lambda p, x: jnp.tanh(x.reshape(x.shape[0], -1) @ p)
    x = _inputs((2, 2))
    logits, jac = jk.logits_and_input_jacobian(apply_fn, w, x)
    assert jac.shape == (3, 7, 2, 2)
    np.testing.assert_allclose(jac, _reference_jacobian(apply_fn, w, x), rtol=1e-10)
    np.testing.assert_allclose(logits, apply_fn(w, x), rtol=1e-12)
    np.testing.assert_allclose(jk.input_jacobian(apply_fn, w, x), jac, rtol=1e-12)


def test_input_jacobian_matches_finite_differences():
    shape = (4, 4, 1)
    apply_fn, params = _model("mlp", shape)
    x = _inputs(shape, batch=2)
    jac = np.asarray(jk.input_jacobian(apply_fn, params, x)).reshape(2, 5, -1)
    h = 1e-6
    flat = np.asarray(x).reshape(2, -1)
    for j in range(flat.shape[1]):
        e = np.zeros_like(flat)
        e[:, j] = h
        up = apply_fn(params, jnp.asarray((flat + e).reshape(x.shape)))
        down = apply_fn(params, jnp.asarray((flat - e).reshape(x.shape)))
        np.testing.assert_allclose(jac[:, :, j], (up - down) / (2 * h), rtol=1e-5, atol=1e-8)


def test_examples_are_independent():
    # Row b of the Jacobian must not change when the other examples change.
    shape = (8, 8, 3)
    apply_fn, params = _model("resnet_tiny", shape)
    x = _inputs(shape, batch=3)
    x2 = x.at[1:].set(_inputs(shape, batch=2, seed=9))
    a = jk.input_jacobian(apply_fn, params, x)[0]
    b = jk.input_jacobian(apply_fn, params, x2)[0]
    np.testing.assert_allclose(a, b, rtol=1e-12)


@pytest.mark.parametrize("name,shape", MODELS)
def test_frobenius_sq_exact(name, shape):
    apply_fn, params = _model(name, shape)
    x = _inputs(shape)
    ref = jnp.sum(_reference_jacobian(apply_fn, params, x).reshape(3, -1) ** 2, axis=1)
    np.testing.assert_allclose(jk.frobenius_sq(apply_fn, params, x), ref, rtol=1e-10)
    np.testing.assert_allclose(jk.jacobian_penalty(apply_fn, params, x), ref.mean(), rtol=1e-10)
    logits, fro = jk.logits_and_frobenius_sq(apply_fn, params, x)
    np.testing.assert_allclose(logits, apply_fn(params, x), rtol=1e-12)
    np.testing.assert_allclose(fro, ref, rtol=1e-10)


@pytest.mark.parametrize("num_proj", [1, 3])
def test_frobenius_sq_estimate_is_unbiased(num_proj):
    shape = (4, 4, 1)
    apply_fn, params = _model("mlp", shape)
    x = _inputs(shape)
    exact = jk.frobenius_sq(apply_fn, params, x)
    estimate = jax.jit(
        jax.vmap(
            functools.partial(jk.frobenius_sq, apply_fn, params, x, num_proj=num_proj),
        )
    )
    keys = jax.random.split(jax.random.PRNGKey(3), 4000)
    samples = estimate(keys)  # (4000, B)
    mean = samples.mean(axis=0)
    stderr = samples.std(axis=0) / np.sqrt(len(keys))
    # Unbiased: within 4 standard errors; and not trivially exact per draw.
    assert np.all(np.abs(mean - exact) < 4 * stderr + 1e-12), (mean, exact, stderr)
    assert np.all(samples.std(axis=0) > 1e-3 * exact)
    # One projection of a K=5 Jacobian estimates within a factor K of the truth.
    assert np.all(samples <= 5 * exact * (1 + 1e-9))


def test_frobenius_sq_needs_key_for_projections():
    apply_fn, params = _model("mlp", (4, 4, 1))
    with pytest.raises(ValueError, match="key"):
        jk.frobenius_sq(apply_fn, params, _inputs((4, 4, 1)), num_proj=2)


@pytest.mark.parametrize("method", ["power", "exact"])
def test_spectral_norm_matches_svd(method):
    shape = (4, 4, 1)
    apply_fn, params = _model("mlp", shape)
    x = _inputs(shape, batch=4)
    ref = [np.linalg.svd(np.asarray(j).reshape(5, -1), compute_uv=False)[0]
           for j in _reference_jacobian(apply_fn, params, x)]
    sigma = jax.jit(jk.spectral_norm, static_argnums=(0, 4, 5))(
        apply_fn, params, x, jax.random.PRNGKey(0), 200, method)
    np.testing.assert_allclose(sigma, ref, rtol=1e-6)


@pytest.mark.parametrize("method", ["power", "gram", "auto"])
@pytest.mark.parametrize("batch_size", [4, 7, 64])
def test_stacked_spectral_norm_matches_dense_svd(method, batch_size):
    shape = (4, 4, 1)
    apply_fn, params = _model("mlp", shape)
    x = _inputs(shape, batch=13)
    stacked = np.asarray(_reference_jacobian(apply_fn, params, x)).reshape(13 * 5, -1)
    _, s, vt = np.linalg.svd(stacked)
    sigma, v = jk.stacked_spectral_norm(
        apply_fn, params, x, jax.random.PRNGKey(0), num_iters=300,
        batch_size=batch_size, method=method)
    assert v.shape == shape
    np.testing.assert_allclose(sigma, s[0], rtol=1e-8)
    np.testing.assert_allclose(abs(np.dot(np.ravel(v), vt[0])), 1.0, rtol=1e-6)


def test_stacked_gram_matches_dense():
    shape = (3, 3, 1)
    apply_fn, params = _model("mlp", shape)
    x = _inputs(shape, batch=5)
    stacked = np.asarray(_reference_jacobian(apply_fn, params, x)).reshape(25, -1)
    np.testing.assert_allclose(jk.stacked_gram(apply_fn, params, x, batch_size=2),
                               stacked.T @ stacked, rtol=1e-10)


def test_bounds_chain_holds():
    # sigma_max(J_X)^2 <= sum_i sigma_max(J_i)^2 <= sum_i ||J_i||_F^2  (SPEC §2).
    shape = (4, 4, 1)
    apply_fn, params = _model("mlp", shape)
    x = _inputs(shape, batch=6)
    sigma_x, _ = jk.stacked_spectral_norm(apply_fn, params, x, method="gram")
    per = jk.spectral_norm(apply_fn, params, x, method="exact")
    fro = jk.frobenius_sq(apply_fn, params, x)
    assert sigma_x**2 <= jnp.sum(per**2) * (1 + 1e-12)
    assert jnp.sum(per**2) <= jnp.sum(fro) * (1 + 1e-12)


def test_kernels_vmap_over_params():
    shape = (4, 4, 1)
    apply_fn, params = _model("mlp", shape)
    x = _inputs(shape)
    stacked_params = jax.tree_util.tree_map(lambda p: jnp.stack([p, 2 * p]), params)
    fro = jax.vmap(lambda p: jk.frobenius_sq(apply_fn, p, x))(stacked_params)
    np.testing.assert_allclose(fro[0], jk.frobenius_sq(apply_fn, params, x), rtol=1e-12)
    assert fro.shape == (2, 3)
