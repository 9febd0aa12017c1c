"""Kernels against independent float64 references: jacfwd, finite differences, numpy SVD.

The set kernels run with both chunk loops (``loop="scan"`` and ``"host"``),
each checked against the same reference.
"""

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


def _model(name, shape, num_classes=5, seed=0, conv=None):
    small = {
        "mlp": dict(hidden=(16,)),
        "cnn": dict(features=(4, 4), dense=8),
        "resnet_tiny": {},
    }[name]
    if conv is not None and name != "mlp":
        small["conv_general_dilated"] = conv
    ctor = jacuap.models.MODELS[name]
    channels = shape[-1]
    model = ctor(num_classes=num_classes, mean=(0.3,) * channels, std=(0.7,) * channels, **small)
    params = jax.jit(model.init)(jax.random.PRNGKey(seed), jnp.zeros((1,) + shape, jnp.float64))["params"]
    params = jax.tree_util.tree_map(lambda p: p.astype(jnp.float64), params)
    return jacuap.make_apply_fn(model), params


def _lax_twin(name, shape):
    """The same network on lax's convolution: the reference owes nothing to jacuap's conv rules
    (and XLA:CPU differentiates it forward in a fraction of the time)."""
    return _model(name, shape, conv=jax.lax.conv_general_dilated)[0]


def _inputs(shape, batch=3, seed=1):
    return jax.random.uniform(jax.random.PRNGKey(seed), (batch,) + shape, jnp.float64)


def _reference_jacobian(apply_fn, params, x):
    """jacfwd of the single-example function, mapped over the examples (forward mode: independent of the VJPs)."""
    single = lambda xi: apply_fn(params, xi[None])[0]
    return jax.jit(jax.vmap(jax.jacfwd(single)))(x)


# resnet_tiny at 4x4 (stride-2 stage, 1x1 shortcut): its float64 compile is the suite's costliest.
MODELS = [("mlp", (4, 4, 1)), ("cnn", (8, 8, 1)), ("resnet_tiny", (4, 4, 3))]


@pytest.mark.parametrize("name,shape", MODELS)
def test_input_jacobian_matches_jacfwd(name, shape):
    apply_fn, params = _model(name, shape)
    x = _inputs(shape)
    logits, jac = jax.jit(jk.logits_and_input_jacobian, static_argnums=0)(apply_fn, params, x)
    assert jac.shape == (3, 5) + shape
    np.testing.assert_allclose(jac, _reference_jacobian(_lax_twin(name, shape), params, x), rtol=1e-9, atol=1e-12)
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
    kernel = jax.jit(jk.input_jacobian, static_argnums=0)
    a = kernel(apply_fn, params, x)[0]
    b = kernel(apply_fn, params, x2)[0]
    np.testing.assert_allclose(a, b, rtol=1e-12)


@pytest.mark.parametrize("name,shape", MODELS[:2])  # the kernels are model-agnostic; resnet: jacfwd test
def test_frobenius_sq_exact(name, shape):
    apply_fn, params = _model(name, shape)
    x = _inputs(shape)
    ref = jnp.sum(_reference_jacobian(_lax_twin(name, shape), params, x).reshape(3, -1) ** 2, axis=1)
    np.testing.assert_allclose(jk.frobenius_sq(apply_fn, params, x), ref, rtol=1e-10)
    # Hoffman et al.'s convention: 0.5 * mean_b ||J(x_b)||_F^2.
    np.testing.assert_allclose(jk.jacobian_penalty(apply_fn, params, x), 0.5 * ref.mean(), rtol=1e-10)
    logits, fro = jk.logits_and_frobenius_sq(apply_fn, params, x)
    np.testing.assert_allclose(logits, apply_fn(params, x), rtol=1e-12)
    np.testing.assert_allclose(fro, ref, rtol=1e-10)
    logits_p, penalty = jk.logits_and_jacobian_penalty(apply_fn, params, x)
    np.testing.assert_allclose(logits_p, apply_fn(params, x), rtol=1e-12)
    np.testing.assert_allclose(penalty, 0.5 * ref.mean(), rtol=1e-10)


def test_penalty_is_half_the_mean_frobenius_sq_bitwise():
    # Training's loss uses logits_and_jacobian_penalty: it must be exactly
    # 0.5 * mean(fro) of logits_and_frobenius_sq, estimated or exact, under jit.
    shape = (4, 4, 1)
    apply_fn, params = _model("mlp", shape)
    x = _inputs(shape)
    key = jax.random.PRNGKey(5)
    for num_proj in (None, 2):
        f = jax.jit(lambda p, k: jk.logits_and_frobenius_sq(apply_fn, p, x, k, num_proj))
        g = jax.jit(lambda p, k: jk.logits_and_jacobian_penalty(apply_fn, p, x, k, num_proj))
        logits, fro = f(params, key)
        logits_p, penalty = g(params, key)
        np.testing.assert_array_equal(logits_p, logits)
        np.testing.assert_array_equal(penalty, 0.5 * jnp.mean(fro))


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


def test_randomized_kernels_need_a_key():
    apply_fn, params = _model("mlp", (4, 4, 1))
    x = _inputs((4, 4, 1))
    for kernel in (jk.frobenius_sq, jk.logits_and_frobenius_sq, jk.jacobian_penalty,
                   jk.logits_and_jacobian_penalty):
        with pytest.raises(ValueError, match="key"):
            kernel(apply_fn, params, x, num_proj=2)
    with pytest.raises(ValueError, match="key"):
        jk.spectral_norm(apply_fn, params, x, method="power")
    with pytest.raises(ValueError, match="key"):
        jk.stacked_spectral_norm(apply_fn, params, x, method="power")
    # "auto" picks LOBPCG when d > 4096, and then needs the key too.
    big = jnp.zeros((2, 4097))
    with pytest.raises(ValueError, match="key"):
        jk.stacked_spectral_norm(lambda w, z: z @ w, jnp.zeros((4097, 2)), big, method="auto")
    # Deterministic methods need none.
    jk.spectral_norm(apply_fn, params, x, method="exact")
    jk.stacked_spectral_norm(apply_fn, params, x, method="gram")
    jk.stacked_spectral_norm(apply_fn, params, x, method="auto")


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


@pytest.mark.parametrize("loop", ["scan", "host"])
@pytest.mark.parametrize("method", ["power", "gram", "auto"])
@pytest.mark.parametrize("batch_size", [4, 7, 64])
def test_stacked_spectral_norm_matches_dense_svd(method, batch_size, loop):
    shape = (4, 4, 1)
    apply_fn, params = _model("mlp", shape)
    x = _inputs(shape, batch=13)
    stacked = np.asarray(_reference_jacobian(apply_fn, params, x)).reshape(13 * 5, -1)
    _, s, vt = np.linalg.svd(stacked)
    sigma, v = jk.stacked_spectral_norm(
        apply_fn, params, x, jax.random.PRNGKey(0), num_iters=300,
        batch_size=batch_size, method=method, loop=loop)
    assert v.shape == shape
    np.testing.assert_allclose(sigma, s[0], rtol=1e-8)
    np.testing.assert_allclose(abs(np.dot(np.ravel(v), vt[0])), 1.0, rtol=1e-6)


@pytest.mark.parametrize("batch_size", [5, 64])
def test_lobpcg_top_pairs_match_the_dense_svd(batch_size):
    shape = (6, 6, 1)  # d = 36: LOBPCG wants 5 k < d
    apply_fn, params = _model("cnn", shape)
    x = _inputs(shape, batch=9)
    stacked = np.asarray(_reference_jacobian(apply_fn, params, x)).reshape(9 * 5, -1)
    _, s, vt = np.linalg.svd(stacked)
    sigmas, vectors, residuals = jk.stacked_singular_pairs(apply_fn, params, x, jax.random.PRNGKey(0), k=3,
                                                           rtol=1e-9, max_iters=200, batch_size=batch_size)
    assert vectors.shape == (3,) + shape and residuals.shape == (3,)
    np.testing.assert_allclose(sigmas, s[:3], rtol=1e-8)
    for i in range(3):
        np.testing.assert_allclose(abs(np.dot(np.ravel(vectors[i]), vt[i])), 1.0, rtol=1e-6)
    assert float(jnp.max(residuals)) < 1e-6
    # Through stacked_spectral_norm, and by "auto" once d is above the Gram limit.
    sigma, v = jk.stacked_spectral_norm(apply_fn, params, x, jax.random.PRNGKey(1), method="lobpcg", num_iters=200)
    np.testing.assert_allclose(sigma, s[0], rtol=1e-6)


def test_lobpcg_compiles_once_per_model_and_shape():
    """A second call (another rtol, key or set of the same shape) reuses the compiled solver."""
    shape = (6, 6, 1)
    model_fn, params = _model("mlp", shape)
    traces = []

    def apply_fn(p, x):
        traces.append(x.shape)  # runs when traced, not when a compiled program runs
        return model_fn(p, x)

    from jacuap.checks import check_jacobian_inputs

    x = _inputs(shape, batch=5)
    check_jacobian_inputs(apply_fn, params, x)
    checks = len(traces)  # the argument checks evaluate the model's output shape
    jk.stacked_singular_pairs(apply_fn, params, x, jax.random.PRNGKey(0), rtol=1e-3)
    first = len(traces)
    jk.stacked_singular_pairs(apply_fn, params, x, jax.random.PRNGKey(0), rtol=1e-3)
    jk.stacked_singular_pairs(apply_fn, params, x * 0.9, jax.random.PRNGKey(3), rtol=1e-2)
    assert first > checks and len(traces) - first <= 2 * checks  # nothing but the checks, if they trace at all


def test_auto_uses_lobpcg_above_the_gram_limit(monkeypatch):
    shape = (6, 6, 1)
    apply_fn, params = _model("mlp", shape)
    x = _inputs(shape, batch=5)
    gram = jk.stacked_spectral_norm(apply_fn, params, x, method="gram")
    calls = []
    real = jk.stacked.stacked_singular_pairs
    monkeypatch.setattr(jk.stacked, "stacked_singular_pairs", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(jk.stacked, "GRAM_LIMIT", 35)
    auto = jk.stacked_spectral_norm(apply_fn, params, x, jax.random.PRNGKey(0), num_iters=200, method="auto")
    assert calls == [1]
    np.testing.assert_allclose(auto[0], gram[0], rtol=1e-6)
    with pytest.raises(ValueError, match="5 k < d"):
        jk.stacked_singular_pairs(apply_fn, params, x, jax.random.PRNGKey(0), k=8)
    with pytest.raises(ValueError, match="rtol must be in"):
        jk.stacked_singular_pairs(apply_fn, params, x, jax.random.PRNGKey(0), rtol=0.0)


@pytest.mark.parametrize("method", ["power", "gram"])
def test_stacked_spectral_norm_host_loop_equals_scan_loop(method):
    # Same iterates: after a few (unconverged) power steps both loops agree
    # to float rounding, and the jitted scan equals the eager one.
    shape = (4, 4, 1)
    apply_fn, params = _model("mlp", shape)
    x = _inputs(shape, batch=11)
    key = jax.random.PRNGKey(2)
    kw = dict(num_iters=3, batch_size=4, method=method)
    s_host, v_host = jk.stacked_spectral_norm(apply_fn, params, x, key, loop="host", **kw)
    s_scan, v_scan = jk.stacked_spectral_norm(apply_fn, params, x, key, loop="scan", **kw)
    jitted = jax.jit(jk.stacked_spectral_norm, static_argnums=0,
                     static_argnames=("num_iters", "batch_size", "method"))
    s_jit, v_jit = jitted(apply_fn, params, x, key, **kw)
    np.testing.assert_allclose(s_host, s_scan, rtol=1e-12)
    np.testing.assert_allclose(v_host, v_scan, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(s_jit, s_scan, rtol=1e-12)
    np.testing.assert_allclose(v_jit, v_scan, rtol=1e-10, atol=1e-12)


def test_host_loop_refuses_tracers_and_unknown_loops():
    shape = (3, 3, 1)
    apply_fn, params = _model("mlp", shape)
    x = _inputs(shape, batch=5)
    with pytest.raises(ValueError, match="loop"):
        jax.jit(lambda p: jk.stacked_gram(apply_fn, p, x, loop="host"))(params)
    with pytest.raises(ValueError, match="loop"):
        jk.stacked_spectral_norm(apply_fn, params, x, jax.random.PRNGKey(0), loop="python")


@pytest.mark.parametrize("loop", ["scan", "host"])
def test_stacked_gram_matches_dense(loop):
    shape = (3, 3, 1)
    apply_fn, params = _model("mlp", shape)
    x = _inputs(shape, batch=5)
    stacked = np.asarray(_reference_jacobian(apply_fn, params, x)).reshape(25, -1)
    np.testing.assert_allclose(jk.stacked_gram(apply_fn, params, x, batch_size=2, loop=loop),
                               stacked.T @ stacked, rtol=1e-10)


def test_bounds_chain_holds():
    # sigma_max(J_X)^2 <= sum_i sigma_max(J_i)^2 <= sum_i ||J_i||_F^2.
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
