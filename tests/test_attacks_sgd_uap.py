"""SGD-UAP on a small MLP trained on sklearn's digits: budget, strength, variants, compile-once."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jacuap import attacks, metrics, models

SHAPE = (8, 8, 1)
KEY = jax.random.PRNGKey(0)


def _uer(d, v):
    return metrics.universal_evasion_rate(d["apply_fn"], d["params"], d["xe"], d["ye"], v)


def _size(v, norm="linf"):
    return float(attacks.perturbation_norm(v, norm))


def test_default_step_size():
    assert attacks.default_sgd_step_size(0.1, 40) == pytest.approx(0.01)
    assert attacks.default_sgd_step_size(0.1, 4) == pytest.approx(0.05)
    assert attacks.default_sgd_step_size(0.1, 0) == pytest.approx(0.2)


def test_sgd_uap_grows_with_eps_and_beats_random(digits):
    d = digits
    uers = []
    for eps in (0.05, 0.15, 0.3):
        result = attacks.sgd_uap(d["apply_fn"], d["params"], d["xa"], d["ya"], eps=eps, batch_size=32, key=KEY)
        assert isinstance(result, attacks.UAPResult)
        v, history = result
        assert v.shape == SHAPE
        assert _size(v) <= eps + 1e-6
        x_adv = jnp.clip(d["xe"] + v, 0.0, 1.0)
        assert float(jnp.max(jnp.abs(x_adv - d["xe"]))) <= eps + 1e-6
        assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
        # 400 inputs in batches of 32: 13 minibatches (the last masked), 5 epochs.
        assert history.shape == (5 * 13,)
        uers.append(_uer(d, v))
    assert uers[0] < uers[1] < uers[2], uers
    rand = 0.3 * jnp.sign(jax.random.normal(jax.random.PRNGKey(3), SHAPE))
    assert uers[2] > 0.6 and uers[2] > _uer(d, rand) + 0.4, (uers, _uer(d, rand))


def test_sgd_uap_compiles_once_across_eps_and_epochs(digits):
    d = digits
    run = lambda eps: attacks.sgd_uap(
        d["apply_fn"], d["params"], d["xa"], d["ya"], eps=eps, num_epochs=2, batch_size=32, key=KEY
    )
    run(0.1)
    size = attacks.sgd_uap_epoch._cache_size()
    run(0.2)
    assert attacks.sgd_uap_epoch._cache_size() == size


def test_sgd_uap_is_deterministic_given_the_key(digits):
    d = digits
    run = lambda key: attacks.sgd_uap(
        d["apply_fn"], d["params"], d["xa"], d["ya"], eps=0.1, num_epochs=1, batch_size=32, key=key
    )
    v1, h1 = run(KEY)
    v2, h2 = run(KEY)
    np.testing.assert_array_equal(v1, v2)
    np.testing.assert_array_equal(h1, h2)
    # Another key shuffles differently: other minibatch losses.
    _, h3 = run(jax.random.PRNGKey(1))
    assert not np.array_equal(h1, h3)


def test_sgd_uap_l2_respects_budget(digits):
    d = digits
    eps = 1.5
    v, history = attacks.sgd_uap(
        d["apply_fn"], d["params"], d["xa"], d["ya"], eps=eps, norm="l2", num_epochs=3, batch_size=100, key=KEY
    )
    assert _size(v, "l2") <= eps * (1 + 1e-5)
    assert history.shape == (3 * 4,)
    assert _uer(d, v) > _uer(d, jnp.zeros(SHAPE)) + 0.05


def test_sgd_uap_targeted_raises_target_share(digits):
    d = digits
    target = 3
    v, _ = attacks.sgd_uap(
        d["apply_fn"], d["params"], d["xa"], d["ya"], eps=0.3, targeted=target, batch_size=32, key=KEY
    )
    share = lambda v: float(np.mean(metrics.predict(d["apply_fn"], d["params"], jnp.clip(d["xe"] + v, 0, 1)) == target))
    assert share(v) > share(jnp.zeros(SHAPE)) + 0.3, (share(v), share(jnp.zeros(SHAPE)))


def test_sgd_uap_honours_init(digits):
    d = digits
    init = 0.5 * jnp.sign(jax.random.normal(jax.random.PRNGKey(1), SHAPE))
    # A zero step keeps v at the start, projected onto the ball.
    v, history = attacks.sgd_uap(
        d["apply_fn"], d["params"], d["xa"], d["ya"], eps=0.1, init=init, step_size=0.0,
        num_epochs=1, batch_size=32, key=KEY,
    )
    np.testing.assert_allclose(v, jnp.clip(init, -0.1, 0.1))
    assert history.shape == (13,)
    # The first loss is evaluated at the start, not at v = 0.
    v0, history0 = attacks.sgd_uap(
        d["apply_fn"], d["params"], d["xa"], d["ya"], eps=0.1, step_size=0.0, num_epochs=1, batch_size=32, key=KEY
    )
    np.testing.assert_array_equal(v0, jnp.zeros(SHAPE))
    assert history[0] != history0[0]


def test_sgd_uap_layer_maximisation(digits):
    d = digits
    features_fn = models.layer_features_fn(d["model"], "dense0")
    # The old home re-exports the same function.
    assert attacks.layer_features_fn is models.layer_features_fn
    acts = features_fn(d["params"], d["xe"])
    assert acts.shape == (d["xe"].shape[0], 32)
    np.testing.assert_allclose(
        acts, d["params"]["dense0"]["kernel"].T.dot(((d["xe"] - 0.5) / 0.5).reshape(-1, 64).T).T + d["params"]["dense0"]["bias"],
        rtol=1e-4, atol=1e-4,
    )
    layer_norm = lambda v: float(
        jnp.mean(jnp.sum(jnp.square(features_fn(d["params"], jnp.clip(d["xe"] + v, 0, 1))), axis=1))
    )
    v, history = attacks.sgd_uap(
        d["apply_fn"], d["params"], d["xa"], None, eps=0.2, features_fn=features_fn, num_epochs=2, key=KEY
    )
    assert _size(v) <= 0.2 + 1e-6
    assert layer_norm(v) > 1.1 * layer_norm(jnp.zeros(SHAPE))
    rand = 0.2 * jnp.sign(jax.random.normal(jax.random.PRNGKey(3), SHAPE))
    assert layer_norm(v) > layer_norm(rand), (layer_norm(v), layer_norm(rand))
    assert history[-1] > history[0]
    with pytest.raises(KeyError):
        models.layer_features_fn(d["model"], "nope")(d["params"], d["xe"][:2])


def test_sgd_uap_argument_errors(digits):
    d = digits
    with pytest.raises(ValueError, match="key"):
        attacks.sgd_uap(d["apply_fn"], d["params"], d["xa"], d["ya"], eps=0.1)
    with pytest.raises(ValueError, match="labels y"):
        attacks.sgd_uap(d["apply_fn"], d["params"], d["xa"], None, eps=0.1, key=KEY)
    with pytest.raises(ValueError, match="unknown norm"):
        attacks.sgd_uap(d["apply_fn"], d["params"], d["xa"], d["ya"], eps=0.1, norm="l1", key=KEY)
