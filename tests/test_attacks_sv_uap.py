"""The singular-vector UAP on a small MLP trained on sklearn's digits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jacuap import attacks, jacobian, metrics

SHAPE = (8, 8, 1)


def _uer(d, v, split="e"):
    return metrics.universal_evasion_rate(d["apply_fn"], d["params"], d["x" + split], d["y" + split], v)


def test_singular_vector_uap_l2_beats_random_directions(digits):
    d = digits
    eps = 1.0
    result = attacks.singular_vector_uap(d["apply_fn"], d["params"], d["xa"], d["ya"], eps=eps, norm="l2")
    assert isinstance(result, attacks.UAPResult)
    v = result.v
    assert v.shape == SHAPE
    np.testing.assert_allclose(float(attacks.perturbation_norm(v, "l2")), eps, rtol=1e-5)
    # The first-order objective sum_i ||J_i v||^2 from the exact per-example Jacobians.
    jac = jax.jit(jacobian.input_jacobian, static_argnums=0)(d["apply_fn"], d["params"], d["xa"])
    jac = jac.reshape(d["xa"].shape[0], 10, -1)
    first_order = lambda u: float(jnp.sum(jnp.square(jac @ u.ravel())))
    best = first_order(v)
    for seed in range(5):
        r = jax.random.normal(jax.random.PRNGKey(seed), SHAPE)
        assert best > 2.0 * first_order(eps * r / jnp.linalg.norm(r))


def test_singular_vector_uap_linf_is_a_vertex_and_fools(digits):
    d = digits
    v, history = attacks.singular_vector_uap(d["apply_fn"], d["params"], d["xa"], d["ya"], eps=0.3)
    np.testing.assert_allclose(jnp.abs(v), 0.3, rtol=1e-6)
    # The sign kept is the one with the larger evasion on the crafting set; the history records both.
    assert _uer(d, v, "a") >= _uer(d, -v, "a")
    np.testing.assert_allclose(history, [_uer(d, v, "a"), _uer(d, -v, "a")], atol=1e-6)
    rand = 0.3 * jnp.sign(jax.random.normal(jax.random.PRNGKey(3), SHAPE))
    assert _uer(d, v) > _uer(d, rand) + 0.3


def test_singular_vector_uap_power_method_and_direction(digits):
    d = digits
    x, y = d["xa"], d["ya"]
    exact = attacks.singular_vector_uap(d["apply_fn"], d["params"], x, y, eps=1.0, norm="l2", method="gram")
    power = attacks.singular_vector_uap(d["apply_fn"], d["params"], x, y, eps=1.0, norm="l2", method="power",
                                        key=jax.random.PRNGKey(0), num_iters=100)
    # The same singular vector (up to the sign, which both choose by evasion).
    assert abs(float(jnp.vdot(exact.v, power.v))) > 0.99
    # A known direction skips the solver: the budget is applied to it.
    u = jnp.zeros(SHAPE).at[0, 0, 0].set(-2.0)
    given = attacks.singular_vector_uap(d["apply_fn"], d["params"], x, y, eps=0.5, direction=u)
    assert float(jnp.max(jnp.abs(given.v))) == pytest.approx(0.5)
    assert given.history.shape == (2,) and given.history[0] >= given.history[1]


def test_singular_vector_uap_power_method_requires_key(digits):
    d = digits
    with pytest.raises(ValueError, match="key"):
        attacks.singular_vector_uap(d["apply_fn"], d["params"], d["xa"], d["ya"], eps=0.1, method="power")
