"""Shared adversarial training (sat) and class-wise UAT (cw_uat): float64 references, steps, resume after SIGKILL."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jacuap
from jacuap import configs, parallel, train
from jacuap.errors import ConfigError
from jacuap.train import checkpoints
from subprocess_env import one_device_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINEAR = lambda W, x: x.reshape(len(x), -1) @ W
LINEAR_DICT = lambda p, x: LINEAR(p["W"], x)  # a train state's params are a pytree with keys


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def _softmax(a):
    e = np.exp(a - a.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _ce_input_grad(W, x, y):
    """d CE(x W, y) / d x for a linear model, float64: ``(softmax(x W) - e_y) W^T``."""
    p = _softmax(x @ W)
    p[np.arange(len(y)), y] -= 1.0
    return p @ W.T


def _linear_problem(n=6, d=4, k=3):
    rng = np.random.default_rng(0)
    W = rng.normal(size=(d, k))
    x = rng.uniform(0.3, 0.7, size=(n, d))  # far from the box's faces: clip never binds at eps 0.1
    y = rng.integers(0, k, size=n)
    return W, x, y


@pytest.mark.usefixtures("x64")
def test_shared_examples_match_a_float64_reference():
    W, x, y = _linear_problem()
    adversary = train.Adversary("sat", eps=0.1, steps=3, step_size=0.04, heap_size=4)  # heaps {0..3}, {4, 5}
    key = jax.random.PRNGKey(3)
    got = train.adversarial.shared_examples(LINEAR, jnp.asarray(W), jnp.asarray(x), jnp.asarray(y), adversary, key)
    heap = np.arange(len(x)) // 4
    delta = np.asarray(jax.random.uniform(key, (2, 4), jnp.float64, -0.1, 0.1))
    for _ in range(3):
        g = _ce_input_grad(W, x + delta[heap], y)
        heap_grad = np.stack([g[heap == h].sum(0) for h in range(2)])
        delta = np.clip(delta + 0.04 * np.sign(heap_grad), -0.1, 0.1)
    np.testing.assert_allclose(got, np.clip(x + delta[heap], 0, 1), rtol=0, atol=1e-12)
    np.testing.assert_allclose(got[:4] - x[:4], np.broadcast_to(got[0] - x[0], (4, 4)), atol=1e-12)
    assert not np.allclose(got[0] - x[0], got[4] - x[4])


@pytest.mark.usefixtures("x64")
def test_heap_size_one_is_per_input_and_a_whole_batch_heap_is_batch_universal():
    W, x, y = _linear_problem(n=8)
    key = jax.random.PRNGKey(0)
    per_input = train.adversarial.shared_examples(LINEAR, jnp.asarray(W), jnp.asarray(x), jnp.asarray(y),
                                                  train.Adversary("sat", 0.1, 5, 0.05, 1), key)
    deltas = np.asarray(per_input) - x
    assert len({tuple(np.round(r, 9)) for r in deltas}) > 1
    for b in range(len(x)):  # each input's own ascent: its CE rises from the start
        assert _ce(W, per_input[b:b + 1], y[b:b + 1]) >= _ce(W, x[b:b + 1], y[b:b + 1])
    shared = train.adversarial.shared_examples(LINEAR, jnp.asarray(W), jnp.asarray(x), jnp.asarray(y),
                                               train.Adversary("sat", 0.1, 5, 0.05, 8), key)
    np.testing.assert_allclose(np.asarray(shared) - x, np.broadcast_to(np.asarray(shared)[0] - x[0], x.shape),
                               atol=1e-12)


def _ce(W, x, y):
    p = _softmax(np.asarray(x) @ W)
    return float(-np.mean(np.log(p[np.arange(len(y)), y])))


@pytest.mark.usefixtures("x64")
def test_class_wise_uat_step_matches_a_float64_reference():
    W, x, y = _linear_problem(n=6, k=3)
    y = np.array([0, 0, 1, 0, 1, 1])  # class 2 absent from the batch: its delta stays put
    uap = np.random.default_rng(1).uniform(-0.05, 0.05, size=(3, 4))
    state = train.TrainState.create(apply_fn=LINEAR_DICT, params={"W": jnp.asarray(W)}, tx=optax.sgd(0.1),
                                    uap=jnp.asarray(uap))
    adversary = train.Adversary("cw_uat", eps=0.06, steps=1, step_size=0.03)
    new, aux = train.train_step(state, jnp.asarray(x), jnp.asarray(y), train.step_key(0, 0), 0.0, None,
                                adversary=adversary)
    inputs = x + uap[y]
    assert float(aux["loss"]) == pytest.approx(_ce(W, inputs, y), rel=1e-12)
    g = _ce_input_grad(W, inputs, y) / len(y)  # the batch-mean loss's gradient
    want = uap.copy()
    for k in (0, 1):
        want[k] = np.clip(uap[k] + 0.03 * np.sign(g[y == k].sum(0)), -0.06, 0.06)
    np.testing.assert_allclose(new.uap, want, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(new.uap[2], uap[2])
    # The model's step is SGD on the same loss: W - 0.1 dL/dW.
    p = _softmax(inputs @ W)
    p[np.arange(6), y] -= 1.0
    np.testing.assert_allclose(new.params["W"], W - 0.1 * inputs.T @ p / 6, rtol=1e-12)


@pytest.mark.usefixtures("x64")
def test_sat_step_trains_on_the_shared_examples():
    W, x, y = _linear_problem(n=8)
    state = train.TrainState.create(apply_fn=LINEAR_DICT, params={"W": jnp.asarray(W)}, tx=optax.sgd(0.1),
                                    uap=jnp.zeros((4,)))
    adversary = train.Adversary("sat", eps=0.1, steps=2, step_size=0.05, heap_size=4)
    key = train.step_key(0, 0)
    new, aux = train.train_step(state, jnp.asarray(x), jnp.asarray(y), key, 0.0, None, adversary=adversary)
    _, adv_key = jax.random.split(key)
    examples = np.asarray(train.adversarial.shared_examples(LINEAR, jnp.asarray(W), jnp.asarray(x), jnp.asarray(y),
                                                            adversary, adv_key))
    assert float(aux["loss"]) == pytest.approx(_ce(W, examples, y), rel=1e-12)
    assert float(aux["loss"]) > _ce(W, x, y)
    np.testing.assert_array_equal(new.uap, state.uap)  # SAT keeps nothing between steps


@pytest.mark.parametrize("kind", ["sat", "cw_uat"])
def test_digits_training_steps_lower_the_adversarial_loss(kind):
    ds = jacuap.load_dataset("digits")
    model = jacuap.create_model("mlp", 10, ds.mean, ds.std)
    config = configs.override(configs.get_config("digits"), adv_training=kind, adv_eps=0.1, adv_steps=2)
    state = train.create_train_state(model, jax.random.PRNGKey(0), ds.image_shape, optax.adam(1e-2),
                                     class_wise_uaps=10 if kind == "cw_uat" else 0)
    assert state.uap.shape == ((10,) if kind == "cw_uat" else ()) + ds.image_shape
    adversary = train.make_adversary(config)
    assert adversary.kind == kind and adversary.heap_size == (16 if kind == "sat" else 0)
    step = jax.jit(train.train_step, static_argnames=train.STATIC_ARGNAMES)
    x, y = ds.train_images[:128], ds.train_labels[:128]
    losses = []
    for i in range(8):
        state, aux = step(state, x, y, train.step_key(0, i), 0.0, None, None, adversary)
        losses.append(float(aux["loss"]))
    assert losses[-1] < losses[0]
    if kind == "cw_uat":
        assert float(jnp.max(jnp.abs(state.uap))) <= 0.1 + 1e-6
        assert len({tuple(np.sign(np.asarray(state.uap[k])).ravel()[:20]) for k in range(10)}) > 1


@pytest.mark.parametrize("overrides,message", [
    ({"adv_heap_size": 0}, "adv_heap_size must be a positive integer"),
    ({"adv_heap_size": -3}, "adv_heap_size must be a positive integer"),
    ({"adv_training": "shared"}, "choose one of none, pgd, uat, trades, sat, cw_uat"),
])
def test_fields_are_validated(overrides, message):
    with pytest.raises(ConfigError, match=message):
        configs.validate(configs.override(configs.get_config("digits"), **overrides))


# --- SIGKILL and resume: a real train.py, killed after a checkpoint, resumed, equal to the uninterrupted run.

ARGS = [f"--config={configs.config_path('digits')}", "--config.num_epochs=1", "--config.batch_size=64",
        "--config.checkpoint_every_steps=3", "--config.max_to_keep=100", "--config.eval_num_inputs=64",
        "--config.progress=False", "--config.jr_lambda=0", "--config.adv_steps=2"]
TOTAL_STEPS = 1437 // 64


def _config(kind):
    config = configs.get_config("digits")
    config.update(num_epochs=1, batch_size=64, checkpoint_every_steps=3, max_to_keep=100, eval_num_inputs=64,
                  progress=False, jr_lambda=0.0, adv_steps=2, adv_training=kind)
    return config


def _state(workdir, kind):
    restored = train.restore_model(workdir)
    tx = train.make_optimizer(_config(kind), restored.meta["steps_per_epoch"])
    template = train.create_train_state(restored.model, jax.random.PRNGKey(0), (8, 8, 1), tx,
                                        class_wise_uaps=10 if kind == "cw_uat" else 0)
    return checkpoints.restore(workdir, template)[1]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sat", "cw_uat"])
def test_sigkill_then_resume_is_bitwise(tmp_path, kind):
    reference, workdir = str(tmp_path / "reference"), str(tmp_path / "w")
    train.train_and_evaluate(_config(kind), reference, mesh=parallel.make_mesh(jax.devices()[:1]))
    env = one_device_env()
    proc = subprocess.Popen([sys.executable, "train.py", f"--workdir={workdir}", *ARGS,
                             f"--config.adv_training={kind}"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 180
    while (checkpoints.latest_step(workdir) or 0) < 6:
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        assert time.time() < deadline, "no checkpoint 6 within 180 s"
        time.sleep(0.005)
    proc.kill()
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    killed_at = checkpoints.latest_step(workdir)
    assert 6 <= killed_at < TOTAL_STEPS
    if kind == "cw_uat":
        mid = _state(workdir, kind)
        assert mid.uap.shape == (10, 8, 8, 1) and float(jnp.max(jnp.abs(mid.uap))) > 0
    train.train_and_evaluate(_config(kind), workdir, mesh=parallel.make_mesh(jax.devices()[:1]))
    a, b = _state(reference, kind), _state(workdir, kind)
    assert int(a.step) == int(b.step) == TOTAL_STEPS
    jax.tree_util.tree_map(np.testing.assert_array_equal, (a.params, a.opt_state, a.uap),
                           (b.params, b.opt_state, b.uap))
    lines = lambda w: [{k: v for k, v in json.loads(l).items() if k not in ("train_seconds", "step_seconds")}
                       for l in open(os.path.join(w, "metrics.jsonl"))]
    assert lines(workdir) == lines(reference)
