"""Norm balls: projection, ascent directions, budget scaling, random starts, norms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jacuap import attacks


def test_project_linf_and_l2():
    v = jnp.array([[3.0, -4.0], [0.1, 0.2]])
    np.testing.assert_allclose(attacks.project(v, "linf", 0.5), jnp.clip(v, -0.5, 0.5))
    # One perturbation: the whole array on the ball.
    np.testing.assert_allclose(float(jnp.linalg.norm(attacks.project(v, "l2", 1.0))), 1.0, rtol=1e-6)
    # A batch: each row on its own ball; rows inside stay.
    batched = attacks.project(v, "l2", 1.0, batched=True)
    np.testing.assert_allclose(batched[0], [0.6, -0.8], rtol=1e-6)
    np.testing.assert_allclose(batched[1], v[1])
    with pytest.raises(ValueError):
        attacks.project(v, "l1", 1.0)


def test_ascent_direction_and_scale_to_budget():
    g = jnp.array([[3.0, -4.0], [0.0, 0.0]])
    np.testing.assert_array_equal(attacks.ascent_direction(g, "linf"), jnp.sign(g))
    unit = attacks.ascent_direction(g, "l2", batched=True)
    np.testing.assert_allclose(unit[0], [0.6, -0.8], rtol=1e-6)
    np.testing.assert_array_equal(unit[1], [0.0, 0.0])  # a zero gradient gives a zero step
    u = jnp.array([0.3, -0.01, 0.0, 2.0])
    np.testing.assert_allclose(attacks.scale_to_budget(u, "linf", 0.1), 0.1 * jnp.sign(u))
    np.testing.assert_allclose(float(attacks.perturbation_norm(attacks.scale_to_budget(u, "l2", 0.7), "l2")), 0.7,
                               rtol=1e-6)


def test_perturbation_norm_batched():
    v = jnp.array([[3.0, -4.0], [0.5, 0.0]])
    np.testing.assert_allclose(attacks.perturbation_norm(v, "l2", batched=True), [5.0, 0.5])
    np.testing.assert_allclose(attacks.perturbation_norm(v, "linf", batched=True), [4.0, 0.5])
    assert float(attacks.perturbation_norm(v, "linf")) == 4.0
    with pytest.raises(ValueError, match="unknown norm"):
        attacks.check_norm("l1")


@pytest.mark.parametrize("norm", attacks.NORMS)
def test_random_in_ball_is_inside_and_spread(norm):
    eps = 0.3
    # Jitted (as PGD calls it): one compiled program instead of many eager ops.
    draw = jax.jit(attacks.random_in_ball, static_argnums=(1, 2, 4))
    z = draw(jax.random.PRNGKey(0), (256, 4, 4, 1), norm, eps, jnp.float32)
    assert z.shape == (256, 4, 4, 1) and z.dtype == jnp.float32
    sizes = jax.jit(attacks.perturbation_norm, static_argnums=(1, 2))(z, norm, True)
    assert float(sizes.max()) <= eps * (1 + 1e-6)
    # Spread over the ball: l_inf uniform per pixel, l2 uniform radius.
    spread = jnp.abs(z) if norm == "linf" else sizes
    assert float(spread.min()) < 0.1 * eps and float(spread.max()) > 0.9 * eps
    # Another key, other points.
    other = draw(jax.random.PRNGKey(1), (256, 4, 4, 1), norm, eps, jnp.float32)
    assert not np.allclose(z, other)


def test_random_in_ball_requires_key():
    with pytest.raises(ValueError, match="key"):
        attacks.random_in_ball(None, (2, 3), "linf", 0.1, jnp.float32)
