"""Attacks on a small MLP trained on sklearn's digits: budgets, strength, variants."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jacuap
from jacuap import attacks, metrics
from jacuap.jacobian import input_jacobian

SHAPE = (8, 8, 1)


def _uer(d, v):
    return metrics.universal_evasion_rate(d["apply_fn"], d["params"], d["xe"], d["ye"], v)


def _linf(v):
    return float(jnp.max(jnp.abs(v)))


def _l2(v):
    return float(jnp.linalg.norm(v.ravel()))


# --------------------------------------------------------------------------
# Projection.
# --------------------------------------------------------------------------


def test_project_linf_and_l2():
    v = jnp.array([[3.0, -4.0], [0.1, 0.2]])
    np.testing.assert_allclose(attacks.project(v, "linf", 0.5), jnp.clip(v, -0.5, 0.5))
    # One perturbation: the whole array on the ball.
    np.testing.assert_allclose(_l2(attacks.project(v, "l2", 1.0)), 1.0, rtol=1e-6)
    # A batch: each row on its own ball; rows inside stay.
    batched = attacks.project(v, "l2", 1.0, batched=True)
    np.testing.assert_allclose(batched[0], [0.6, -0.8], rtol=1e-6)
    np.testing.assert_allclose(batched[1], v[1])
    with pytest.raises(ValueError):
        attacks.project(v, "l1", 1.0)


# --------------------------------------------------------------------------
# SGD-UAP.
# --------------------------------------------------------------------------


def test_sgd_uap_grows_with_eps_and_beats_random(digits):
    d = digits
    uers = []
    for eps in (0.05, 0.15, 0.3):
        v, history = attacks.sgd_uap(d["apply_fn"], d["params"], d["xa"], d["ya"], eps=eps, batch_size=32)
        assert v.shape == SHAPE
        assert _linf(v) <= eps + 1e-6
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
        d["apply_fn"], d["params"], d["xa"], d["ya"], eps=eps, num_epochs=2, batch_size=32
    )
    run(0.1)
    size = attacks._sgd_uap_epoch._cache_size()
    run(0.2)
    assert attacks._sgd_uap_epoch._cache_size() == size


def test_sgd_uap_l2_respects_budget(digits):
    d = digits
    eps = 1.5
    v, history = attacks.sgd_uap(
        d["apply_fn"], d["params"], d["xa"], d["ya"], eps=eps, norm="l2", num_epochs=3, batch_size=100
    )
    assert _l2(v) <= eps * (1 + 1e-5)
    assert history.shape == (3 * 4,)
    assert _uer(d, v) > _uer(d, jnp.zeros(SHAPE)) + 0.05


def test_sgd_uap_targeted_raises_target_share(digits):
    d = digits
    target = 3
    v, _ = attacks.sgd_uap(
        d["apply_fn"], d["params"], d["xa"], d["ya"], eps=0.3, targeted=target, batch_size=32
    )
    share = lambda v: float(np.mean(metrics.predict(d["apply_fn"], d["params"], jnp.clip(d["xe"] + v, 0, 1)) == target))
    assert share(v) > share(jnp.zeros(SHAPE)) + 0.3, (share(v), share(jnp.zeros(SHAPE)))


def test_sgd_uap_honours_init(digits):
    d = digits
    init = 0.5 * jnp.sign(jax.random.normal(jax.random.PRNGKey(1), SHAPE))
    # A zero step keeps v at the start, projected onto the ball.
    v, history = attacks.sgd_uap(
        d["apply_fn"], d["params"], d["xa"], d["ya"], eps=0.1, init=init, step_size=0.0,
        num_epochs=1, batch_size=32,
    )
    np.testing.assert_allclose(v, jnp.clip(init, -0.1, 0.1))
    assert history.shape == (13,)
    # The first loss is evaluated at the start, not at v = 0.
    v0, history0 = attacks.sgd_uap(
        d["apply_fn"], d["params"], d["xa"], d["ya"], eps=0.1, step_size=0.0, num_epochs=1, batch_size=32
    )
    np.testing.assert_array_equal(v0, jnp.zeros(SHAPE))
    assert history[0] != history0[0]


def test_sgd_uap_layer_maximisation(digits):
    d = digits
    features_fn = attacks.layer_features_fn(d["model"], "dense0")
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
        d["apply_fn"], d["params"], d["xa"], None, eps=0.2, features_fn=features_fn, num_epochs=2
    )
    assert _linf(v) <= 0.2 + 1e-6
    assert layer_norm(v) > 1.1 * layer_norm(jnp.zeros(SHAPE))
    rand = 0.2 * jnp.sign(jax.random.normal(jax.random.PRNGKey(3), SHAPE))
    assert layer_norm(v) > layer_norm(rand), (layer_norm(v), layer_norm(rand))
    assert history[-1] > history[0]
    with pytest.raises(KeyError):
        attacks.layer_features_fn(d["model"], "nope")(d["params"], d["xe"][:2])


# --------------------------------------------------------------------------
# Singular-vector UAP.
# --------------------------------------------------------------------------


def test_singular_vector_uap_l2_beats_random_directions(digits):
    d = digits
    eps = 1.0
    v = attacks.singular_vector_uap(d["apply_fn"], d["params"], d["xa"], d["ya"], eps=eps, norm="l2")
    assert v.shape == SHAPE
    np.testing.assert_allclose(_l2(v), eps, rtol=1e-5)
    # The first-order objective sum_i ||J_i v||^2 from the exact per-example Jacobians.
    jac = jax.jit(input_jacobian, static_argnums=0)(d["apply_fn"], d["params"], d["xa"])
    jac = jac.reshape(d["xa"].shape[0], 10, -1)
    first_order = lambda u: float(jnp.sum(jnp.square(jac @ u.ravel())))
    best = first_order(v)
    for seed in range(5):
        r = jax.random.normal(jax.random.PRNGKey(seed), SHAPE)
        assert best > 2.0 * first_order(eps * r / _l2(r))


def test_singular_vector_uap_linf_is_a_vertex_and_fools(digits):
    d = digits
    v = attacks.singular_vector_uap(d["apply_fn"], d["params"], d["xa"], d["ya"], eps=0.3)
    np.testing.assert_allclose(jnp.abs(v), 0.3, rtol=1e-6)
    # The sign kept is the one with the larger evasion on the crafting set.
    uer = lambda u: metrics.universal_evasion_rate(d["apply_fn"], d["params"], d["xa"], d["ya"], u)
    assert uer(v) >= uer(-v)
    rand = 0.3 * jnp.sign(jax.random.normal(jax.random.PRNGKey(3), SHAPE))
    assert _uer(d, v) > _uer(d, rand) + 0.3


# --------------------------------------------------------------------------
# DeepFool UAP.
# --------------------------------------------------------------------------


def test_deepfool_uap_fools_within_budget(digits):
    d = digits
    eps = 0.2
    seen = []
    v, history = attacks.deepfool_uap(
        d["apply_fn"], d["params"], d["xa"], d["ya"], eps=eps, max_passes=4,
        target_fooling_rate=1.0, progress=lambda i, rate: seen.append((i, rate)),
    )
    assert v.shape == SHAPE and _linf(v) <= eps + 1e-6
    assert history.shape == (4,)
    assert [i for i, _ in seen] == [0, 1, 2, 3]
    np.testing.assert_allclose([r for _, r in seen], history)
    # The history is the fooling rate on the crafting set.
    np.testing.assert_allclose(
        history[-1], metrics.fooling_rate(d["apply_fn"], d["params"], d["xa"], v), atol=1e-6
    )
    assert history[-1] > 0.25
    rand = eps * jnp.sign(jax.random.normal(jax.random.PRNGKey(3), SHAPE))
    assert metrics.fooling_rate(d["apply_fn"], d["params"], d["xe"], v) > (
        metrics.fooling_rate(d["apply_fn"], d["params"], d["xe"], rand) + 0.15
    )


def test_deepfool_uap_stops_at_target_fooling_rate(digits):
    d = digits
    v, history = attacks.deepfool_uap(
        d["apply_fn"], d["params"], d["xa"], d["ya"], eps=0.3, max_passes=5, target_fooling_rate=0.05
    )
    assert history.shape == (1,) and history[0] >= 0.05


@pytest.mark.parametrize(
    "inner,norm,aggregate,eps",
    [
        ("deepfool", "l2", "sequential", 2.0),
        ("fgsm", "linf", "mean", 0.2),
        ("pgd", "l2", "mean", 2.0),
    ],
)
def test_deepfool_uap_variants_run_within_budget(digits, inner, norm, aggregate, eps):
    d = digits
    v, history = attacks.deepfool_uap(
        d["apply_fn"], d["params"], d["xa"][:200], None, eps=eps, norm=norm, inner=inner,
        aggregate=aggregate, max_passes=2, target_fooling_rate=1.0, batch_size=64, num_classes=5,
    )
    size = _linf(v) if norm == "linf" else _l2(v)
    assert size <= eps * (1 + 1e-5)
    assert history.shape == (2,)
    assert history.max() > 0.05, history


# --------------------------------------------------------------------------
# Per-input attacks.
# --------------------------------------------------------------------------


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 1.0)])
def test_fgsm_pgd_budget_and_strength(digits, norm, eps):
    d = digits
    x, y = d["xe"], d["ye"]
    clean = metrics.accuracy(d["apply_fn"], d["params"], x, y)
    x_fgsm = attacks.fgsm(d["apply_fn"], d["params"], x, y, eps=eps, norm=norm)
    x_pgd = attacks.pgd(d["apply_fn"], d["params"], x, y, eps=eps, norm=norm, num_steps=10)
    for x_adv in (x_fgsm, x_pgd):
        assert x_adv.shape == x.shape
        assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
        delta = (x_adv - x).reshape(x.shape[0], -1)
        size = jnp.max(jnp.abs(delta), axis=1) if norm == "linf" else jnp.linalg.norm(delta, axis=1)
        assert float(size.max()) <= eps * (1 + 1e-5)
    acc_fgsm = metrics.accuracy(d["apply_fn"], d["params"], x_fgsm, y)
    acc_pgd = metrics.accuracy(d["apply_fn"], d["params"], x_pgd, y)
    assert acc_fgsm < clean - 0.1 and acc_pgd < clean - 0.1, (clean, acc_fgsm, acc_pgd)
    assert acc_pgd <= acc_fgsm + 0.02, (acc_fgsm, acc_pgd)


def test_registry_names():
    assert set(attacks.ATTACKS) == {"sgd_uap", "sv_uap", "deepfool_uap", "pgd", "fgsm"}
    assert set(attacks.UNIVERSAL_ATTACKS) <= set(attacks.ATTACKS)
