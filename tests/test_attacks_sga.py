"""SGA (stochastic gradient aggregation) on a small MLP trained on sklearn's digits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jacuap import attacks, metrics
from jacuap.attacks.sga import sga_uap, sga_uap_epoch

SHAPE = (8, 8, 1)
KEY = jax.random.PRNGKey(0)


def _uer(d, v):
    return metrics.universal_evasion_rate(d["apply_fn"], d["params"], d["xe"], d["ye"], v)


@pytest.mark.parametrize("norm,eps", [("linf", 0.15), ("l2", 1.5)])
def test_sga_budget_history_and_strength(digits, norm, eps):
    d = digits
    result = sga_uap(d["apply_fn"], d["params"], d["xa"], d["ya"], eps=eps, norm=norm, key=KEY, num_epochs=3)
    assert isinstance(result, attacks.UAPResult)
    v, history = result
    assert v.shape == SHAPE
    assert float(attacks.perturbation_norm(v, norm)) <= eps * (1 + 1e-5)
    x_adv = jnp.clip(d["xe"] + v, 0.0, 1.0)
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    # 400 inputs in outer batches of 128: 4 per epoch (the last masked).
    assert history.shape == (3 * 4,)
    assert np.all(np.isfinite(history))
    rand = attacks.scale_to_budget(jax.random.normal(jax.random.PRNGKey(3), SHAPE), norm, eps)
    assert _uer(d, v) > _uer(d, rand) + 0.15, (_uer(d, v), _uer(d, rand))
    # As strong as plain SGD-UAP with the same budget and epochs (up to noise).
    plain, _ = attacks.sgd_uap(d["apply_fn"], d["params"], d["xa"], d["ya"], eps=eps, norm=norm, key=KEY, num_epochs=3)
    assert _uer(d, v) > _uer(d, plain) - 0.05, (_uer(d, v), _uer(d, plain))


def test_sga_without_look_ahead_is_sgd_uap(digits):
    # Inner step 0: every inner gradient is taken at v, and disjoint equal inner
    # minibatches average to the outer minibatch's gradient: one SGD-UAP step.
    # With the whole set as the outer batch, the shuffles do not matter.
    d = digits
    kw = dict(eps=0.1, key=KEY, num_epochs=3, batch_size=400, step_size=0.02)
    v_sga, h_sga = sga_uap(d["apply_fn"], d["params"], d["xa"], d["ya"], inner_batch_size=40, inner_passes=2,
                           inner_step_size=0.0, **kw)
    v_sgd, h_sgd = attacks.sgd_uap(d["apply_fn"], d["params"], d["xa"], d["ya"], **kw)
    np.testing.assert_allclose(h_sga, h_sgd, rtol=1e-4)
    assert np.mean(np.isclose(v_sga, v_sgd, atol=1e-6)) > 0.95


def test_sga_look_ahead_moves_the_gradients(digits):
    d = digits
    kw = dict(eps=0.1, key=KEY, num_epochs=1, batch_size=400, step_size=0.02, inner_batch_size=40, inner_passes=2)
    v0, h0 = sga_uap(d["apply_fn"], d["params"], d["xa"], d["ya"], inner_step_size=0.0, **kw)
    v1, h1 = sga_uap(d["apply_fn"], d["params"], d["xa"], d["ya"], **kw)
    assert not np.array_equal(v0, v1)
    # The inner iterate ascends: its mean objective exceeds the one at v.
    assert h1[0] > h0[0]


def test_sga_compiles_once_and_is_deterministic(digits):
    d = digits
    run = lambda eps, key=KEY: sga_uap(d["apply_fn"], d["params"], d["xa"], d["ya"], eps=eps, key=key, num_epochs=2)
    v1, h1 = run(0.1)
    size = sga_uap_epoch._cache_size()
    v2, h2 = run(0.1)
    run(0.2)
    assert sga_uap_epoch._cache_size() == size
    np.testing.assert_array_equal(v1, v2)
    np.testing.assert_array_equal(h1, h2)
    _, h3 = run(0.1, jax.random.PRNGKey(1))
    assert not np.array_equal(h1, h3)


def test_sga_targeted_raises_target_share(digits):
    d = digits
    target = 3
    v, _ = sga_uap(d["apply_fn"], d["params"], d["xa"], None, eps=0.3, targeted=target, key=KEY, num_epochs=2)
    share = lambda v: float(np.mean(metrics.predict(d["apply_fn"], d["params"], jnp.clip(d["xe"] + v, 0, 1)) == target))
    assert share(v) > share(jnp.zeros(SHAPE)) + 0.3, (share(v), share(jnp.zeros(SHAPE)))


def test_sga_honours_init(digits):
    d = digits
    init = 0.5 * jnp.sign(jax.random.normal(jax.random.PRNGKey(1), SHAPE))
    v, history = sga_uap(d["apply_fn"], d["params"], d["xa"], d["ya"], eps=0.1, init=init, step_size=0.0,
                         num_epochs=1, key=KEY)
    np.testing.assert_allclose(v, jnp.clip(init, -0.1, 0.1))
    assert history.shape == (4,)


def test_sga_argument_errors(digits):
    d = digits
    args = (d["apply_fn"], d["params"], d["xa"], d["ya"])
    with pytest.raises(ValueError, match="key"):
        sga_uap(*args, eps=0.1)
    with pytest.raises(ValueError, match="labels y"):
        sga_uap(d["apply_fn"], d["params"], d["xa"], None, eps=0.1, key=KEY)
    with pytest.raises(ValueError, match="unknown norm"):
        sga_uap(*args, eps=0.1, norm="l1", key=KEY)
    with pytest.raises(ValueError, match="inner_batch_size"):
        sga_uap(*args, eps=0.1, key=KEY, inner_batch_size=0)
