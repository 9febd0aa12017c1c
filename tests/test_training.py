"""Training: loss convention, a tiny run end to end, resume, divergence, bad input."""

import functools
import json
import os
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jacuap
from configs import default
from jacuap import checkpoints, jacobian, training

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(**overrides):
    config = default.get_config()
    config.update(dataset="digits", model="mlp", num_epochs=2, batch_size=256,
                  jr_lambda=0.5, jr_num_proj=1, progress=False, eval_num_inputs=100)
    config.update(**overrides)
    return config


def test_loss_penalty_is_half_the_normalized_jacobian_norm():
    # jr_space="normalized": (1/2) mean ||J(x) diag(std)||_F^2, per channel std.
    std = (0.2, 0.5, 0.9)
    model = jacuap.models.MODELS["resnet_tiny"](num_classes=4, mean=(0.4,) * 3, std=std)
    params = jacuap.init_params(model, jax.random.PRNGKey(0), (6, 6, 3))
    apply_fn = jacuap.make_apply_fn(model)
    x = jax.random.uniform(jax.random.PRNGKey(1), (3, 6, 6, 3))
    y = jnp.array([0, 1, 2])
    _, aux = training.loss_fn(params, apply_fn, x, y, 1.0, None, None, input_std=std)
    jac = jacobian.input_jacobian(apply_fn, params, x)  # (B, K, H, W, C)
    weighted = jnp.sum(jnp.square(jac) * jnp.square(jnp.asarray(std)), axis=(1, 2, 3, 4))
    np.testing.assert_allclose(aux["penalty"], 0.5 * weighted.mean(), rtol=1e-4)
    _, aux_pix = training.loss_fn(params, apply_fn, x, y, 1.0, None, None, input_std=None)
    np.testing.assert_allclose(aux_pix["penalty"], 0.5 * jnp.sum(jnp.square(jac), axis=(1, 2, 3, 4)).mean(),
                               rtol=1e-4)
    np.testing.assert_allclose(aux["loss"], aux["ce"] + aux["penalty"], rtol=1e-6)


def test_gradient_of_penalty_matches_finite_difference():
    # The double-backprop gradient of the penalty w.r.t. a parameter.
    with jax.enable_x64(True):
        model = jacuap.models.MODELS["mlp"](num_classes=3, hidden=(5,), mean=(0.5,), std=(0.3,))
        params = jacuap.init_params(model, jax.random.PRNGKey(0), (2, 2, 1))
        params = jax.tree_util.tree_map(lambda p: p.astype(jnp.float64), params)
        apply_fn = jacuap.make_apply_fn(model)
        x = jax.random.uniform(jax.random.PRNGKey(1), (4, 2, 2, 1), jnp.float64)
        y = jnp.array([0, 1, 2, 0])
        loss = lambda p: training.loss_fn(p, apply_fn, x, y, 0.7, None, None, (0.3,))[0]
        grad = jax.grad(loss)(params)["dense0"]["kernel"][1, 2]
        h = 1e-6
        bump = lambda s: jax.tree_util.tree_map_with_path(
            lambda path, p: p.at[1, 2].add(s) if "dense0" in str(path) and "kernel" in str(path) else p,
            params)
        fd = (loss(bump(h)) - loss(bump(-h))) / (2 * h)
        np.testing.assert_allclose(grad, fd, rtol=1e-6)


def test_train_and_evaluate_writes_outputs(tmp_path):
    workdir = str(tmp_path / "run")
    summary = training.train_and_evaluate(tiny_config(), workdir)
    for key in ("dataset", "model", "jr_lambda", "test_accuracy", "mean_jacobian_frobenius_sq",
                "stacked_spectral_norm", "train_seconds"):
        assert key in summary
    assert summary["test_accuracy"] > 0.5
    assert summary["mean_jacobian_frobenius_sq"] > 0 and summary["stacked_spectral_norm"] > 0
    lines = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
    assert [l["epoch"] for l in lines] == [1, 2]
    assert {"loss", "ce", "penalty", "train_accuracy", "test_accuracy"} <= set(lines[0])
    assert json.load(open(os.path.join(workdir, "summary.json"))) == summary
    # The summary's Jacobian numbers are reproducible from the restored model.
    restored = training.restore_model(workdir)
    x = jacuap.load_dataset("digits").test_images[:100]
    fro = jacobian.frobenius_sq(restored.apply_fn, restored.params, x)
    np.testing.assert_allclose(summary["mean_jacobian_frobenius_sq"], float(fro.mean()), rtol=1e-4)
    sigma, _ = jacobian.stacked_spectral_norm(restored.apply_fn, restored.params, x, method="gram")
    np.testing.assert_allclose(summary["stacked_spectral_norm"], float(sigma), rtol=1e-4)


def test_jr_lowers_the_jacobian_norm(tmp_path):
    plain = training.train_and_evaluate(tiny_config(jr_lambda=0.0, num_epochs=4), str(tmp_path / "a"))
    jr = training.train_and_evaluate(tiny_config(jr_lambda=0.5, num_epochs=4), str(tmp_path / "b"))
    assert jr["mean_jacobian_frobenius_sq"] < plain["mean_jacobian_frobenius_sq"] / 2
    assert jr["stacked_spectral_norm"] < plain["stacked_spectral_norm"]


def _params(workdir):
    return training.restore_model(workdir).params


def _signal_at_step(monkeypatch, n):
    """Sends SIGTERM to this process during the ``n``-th training step."""
    real_key = training._step_key
    calls = {"n": 0}

    def key_then_signal(seed, step):
        # Called once per step, outside jit.
        calls["n"] += 1
        if calls["n"] == n:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_key(seed, step)

    monkeypatch.setattr(training, "_step_key", key_then_signal)
    return lambda: monkeypatch.setattr(training, "_step_key", real_key)


def test_resume_at_epoch_boundary_matches_uninterrupted_run(tmp_path, monkeypatch):
    config = tiny_config(num_epochs=3)
    full = str(tmp_path / "full")
    training.train_and_evaluate(config, full)
    split = str(tmp_path / "split")
    steps_per_epoch = 1437 // 256
    undo = _signal_at_step(monkeypatch, steps_per_epoch)  # the last step of epoch 1
    with pytest.raises(training.Preempted):
        training.train_and_evaluate(config, split)
    undo()
    assert checkpoints.latest_step(split) == steps_per_epoch
    training.train_and_evaluate(config, split)
    jax.tree_util.tree_map(np.testing.assert_array_equal, _params(full), _params(split))
    lines = [json.loads(l) for l in open(os.path.join(split, "metrics.jsonl"))]
    assert [l["epoch"] for l in lines] == [1, 2, 3]
    full_lines = [json.loads(l) for l in open(os.path.join(full, "metrics.jsonl"))]
    assert [l["test_accuracy"] for l in lines] == [l["test_accuracy"] for l in full_lines]


def test_mid_epoch_checkpoint_resumes_bitwise(tmp_path, monkeypatch):
    # Stop after step 3 of an epoch (as SIGTERM would), resume, compare.
    config = tiny_config(num_epochs=2, batch_size=128, checkpoint_every_steps=3)
    full = str(tmp_path / "full")
    training.train_and_evaluate(config, full)
    cut = str(tmp_path / "cut")
    undo = _signal_at_step(monkeypatch, 3)
    with pytest.raises(training.Preempted, match="resume"):
        training.train_and_evaluate(config, cut)
    undo()
    assert checkpoints.latest_step(cut) == 3
    training.train_and_evaluate(config, cut)
    jax.tree_util.tree_map(np.testing.assert_array_equal, _params(full), _params(cut))


def test_divergence_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    config = tiny_config(num_epochs=3)
    workdir = str(tmp_path / "nan")
    steps_per_epoch = 1437 // 256
    real_step = training.train_step

    @functools.wraps(real_step)  # keeps the signature, hence jit's static arguments
    def nan_in_second_epoch(state, *args, **kwargs):
        new_state, aux = real_step(state, *args, **kwargs)
        bad = state.step >= steps_per_epoch + 2
        aux = dict(aux, loss=jnp.where(bad, jnp.nan, aux["loss"]))
        return new_state, aux

    monkeypatch.setattr(training, "train_step", nan_in_second_epoch)
    with pytest.raises(training.TrainingDiverged, match=f"step {steps_per_epoch}"):
        training.train_and_evaluate(config, workdir)
    assert checkpoints.latest_step(workdir) == steps_per_epoch
    assert not os.path.exists(os.path.join(workdir, "summary.json"))


BAD_CONFIGS = [
    (dict(dataset="imagenet"), "unknown dataset"),
    (dict(model="vit"), "unknown model"),
    (dict(jr_lambda=-0.1), "jr_lambda"),
    (dict(num_epochs=0), "num_epochs"),
    (dict(batch_size=0), "batch_size"),
    (dict(jr_num_proj=0), "jr_num_proj"),
    (dict(optimizer="lbfgs"), "optimizer"),
    (dict(data_dir="/nonexistent/dir"), "data_dir"),
    (dict(adv_training="trades"), "adv_training"),
    (dict(adv_eps=1.5), "adv_eps"),
    (dict(jr_space="logits"), "jr_space"),
]


@pytest.mark.parametrize("overrides,message", BAD_CONFIGS)
def test_bad_config_is_rejected_before_writing(tmp_path, overrides, message):
    workdir = tmp_path / "w"
    with pytest.raises(training.ConfigError, match=message):
        training.train_and_evaluate(tiny_config(**overrides), str(workdir))
    assert not workdir.exists()


def test_workdir_with_other_config_is_rejected(tmp_path):
    workdir = str(tmp_path / "w")
    training.train_and_evaluate(tiny_config(num_epochs=1), workdir)
    with pytest.raises(checkpoints.CheckpointError, match="another config"):
        training.train_and_evaluate(tiny_config(num_epochs=1, model="cnn"), workdir)


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    workdir = str(tmp_path / "w")
    training.train_and_evaluate(tiny_config(num_epochs=1), workdir)
    step = checkpoints.latest_step(workdir)
    state_dir = os.path.join(workdir, "checkpoints", str(step), "state")
    for root, _, files in os.walk(state_dir):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "r+b") as f:
                f.truncate(max(0, os.path.getsize(path) // 3))
    with pytest.raises(checkpoints.CheckpointError):
        training.restore_model(workdir)


def _run(args, cwd=ROOT):
    return subprocess.run([sys.executable] + args, cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("flag,message", [
    ("--config.dataset=imagenet", "unknown dataset"),
    ("--config.jr_lambda=-1", "jr_lambda"),
    ("--config.nonexistent=3", "nonexistent"),
])
def test_train_py_bad_input_is_one_line_exit_2(tmp_path, flag, message):
    workdir = tmp_path / "w"
    proc = _run(["train.py", f"--workdir={workdir}", "--config=configs/default.py", flag])
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not workdir.exists()


@pytest.mark.slow
def test_train_py_end_to_end(tmp_path):
    workdir = tmp_path / "w"
    args = ["train.py", f"--workdir={workdir}", "--config=configs/digits.py",
            "--config.num_epochs=2", "--config.progress=False"]
    proc = _run(args)
    assert proc.returncode == 0, proc.stderr
    assert "test_accuracy" in proc.stdout
    summary = json.load(open(workdir / "summary.json"))
    assert summary["dataset"] == "digits" and summary["num_epochs"] == 2


def test_readme_library_example(tmp_path, monkeypatch):
    text = open(os.path.join(ROOT, "README.md")).read()
    code = text.split("## The library", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(ROOT)
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert (tmp_path / "runs" / "readme_example" / "summary.json").exists()
    assert namespace["v"].shape == (8, 8, 1)


def _digits_state(batch=64):
    ds = jacuap.load_dataset("digits")
    model = jacuap.create_model("mlp", 10, ds.mean, ds.std)
    import optax
    state = training.create_train_state(model, jax.random.PRNGKey(0), ds.image_shape, optax.adam(1e-3))
    return state, ds.train_images[:batch], ds.train_labels[:batch]


def test_uat_step_keeps_a_shared_perturbation_in_the_ball():
    state, x, y = _digits_state()
    adversary = training.Adversary("uat", 0.1, 1, 0.025)
    step = jax.jit(training.train_step, static_argnames=("jr_lambda", "jr_num_proj", "input_std", "adversary"))
    losses = []
    for i in range(6):
        state, aux = step(state, x, y, jax.random.PRNGKey(i), 0.0, None, None, adversary)
        losses.append(float(aux["ce"]))
    assert state.uap.shape == (8, 8, 1)
    assert 0 < float(jnp.max(jnp.abs(state.uap))) <= 0.1 + 1e-7
    # Sign steps of 0.025: after 6 steps every pixel moved, and some hit the bound.
    assert float(jnp.max(jnp.abs(state.uap))) == pytest.approx(0.1)


def test_pgd_training_step_trains_on_harder_inputs():
    state, x, y = _digits_state()
    plain = training.train_step(state, x, y, jax.random.PRNGKey(0), 0.0, None)[1]
    adv = training.train_step(state, x, y, jax.random.PRNGKey(0), 0.0, None, None,
                              training.Adversary("pgd", 0.2, 5, 0.1))[1]
    assert float(adv["ce"]) > float(plain["ce"])


@pytest.mark.parametrize("kind", ["pgd", "uat"])
def test_adversarial_training_runs_end_to_end(tmp_path, kind):
    summary = training.train_and_evaluate(
        tiny_config(jr_lambda=0.0, adv_training=kind, adv_eps=0.1, adv_steps=3, num_epochs=1),
        str(tmp_path / kind))
    assert summary["adv_training"] == kind and summary["test_accuracy"] > 0.3
