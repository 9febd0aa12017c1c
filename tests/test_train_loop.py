"""train_and_evaluate: a tiny run end to end, resume, divergence, bad input, the programs' view."""

import functools
import json
import os
import shutil
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jacuap
from jacuap import configs, jacobian, train
from jacuap.train import checkpoints
from jacuap.configs import default
from jacuap.train import loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS_PER_EPOCH = 1437 // 256  # digits' training split, batch_size 256


def tiny_config(**overrides):
    config = default.get_config()
    config.update(dataset="digits", model="mlp", num_epochs=2, batch_size=256,
                  jr_lambda=0.5, jr_num_proj=1, progress=False, eval_num_inputs=100)
    config.update(**overrides)
    return config


@pytest.fixture(scope="module")
def two_epochs(tmp_path_factory):
    """``tiny_config()`` trained uninterrupted: (workdir, summary)."""
    workdir = str(tmp_path_factory.mktemp("two_epochs") / "run")
    return workdir, train.train_and_evaluate(tiny_config(), workdir)


def test_train_and_evaluate_writes_outputs(two_epochs):
    workdir, summary = two_epochs
    for key in ("dataset", "model", "jr_lambda", "test_accuracy", "mean_jacobian_frobenius_sq",
                "stacked_spectral_norm", "train_seconds"):
        assert key in summary
    assert summary["test_accuracy"] > 0.5
    assert summary["mean_jacobian_frobenius_sq"] > 0 and summary["stacked_spectral_norm"] > 0
    lines = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
    assert [l["epoch"] for l in lines] == [1, 2]
    assert {"loss", "ce", "penalty", "train_accuracy", "test_accuracy"} <= set(lines[0])
    assert json.load(open(os.path.join(workdir, "summary.json"))) == summary
    assert json.load(open(os.path.join(workdir, "config.json")))["jr_lambda"] == 0.5
    # The summary's Jacobian numbers and accuracy are reproducible from the restored model.
    restored = train.restore_model(workdir)
    assert restored.step == 2 * STEPS_PER_EPOCH
    ds = jacuap.load_dataset("digits")
    x = ds.test_images[:100]
    fro = jacobian.frobenius_sq(restored.apply_fn, restored.params, x)
    np.testing.assert_allclose(summary["mean_jacobian_frobenius_sq"], float(fro.mean()), rtol=1e-4)
    sigma, _ = jacobian.stacked_spectral_norm(restored.apply_fn, restored.params, x, method="gram")
    np.testing.assert_allclose(summary["stacked_spectral_norm"], float(sigma), rtol=1e-4)
    assert summary["test_accuracy"] == jacuap.metrics.accuracy(restored.apply_fn, restored.params,
                                                               ds.test_images, ds.test_labels)
    assert lines[-1]["test_accuracy"] == summary["test_accuracy"]


@pytest.mark.slow
def test_jr_lowers_the_jacobian_norm(tmp_path):
    plain = train.train_and_evaluate(tiny_config(jr_lambda=0.0, num_epochs=4), str(tmp_path / "a"))
    jr = train.train_and_evaluate(tiny_config(jr_lambda=0.5, num_epochs=4), str(tmp_path / "b"))
    assert jr["mean_jacobian_frobenius_sq"] < plain["mean_jacobian_frobenius_sq"] / 2
    assert jr["stacked_spectral_norm"] < plain["stacked_spectral_norm"]


def _params(workdir):
    return train.restore_model(workdir).params


def _signal_at_step(monkeypatch, n):
    """Sends SIGTERM to this process during the ``n``-th training step."""
    real_key = train.step_key
    calls = {"n": 0}

    def key_then_signal(seed, step):
        # Called once per step, outside jit.
        calls["n"] += 1
        if calls["n"] == n:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_key(seed, step)

    monkeypatch.setattr(loop, "step_key", key_then_signal)
    return lambda: monkeypatch.setattr(loop, "step_key", real_key)


def test_resume_at_epoch_boundary_matches_uninterrupted_run(tmp_path, monkeypatch, two_epochs):
    full, _ = two_epochs
    split = str(tmp_path / "split")
    undo = _signal_at_step(monkeypatch, STEPS_PER_EPOCH)  # the last step of epoch 1
    with pytest.raises(train.Preempted):
        train.train_and_evaluate(tiny_config(), split)
    undo()
    assert checkpoints.latest_step(split) == STEPS_PER_EPOCH
    train.train_and_evaluate(tiny_config(), split)
    jax.tree_util.tree_map(np.testing.assert_array_equal, _params(full), _params(split))
    lines = [json.loads(l) for l in open(os.path.join(split, "metrics.jsonl"))]
    assert [l["epoch"] for l in lines] == [1, 2]
    full_lines = [json.loads(l) for l in open(os.path.join(full, "metrics.jsonl"))]
    assert [l["test_accuracy"] for l in lines] == [l["test_accuracy"] for l in full_lines]
    assert [l["loss"] for l in lines] == [l["loss"] for l in full_lines]


def test_mid_epoch_checkpoint_resumes_bitwise(tmp_path, monkeypatch, two_epochs):
    # Stop after step 3 of an epoch (as SIGTERM would), resume, compare with the
    # uninterrupted run (checkpoint_every_steps is not part of the run's fingerprint).
    full, _ = two_epochs
    config = tiny_config(checkpoint_every_steps=3)
    cut = str(tmp_path / "cut")
    undo = _signal_at_step(monkeypatch, 3)
    with pytest.raises(train.Preempted, match="resume"):
        train.train_and_evaluate(config, cut)
    undo()
    assert checkpoints.latest_step(cut) == 3
    assert checkpoints.restore_meta(cut)[1]["epoch_sums"]["loss"] > 0  # the epoch's running sums
    train.train_and_evaluate(config, cut)
    jax.tree_util.tree_map(np.testing.assert_array_equal, _params(full), _params(cut))
    line = lambda w: [json.loads(l)["loss"] for l in open(os.path.join(w, "metrics.jsonl"))]
    assert line(cut) == line(full)


def test_divergence_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    config = tiny_config(num_epochs=3)
    workdir = str(tmp_path / "nan")
    real_step = train.train_step

    @functools.wraps(real_step)  # keeps the signature, hence jit's static arguments
    def nan_in_second_epoch(state, *args, **kwargs):
        new_state, aux = real_step(state, *args, **kwargs)
        bad = state.step >= STEPS_PER_EPOCH + 2
        aux = dict(aux, loss=jnp.where(bad, jnp.nan, aux["loss"]))
        return new_state, aux

    monkeypatch.setattr(loop, "train_step", nan_in_second_epoch)
    with pytest.raises(train.TrainingDiverged, match=f"step {STEPS_PER_EPOCH}"):
        train.train_and_evaluate(config, workdir)
    assert checkpoints.latest_step(workdir) == STEPS_PER_EPOCH
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
    (dict(adv_training="mart"), "adv_training"),
    (dict(adv_eps=1.5), "adv_eps"),
    (dict(jr_space="logits"), "jr_space"),
]


@pytest.mark.parametrize("overrides,message", BAD_CONFIGS)
def test_bad_config_is_rejected_before_writing(tmp_path, overrides, message):
    workdir = tmp_path / "w"
    with pytest.raises(train.ConfigError, match=message):
        train.train_and_evaluate(tiny_config(**overrides), str(workdir))
    assert not workdir.exists()


def test_workdir_with_other_config_is_rejected(tmp_path, two_epochs):
    with pytest.raises(checkpoints.CheckpointError, match="another config .*'jr_lambda': \\(0.5, 0.25\\)"):
        train.train_and_evaluate(tiny_config(jr_lambda=0.25), two_epochs[0])


def test_corrupt_checkpoint_is_a_clear_error(tmp_path, two_epochs):
    workdir = str(tmp_path / "w")
    shutil.copytree(two_epochs[0], workdir)
    step = checkpoints.latest_step(workdir)
    state_dir = os.path.join(workdir, "checkpoints", str(step), "state")
    for root, _, files in os.walk(state_dir):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "r+b") as f:
                f.truncate(max(0, os.path.getsize(path) // 3))
    with pytest.raises(checkpoints.CheckpointError):
        train.restore_model(workdir)


def _run(args, cwd=ROOT):
    return subprocess.run([sys.executable] + args, cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("flag,message", [
    ("--config.dataset=imagenet", "unknown dataset"),
    ("--config.jr_lambda=-1", "jr_lambda"),
    ("--config.nonexistent=3", "nonexistent"),
])
def test_train_py_bad_input_is_one_line_exit_2(tmp_path, flag, message):
    workdir = tmp_path / "w"
    proc = _run(["train.py", f"--workdir={workdir}", f"--config={configs.config_path('default')}", flag])
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not workdir.exists()


@pytest.mark.slow
def test_train_py_end_to_end(tmp_path):
    workdir = tmp_path / "w"
    args = ["train.py", f"--workdir={workdir}", f"--config={configs.config_path('digits')}",
            "--config.num_epochs=2", "--config.progress=False"]
    proc = _run(args)
    assert proc.returncode == 0, proc.stderr
    assert "test_accuracy" in proc.stdout
    summary = json.load(open(workdir / "summary.json"))
    assert summary["dataset"] == "digits" and summary["num_epochs"] == 2


@pytest.mark.slow
def test_readme_library_example(tmp_path, monkeypatch):
    text = open(os.path.join(ROOT, "README.md")).read()
    code = text.split("## The library", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert (tmp_path / "runs" / "readme_example" / "summary.json").exists()
    assert namespace["v"].shape == (8, 8, 1)


@pytest.mark.parametrize("kind", ["pgd", "uat", "sat", "cw_uat"])
def test_adversarial_training_runs_end_to_end(tmp_path, kind):
    summary = train.train_and_evaluate(
        tiny_config(jr_lambda=0.0, adv_training=kind, adv_eps=0.1, adv_steps=3, num_epochs=1),
        str(tmp_path / kind))
    assert summary["adv_training"] == kind and summary["test_accuracy"] > 0.3
    assert summary["adv_eps"] == 0.1


def test_epoch_permutation_is_a_pure_function_of_seed_and_epoch():
    a = train.epoch_permutation(0, 1, 100)
    assert sorted(a.tolist()) == list(range(100))
    np.testing.assert_array_equal(a, train.epoch_permutation(0, 1, 100))
    assert not np.array_equal(a, train.epoch_permutation(0, 2, 100))
    assert not np.array_equal(a, train.epoch_permutation(1, 1, 100))


def test_a_batch_larger_than_the_training_split_is_capped_and_said(tmp_path, capsys):
    summary = train.train_and_evaluate(tiny_config(num_epochs=1, batch_size=4096), str(tmp_path / "run"))
    assert "note: batch_size 4096 capped at the 1437 training examples" in capsys.readouterr().err
    assert summary["batch_size"] == 1437 and summary["steps"] == 1
