"""The training loss: CE + jr_lambda * 0.5 * mean ||J||_F^2 (Hoffman et al.'s convention)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jacuap
from jacuap import jacobian, train


def test_loss_penalty_is_half_the_normalized_jacobian_norm():
    # jr_space="normalized": (1/2) mean ||J(x) diag(std)||_F^2, per channel std.
    std = (0.2, 0.5, 0.9)
    model = jacuap.models.MODELS["mlp"](num_classes=4, hidden=(8,), mean=(0.4,) * 3, std=std)
    params = jacuap.init_params(model, jax.random.PRNGKey(0), (3, 3, 3))
    apply_fn = jacuap.make_apply_fn(model)
    x = jax.random.uniform(jax.random.PRNGKey(1), (3, 3, 3, 3))
    y = jnp.array([0, 1, 2])
    _, aux = train.loss_fn(params, apply_fn, x, y, 1.0, None, None, input_std=std)
    jac = jacobian.input_jacobian(apply_fn, params, x)  # (B, K, H, W, C)
    weighted = jnp.sum(jnp.square(jac) * jnp.square(jnp.asarray(std)), axis=(1, 2, 3, 4))
    np.testing.assert_allclose(aux["penalty"], 0.5 * weighted.mean(), rtol=1e-4)
    _, aux_pix = train.loss_fn(params, apply_fn, x, y, 1.0, None, None, input_std=None)
    np.testing.assert_allclose(aux_pix["penalty"], 0.5 * jnp.sum(jnp.square(jac), axis=(1, 2, 3, 4)).mean(),
                               rtol=1e-4)
    np.testing.assert_allclose(aux["loss"], aux["ce"] + aux["penalty"], rtol=1e-6)


def test_penalty_is_the_jacobian_kernel_bitwise():
    # The loss adds jacobian.jacobian_penalty's value (one forward pass), bit for bit.
    model = jacuap.models.MODELS["mlp"](num_classes=3, hidden=(5,), mean=(0.5,), std=(0.3,))
    params = jacuap.init_params(model, jax.random.PRNGKey(0), (2, 2, 1))
    apply_fn = jacuap.make_apply_fn(model)
    x = jax.random.uniform(jax.random.PRNGKey(1), (4, 2, 2, 1))
    y = jnp.array([0, 1, 2, 0])
    key = jax.random.PRNGKey(2)
    for num_proj in (None, 2):
        loss, aux = jax.jit(train.loss_fn, static_argnums=(1, 4, 6))(params, apply_fn, x, y, 0.3, key, num_proj)
        penalty = jax.jit(jacobian.jacobian_penalty, static_argnums=(0, 4))(apply_fn, params, x, key, num_proj)
        assert float(aux["penalty"]) == float(penalty)
        assert float(loss) == float(aux["ce"] + np.float32(0.3) * aux["penalty"])


def test_zero_lambda_skips_the_penalty_and_projections_need_a_key():
    model = jacuap.models.MODELS["mlp"](num_classes=3, hidden=(5,), mean=(0.5,), std=(0.3,))
    params = jacuap.init_params(model, jax.random.PRNGKey(0), (2, 2, 1))
    apply_fn = jacuap.make_apply_fn(model)
    x, y = jnp.ones((2, 2, 2, 1)), jnp.array([0, 1])
    loss, aux = train.loss_fn(params, apply_fn, x, y, 0.0, None, 1)
    assert float(aux["penalty"]) == 0.0 and float(loss) == float(aux["ce"])
    assert int(aux["correct"]) == int(jnp.sum(jnp.argmax(apply_fn(params, x), -1) == y))
    with pytest.raises(ValueError, match="key"):
        train.loss_fn(params, apply_fn, x, y, 0.5, None, 1)


def test_gradient_of_penalty_matches_finite_difference():
    # The double-backprop gradient of the penalty w.r.t. a parameter.
    with jax.enable_x64(True):
        model = jacuap.models.MODELS["mlp"](num_classes=3, hidden=(5,), mean=(0.5,), std=(0.3,))
        params = jacuap.init_params(model, jax.random.PRNGKey(0), (2, 2, 1))
        params = jax.tree_util.tree_map(lambda p: p.astype(jnp.float64), params)
        apply_fn = jacuap.make_apply_fn(model)
        x = jax.random.uniform(jax.random.PRNGKey(1), (4, 2, 2, 1), jnp.float64)
        y = jnp.array([0, 1, 2, 0])
        loss = lambda p: train.loss_fn(p, apply_fn, x, y, 0.7, None, None, (0.3,))[0]
        grad = jax.grad(loss)(params)["dense0"]["kernel"][1, 2]
        h = 1e-6
        bump = lambda s: jax.tree_util.tree_map_with_path(
            lambda path, p: p.at[1, 2].add(s) if "dense0" in str(path) and "kernel" in str(path) else p,
            params)
        fd = (loss(bump(h)) - loss(bump(-h))) / (2 * h)
        np.testing.assert_allclose(grad, fd, rtol=1e-6)
