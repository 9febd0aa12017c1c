"""Faults injected into real train.py runs, and what must survive them.

* SIGTERM mid-epoch: a checkpoint of the current step, exit 0, a line saying
  how to resume.
* SIGKILL at a random step (possibly mid-save): the rerun resumes from the
  last complete checkpoint with the same data order and RNG stream and ends
  BITWISE equal (CPU, same seed) to an uninterrupted run: parameters,
  metrics.jsonl (bar wall-clock seconds) and summary.json.
* A partial checkpoint write (an orbax ``*.orbax-checkpoint-tmp`` directory)
  is never taken for a checkpoint, and is cleaned up.
* A truncated checkpoint file: a one-line CheckpointError naming the step
  and how to fall back to the previous one; following it resumes bitwise.
* A full disk (a 3.5 MB tmpfs, needs root; skipped otherwise): exit 1 with
  one line, the last complete checkpoint intact, and after freeing space
  the rerun finishes bitwise equal to the uninterrupted run.
"""

import dataclasses
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from jacuap import configs, parallel, train
from jacuap.train import checkpoints
from subprocess_env import one_device_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# digits MLP, 1 epoch of 22 steps, a checkpoint every 3 steps (all kept).
ARGS = [f"--config={configs.config_path('digits')}", "--config.num_epochs=1", "--config.batch_size=64",
        "--config.checkpoint_every_steps=3", "--config.max_to_keep=100", "--config.eval_num_inputs=64",
        "--config.progress=False"]
TOTAL_STEPS = 1437 // 64
CLOCK_KEYS = ("train_seconds", "step_seconds")


def _config():
    config = configs.get_config("digits")
    config.update(num_epochs=1, batch_size=64, checkpoint_every_steps=3, max_to_keep=100, eval_num_inputs=64,
                  progress=False)
    return config


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run, in this process on one device (as train.py runs here)."""
    workdir = str(tmp_path_factory.mktemp("reference") / "w")
    train.train_and_evaluate(_config(), workdir, mesh=parallel.make_mesh(jax.devices()[:1]))
    return workdir


def _start(workdir):
    env = one_device_env()
    return subprocess.Popen([sys.executable, "train.py", f"--workdir={workdir}", *ARGS], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _run(workdir):
    proc = _start(workdir)
    out, err = proc.communicate(timeout=240)
    return proc.returncode, out, err


def _wait_for_checkpoint(proc, workdir, at_least, timeout=180):
    deadline = time.time() + timeout
    while time.time() < deadline:
        step = checkpoints.latest_step(workdir)
        if step is not None and step >= at_least:
            return step
        if proc.poll() is not None:
            pytest.fail(f"train.py ended (rc {proc.returncode}) before checkpoint {at_least}: "
                        f"{proc.stderr.read()[-2000:]}")
        time.sleep(0.005)
    proc.kill()
    pytest.fail(f"no checkpoint >= {at_least} within {timeout}s")


def _strip_clock(record):
    return {k: v for k, v in record.items() if k not in CLOCK_KEYS}


def assert_same_run(workdir, reference):
    """Bitwise: parameters and optimizer state, every metrics line, the summary (clock aside)."""
    a, b = train.restore_model(reference), train.restore_model(workdir)
    assert a.step == b.step == TOTAL_STEPS
    jax.tree_util.tree_map(np.testing.assert_array_equal, a.params, b.params)
    lines = lambda w: [_strip_clock(json.loads(l)) for l in open(os.path.join(w, "metrics.jsonl"))]
    assert lines(workdir) == lines(reference)
    summary = lambda w: _strip_clock(json.load(open(os.path.join(w, "summary.json"))))
    assert summary(workdir) == summary(reference)


@pytest.mark.slow
def test_sigterm_then_sigkill_at_a_random_step_then_resume_is_bitwise(tmp_path, reference):
    workdir = str(tmp_path / "w")

    # 1. SIGTERM once the first checkpoint exists: save, exit 0, say how to resume.
    proc = _start(workdir)
    _wait_for_checkpoint(proc, workdir, 3)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    assert "rerun the same command to resume" in err and "Traceback" not in err, err[-2000:]
    stopped = checkpoints.latest_step(workdir)
    assert 3 <= stopped < TOTAL_STEPS

    # 2. SIGKILL at a random later step, perhaps in the middle of a save.
    rng = random.Random()
    target = rng.randrange(stopped + 1, TOTAL_STEPS - 6)
    delay = rng.uniform(0.0, 0.05)
    proc = _start(workdir)
    _wait_for_checkpoint(proc, workdir, target)
    time.sleep(delay)
    proc.kill()
    proc.communicate(timeout=60)
    info = f"(SIGKILL after checkpoint {target} + {delay:.3f}s)"
    assert proc.returncode == -signal.SIGKILL, f"train.py finished before the kill {info}"
    killed_at = checkpoints.latest_step(workdir)
    assert killed_at < TOTAL_STEPS, info

    # 3. A partial write of a later step (as a kill mid-save leaves) is not a checkpoint.
    partial = os.path.join(workdir, "checkpoints", f"{TOTAL_STEPS}.orbax-checkpoint-tmp-1234")
    os.makedirs(os.path.join(partial, "state"))
    with open(os.path.join(partial, "state", "garbage"), "wb") as f:
        f.write(b"\0" * 100)
    assert checkpoints.latest_step(workdir) == killed_at

    # 4. The rerun (what train.py runs, here without starting a third process) resumes
    #    and ends exactly where the uninterrupted run ended.
    train.train_and_evaluate(_config(), workdir)
    assert not os.path.exists(partial), info
    assert_same_run(workdir, reference)


def _truncate_tree(directory):
    for root, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "r+b") as f:
                f.truncate(os.path.getsize(path) // 3)


def test_truncated_checkpoint_is_a_clear_error_and_the_previous_one_resumes(tmp_path, reference):
    workdir = str(tmp_path / "w")
    shutil.copytree(reference, workdir)
    _truncate_tree(os.path.join(workdir, "checkpoints", str(TOTAL_STEPS)))
    with pytest.raises(checkpoints.CheckpointError) as info:
        train.train_and_evaluate(_config(), workdir)
    message = str(info.value)
    previous = TOTAL_STEPS // 3 * 3  # checkpoints every 3 steps and at the epoch's end: ..., 21, 22
    assert f"checkpoint {TOTAL_STEPS}" in message and f"resume from checkpoint {previous}" in message
    assert "\n" not in message
    # Following the advice resumes from the previous checkpoint and recomputes the rest exactly.
    shutil.rmtree(os.path.join(workdir, "checkpoints", str(TOTAL_STEPS)))
    train.train_and_evaluate(_config(), workdir)
    assert_same_run(workdir, reference)


def _mount_tmpfs(path, size):
    os.makedirs(path)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path],
                          capture_output=True).returncode == 0


@pytest.mark.slow
def test_full_disk_keeps_the_last_checkpoint_and_resumes_bitwise(tmp_path, reference):
    disk = str(tmp_path / "disk")
    if not _mount_tmpfs(disk, "3500k"):  # one checkpoint of this model is ~1 MB
        pytest.skip("cannot mount a small tmpfs (needs root) to simulate a full disk")
    try:
        workdir = os.path.join(disk, "w")
        rc, out, err = _run(workdir)
        assert rc == 1, err[-2000:]
        assert "No space left on device" in err and "Traceback" not in err, err[-3000:]
        assert len(err.strip().splitlines()) == 1, err[-3000:]
        last = checkpoints.latest_step(workdir)
        assert last is not None and last < TOTAL_STEPS
        assert f"checkpoint {last} is intact" in err
        assert train.restore_model(workdir).step == last  # complete and readable
        moved = str(tmp_path / "w")  # "free space": carry on from a roomier disk
        shutil.copytree(workdir, moved)
    finally:
        subprocess.run(["umount", disk], capture_output=True)
    train.train_and_evaluate(_config(), moved)  # what rerunning train.py does, without a new process
    assert_same_run(moved, reference)


def test_checkpoint_and_dataset_shape_mismatch_is_a_clear_error(tmp_path, reference, monkeypatch):
    # attack.py on data whose inputs are not the checkpoint's (e.g. another --config.data_dir).
    from jacuap import data, evaluation

    real = data.load_dataset

    def bigger_images(*args, **kwargs):
        ds = real(*args, **kwargs)
        up = lambda x: np.repeat(np.repeat(x, 2, axis=1), 2, axis=2)
        return dataclasses.replace(ds, train_images=up(ds.train_images), test_images=up(ds.test_images))

    monkeypatch.setattr(data, "load_dataset", bigger_images)
    request = evaluation.AttackRequest(workdir=reference, attacks=["sgd_uap"], norm="linf", eps=[0.1],
                                       out=str(tmp_path / "attack"), num_craft=32, num_eval=32, progress=False)
    with pytest.raises(checkpoints.CheckpointError, match=r"expects inputs \[8, 8, 1\], the dataset gives \[16, 16, 1\]"):
        evaluation.run_attacks(request)
    assert not (tmp_path / "attack").exists()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # orbax's reader tasks, after it raised
def test_checkpoint_of_another_model_is_a_clear_error(reference):
    # Restoring into a model of another shape (here 5 classes instead of 10).
    from jacuap import models

    meta = checkpoints.restore_meta(reference)[1]
    spec = meta["model_spec"]
    model = models.create_model(spec["name"], 5, spec["mean"], spec["std"])
    tx = train.make_optimizer(_config(), meta["steps_per_epoch"])
    template = train.create_train_state(model, jax.random.PRNGKey(0), tuple(spec["image_shape"]), tx)
    with pytest.raises(checkpoints.CheckpointError, match=f"checkpoint {TOTAL_STEPS} .*") as info:
        checkpoints.restore(reference, template)
    message = str(info.value)
    assert "does not fit this model" in message or "cannot be restored" in message
    assert "remove" not in message  # no advice to fall back: the older checkpoints do not fit either
