"""The defences beyond JR: jr_mode stacked_spectral and alignment, TRADES; references, steps, resume."""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jacuap
from jacuap import configs, jacobian, train
from jacuap.configs import default, reference
from jacuap.errors import CheckpointError, ConfigError
from jacuap.train import checkpoints, loop, regularizers


def _small_mlp_f64(seed=0, std=(0.3,)):
    model = jacuap.models.MODELS["mlp"](num_classes=3, hidden=(5,), mean=(0.5,), std=std)
    params = jacuap.init_params(model, jax.random.PRNGKey(seed), (2, 2, 1))
    params = jax.tree_util.tree_map(lambda p: p.astype(jnp.float64), params)
    x = jax.random.uniform(jax.random.PRNGKey(1), (5, 2, 2, 1), jnp.float64)
    return jacuap.make_apply_fn(model), params, x


def _bump(params, h):
    return jax.tree_util.tree_map_with_path(
        lambda path, p: p.at[1, 2].add(h) if "dense0" in str(path) and "kernel" in str(path) else p, params)


def _dense_sigma_sq(apply_fn, params, x, scale=1.0):
    jac = scale * jacobian.input_jacobian(apply_fn, params, x).reshape(-1, math.prod(x.shape[1:]))  # (B K, d)
    return jnp.linalg.svd(jac, compute_uv=False)[0] ** 2 / x.shape[0]


def test_stacked_spectral_penalty_gradient_matches_finite_differences():
    with jax.enable_x64(True):
        apply_fn, params, x = _small_mlp_f64()
        v = regularizers.init_spectral_vector(jax.random.PRNGKey(2), (2, 2, 1), jnp.float64)
        penalty = lambda p: regularizers.logits_and_stacked_spectral_penalty(apply_fn, p, x, v)[1]
        grad = jax.grad(penalty)(params)["dense0"]["kernel"][1, 2]
        h = 1e-6
        fd = (penalty(_bump(params, h)) - penalty(_bump(params, -h))) / (2 * h)
        np.testing.assert_allclose(grad, fd, rtol=1e-6)
        # The value: ||J_B v||^2 / |B| from the dense Jacobian.
        jac = jacobian.input_jacobian(apply_fn, params, x).reshape(5, 3, 4)
        np.testing.assert_allclose(penalty(params), np.sum((jac @ v.reshape(4)) ** 2) / 5, rtol=1e-12)


def test_warm_started_iterations_reach_the_dense_svd_and_its_gradient():
    # 50 warm-started single iterations on fixed params (as 50 steps would carry jr_vec),
    # in the normalised space: the penalty is sigma_max(J_B diag(std))^2 / |B|, and (envelope
    # theorem) its gradient through the last iterate is the gradient of sigma_max^2 / |B|.
    with jax.enable_x64(True):
        std = (0.3,)
        apply_fn, params, x = _small_mlp_f64(std=std)
        jr_apply, z = regularizers.jr_view(apply_fn, x, std)
        v = regularizers.init_spectral_vector(jax.random.PRNGKey(3), (2, 2, 1), jnp.float64)
        for _ in range(50):
            v = regularizers.spectral_power_iterations(jr_apply, params, z, v, 1)
        assert float(jnp.linalg.norm(v)) == pytest.approx(1.0, abs=1e-12)
        penalty = lambda p: train.loss_fn(p, apply_fn, x, jnp.zeros(5, jnp.int32), 1.0, None, None, std,
                                          "stacked_spectral", v)[1]["penalty"]
        dense = lambda p: _dense_sigma_sq(apply_fn, p, x, scale=0.3)  # J(z) = J(x) diag(std)
        np.testing.assert_allclose(penalty(params), dense(params), rtol=1e-8)
        g = jax.grad(penalty)(params)
        g_dense = jax.grad(dense)(params)
        jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-9), g, g_dense)


def _alignment_reference(jac):
    g = np.asarray(jac, np.float64).reshape(len(jac), -1)
    total, pairs = 0.0, 0
    for i in range(len(g)):
        for j in range(len(g)):
            if i != j:
                total += (g[i] @ g[j] / (np.linalg.norm(g[i]) * np.linalg.norm(g[j]))) ** 2
                pairs += 1
    return total / pairs


def test_alignment_penalty_matches_a_dense_reference():
    with jax.enable_x64(True):
        apply_fn, params, x = _small_mlp_f64()
        _, p = regularizers.logits_and_alignment_penalty(apply_fn, params, x)
        np.testing.assert_allclose(p, _alignment_reference(jacobian.input_jacobian(apply_fn, params, x)), rtol=1e-12)
        # Through loss_fn, in the normalised space (J diag(std)), and its gradient by finite differences.
        y = jnp.array([0, 1, 2, 0, 1])
        loss = lambda q: train.loss_fn(q, apply_fn, x, y, 0.7, None, None, (0.3,), "alignment")
        _, aux = loss(params)
        np.testing.assert_allclose(aux["penalty"], p, rtol=1e-12)  # one channel: scale-free, std cancels
        np.testing.assert_allclose(aux["loss"], aux["ce"] + 0.7 * p, rtol=1e-12)
        grad = jax.grad(lambda q: loss(q)[0])(params)["dense0"]["kernel"][1, 2]
        h = 1e-6
        fd = (loss(_bump(params, h))[0] - loss(_bump(params, -h))[0]) / (2 * h)
        np.testing.assert_allclose(grad, fd, rtol=1e-6)
    # Orthogonal Jacobians: 0; identical ones: 1; J and -J: 1 (sign-blind).
    f = lambda W, u: (u * u) @ W
    for x2, want in [([[1.0, 0.0], [0.0, 1.0]], 0.0), ([[1.0, 0.0], [1.0, 0.0]], 1.0), ([[1.0, 0.0], [-1.0, 0.0]], 1.0)]:
        assert float(regularizers.logits_and_alignment_penalty(f, jnp.eye(2), jnp.array(x2))[1]) == want


def test_trades_loss_matches_a_hand_computed_value():
    W = jnp.array([[1.0, -1.0], [0.5, 2.0]])  # d = 2, K = 2
    apply_fn = lambda W, x: x @ W
    x = jnp.array([[0.2, 0.4], [0.9, 0.1]])
    x_adv = jnp.array([[0.3, 0.3], [0.8, 0.2]])
    y = jnp.array([1, 0])
    loss, aux = train.loss_fn(W, apply_fn, x, y, 0.0, None, None, adv_images=x_adv, trades_beta=6.0)
    softmax = lambda a: np.exp(a) / np.exp(a).sum(-1, keepdims=True)
    p, q = softmax(np.asarray(x @ W, np.float64)), softmax(np.asarray(x_adv @ W, np.float64))
    ce = -np.mean(np.log(p[[0, 1], [1, 0]]))
    kl = np.mean(np.sum(p * np.log(p / q), axis=-1))
    np.testing.assert_allclose(aux["ce"], ce, rtol=1e-6)
    np.testing.assert_allclose(loss, ce + 6.0 * kl, rtol=1e-6)
    assert float(aux["loss"]) == float(loss) and kl > 0
    # x_adv is a constant: the gradient w.r.t. W flows through f(x) and f(x_adv) only via W.
    g = jax.grad(lambda w: train.loss_fn(w, apply_fn, x, y, 0.0, None, None, adv_images=x_adv,
                                         trades_beta=6.0)[0])(W)
    assert bool(jnp.all(jnp.isfinite(g)))


def _digits(batch=64, jr_mode="frobenius"):
    ds = jacuap.load_dataset("digits")
    model = jacuap.create_model("mlp", 10, ds.mean, ds.std)
    state = train.create_train_state(model, jax.random.PRNGKey(0), ds.image_shape, optax.adam(1e-2), jr_mode)
    return state, ds.train_images[:batch], ds.train_labels[:batch], ds


def test_trades_examples_stay_in_the_ball_and_a_trades_step_trains():
    state, x, y, _ = _digits()
    adversary = train.make_adversary(configs.override(configs.get_config("digits"), adv_training="trades",
                                                      adv_eps=0.1, adv_steps=3))
    assert adversary == train.Adversary("trades", 0.1, 3, pytest.approx(2.5 * 0.1 / 3))
    x_adv = train.adversarial.trades_examples(state.apply_fn, state.params, jnp.asarray(x), adversary,
                                              jax.random.PRNGKey(0))
    assert float(jnp.max(jnp.abs(x_adv - x))) <= 0.1 + 1e-6 and 0 <= float(x_adv.min()) <= float(x_adv.max()) <= 1
    kl = lambda xa: float(train.loss.trades_kl(state.apply_fn(state.params, x), state.apply_fn(state.params, xa)))
    assert kl(x_adv) > 10 * kl(jnp.clip(x + 0.001 * jax.random.normal(jax.random.PRNGKey(0), x.shape), 0, 1))
    step = jax.jit(train.train_step, static_argnames=train.STATIC_ARGNAMES)
    losses = []
    for i in range(6):
        state, aux = step(state, x, y, train.step_key(0, i), 0.0, None, None, adversary, "frobenius", 2, 6.0)
        losses.append(float(aux["loss"]))
    assert losses[-1] < losses[0] and float(aux["loss"]) > float(aux["ce"])  # the KL term is in the loss


@pytest.mark.parametrize("jr_mode,kind", [("stacked_spectral", "none"), ("alignment", "none"),
                                          ("frobenius", "trades"), ("stacked_spectral", "uat")])
def test_each_mode_trains_one_jitted_step_on_mock_data(jr_mode, kind):
    model = jacuap.create_model("mlp", 10, (0.5,), (0.25,))
    state = train.create_train_state(model, jax.random.PRNGKey(0), (8, 8, 1), optax.sgd(0.1), jr_mode)
    images = jax.random.uniform(jax.random.PRNGKey(1), (16, 8, 8, 1))
    labels = jax.random.randint(jax.random.PRNGKey(2), (16,), 0, 10)
    adversary = train.Adversary(kind, 0.1, 2, 0.05) if kind != "none" else train.Adversary()
    step = jax.jit(train.train_step, static_argnames=train.STATIC_ARGNAMES)
    new, aux = step(state, images, labels, train.step_key(0, 0), 0.5, 1, (0.25,), adversary, jr_mode, 3, 6.0)
    assert int(new.step) == 1 and set(aux) == {"loss", "ce", "penalty", "correct"}
    assert float(aux["penalty"]) > 0 and np.isfinite(float(aux["loss"]))
    changed = jax.tree_util.tree_map(lambda a, b: bool(jnp.any(a != b)), state.params, new.params)
    assert all(jax.tree_util.tree_leaves(changed))
    if jr_mode == "stacked_spectral":
        assert isinstance(new, train.SpectralTrainState) and new.jr_vec.shape == (8, 8, 1) and float(jnp.linalg.norm(new.jr_vec)) == pytest.approx(1.0, abs=1e-5)
        assert bool(jnp.any(new.jr_vec != state.jr_vec))
    else:
        assert type(new) is train.TrainState and not hasattr(new, "jr_vec")  # today's state and layout


def test_the_default_mode_is_todays_frobenius_step_bitwise():
    state, x, y, ds = _digits()
    step = jax.jit(train.train_step, static_argnames=train.STATIC_ARGNAMES)
    a = step(state, x, y, train.step_key(0, 0), 0.5, 1, tuple(ds.std))
    b = step(state, x, y, train.step_key(0, 0), 0.5, 1, tuple(ds.std), train.Adversary(), "frobenius", 7, 6.0)
    jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)
    assert configs.get_config().jr_mode == "frobenius" and type(state) is train.TrainState


@pytest.mark.parametrize("overrides,message", [
    ({"jr_mode": "spectral"}, "unknown jr_mode 'spectral'; choose one of frobenius, stacked_spectral, alignment"),
    ({"jr_power_iters": 0}, "jr_power_iters must be an integer >= 1"),
    ({"trades_beta": -1.0}, "trades_beta must be a finite number >= 0"),
    ({"trades_beta": float("nan")}, "trades_beta must be a finite number >= 0"),
    ({"adv_training": "trade"}, "choose one of none, pgd, uat, trades"),
])
def test_new_fields_are_validated(overrides, message):
    with pytest.raises(ConfigError, match=message):
        configs.validate(configs.override(configs.get_config("digits"), **overrides))
    for mode in configs.JR_MODES:
        assert mode in reference.DESCRIPTIONS["jr_mode"]
    assert configs.JR_MODES == regularizers.JR_MODES


def _tiny(**overrides):
    config = default.get_config()
    config.update(dataset="digits", model="mlp", num_epochs=1, batch_size=256, jr_lambda=0.5,
                  jr_mode="stacked_spectral", jr_power_iters=2, progress=False, eval_num_inputs=50)
    config.update(**overrides)
    return config


def _state(workdir, config):
    restored = train.restore_model(workdir)
    ds = jacuap.load_dataset("digits")
    tx = train.make_optimizer(config, restored.meta["steps_per_epoch"])
    template = train.create_train_state(restored.model, jax.random.PRNGKey(0), ds.image_shape, tx, config.jr_mode)
    return checkpoints.restore(workdir, template)[1]


def test_stacked_spectral_resumes_bitwise_from_a_mid_epoch_checkpoint(tmp_path, monkeypatch):
    full, cut = str(tmp_path / "full"), str(tmp_path / "cut")
    summary = train.train_and_evaluate(_tiny(), full)
    assert summary["jr_mode"] == "stacked_spectral"
    real_key, calls = train.step_key, {"n": 0}

    def key_then_signal(seed, step):
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), 15)  # SIGTERM during step 3: checkpoint at step 3, then Preempted
        return real_key(seed, step)

    monkeypatch.setattr(loop, "step_key", key_then_signal)
    with pytest.raises(train.Preempted):
        train.train_and_evaluate(_tiny(checkpoint_every_steps=2), cut)
    monkeypatch.setattr(loop, "step_key", real_key)
    assert checkpoints.latest_step(cut) == 3
    mid = _state(cut, _tiny())
    assert mid.jr_vec.shape == (8, 8, 1) and float(jnp.linalg.norm(mid.jr_vec)) == pytest.approx(1.0, abs=1e-5)
    train.train_and_evaluate(_tiny(checkpoint_every_steps=2), cut)
    a, b = _state(full, _tiny()), _state(cut, _tiny())
    jax.tree_util.tree_map(np.testing.assert_array_equal, a.params, b.params)
    np.testing.assert_array_equal(a.jr_vec, b.jr_vec)
    jax.tree_util.tree_map(np.testing.assert_array_equal, a.opt_state, b.opt_state)
    line = lambda w: [json.loads(l)["loss"] for l in open(os.path.join(w, "metrics.jsonl"))]
    assert line(cut) == line(full)
    # A frobenius run cannot resume it (and vice versa): jr_mode is fingerprinted.
    with pytest.raises(CheckpointError, match="jr_mode"):
        train.train_and_evaluate(_tiny(jr_mode="frobenius"), full)


def test_a_checkpoint_from_before_jr_mode_resumes_only_as_frobenius(tmp_path):
    workdir = str(tmp_path / "old")
    train.train_and_evaluate(_tiny(jr_mode="frobenius"), workdir)
    _, meta = checkpoints.restore_meta(workdir)
    for field in ("jr_mode", "jr_power_iters", "trades_beta"):  # as an earlier version wrote it
        del meta["fingerprint"][field]
    with pytest.raises(CheckpointError, match="'jr_mode': \\('frobenius', 'stacked_spectral'\\)"):
        loop.runtime.check_resumable(workdir, meta, loop.runtime.config_fingerprint(_tiny()))
    loop.runtime.check_resumable(workdir, meta, loop.runtime.config_fingerprint(_tiny(jr_mode="frobenius")))
    assert train.restore_model(workdir).step == checkpoints.latest_step(workdir)


def test_defences_dispatch_through_their_registries():
    """Every config name of a defence has exactly one entry that the step and the loss look up."""
    from jacuap import configs
    from jacuap.train import adversarial, loss, regularizers

    assert tuple(adversarial.ADVERSARIES) == configs.ADV_TRAINING
    assert tuple(loss.PENALTIES) == regularizers.JR_MODES
    assert adversarial.UNIVERSAL_KINDS == ("uat", "cw_uat")
    assert [k for k, a in adversarial.ADVERSARIES.items() if a.replaces] == ["pgd", "sat"]
