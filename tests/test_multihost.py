"""Two real JAX processes on this machine train as one (jax.distributed + gloo).

``train.py --multihost`` is started twice, as processes 0 and 1 of a job
whose coordinator is ``127.0.0.1:PORT`` (``JAX_COORDINATOR_ADDRESS``,
``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``, read by
``jacuap.parallel.initialize_multihost``).  Each process has one CPU device,
so the mesh has 2 devices on 2 hosts; each process builds only its half of
every batch, the gradients meet in gloo all-reduces, both join each orbax
save into the shared workdir, and only process 0 writes files and prints.
The pair resumes a one-process run from its step-4 checkpoint (orbax restore
onto the 2-process mesh), trains the rest of the epoch and saves together;
the result must equal the uninterrupted one-process run to float rounding
(``rtol=1e-4, atol=3e-5`` on the parameters).
"""

import json
import os
import shutil
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from jacuap import configs, parallel, train
from jacuap.train import checkpoints
from subprocess_env import one_device_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGS = [f"--config={configs.config_path('digits')}", "--config.num_epochs=1", "--config.batch_size=128",
        "--config.checkpoint_every_steps=4", "--config.max_to_keep=5", "--config.eval_num_inputs=64", "--config.progress=False"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch_pair(workdir, extra=()):
    port = _free_port()
    procs = []
    for pid in range(2):
        env = one_device_env(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
                             JAX_PROCESS_ID=str(pid))  # one CPU device per process
        procs.append(subprocess.Popen(
            [sys.executable, "train.py", f"--workdir={workdir}", "--multihost", *ARGS, *extra],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        outs.append((p.returncode, out, err))
    return outs


def _config():
    config = configs.get_config("digits")
    config.update(num_epochs=1, batch_size=128, checkpoint_every_steps=4, max_to_keep=5, eval_num_inputs=64,
                  progress=False)
    return config


@pytest.mark.slow
def test_two_processes_resume_a_run_and_match_one_process(tmp_path):
    # The one-process reference: 11 steps, checkpoints at 4, 8 and 11.
    one = str(tmp_path / "one")
    single = train.train_and_evaluate(_config(), one, mesh=parallel.make_mesh(jax.devices()[:1]))
    steps = 1437 // 128
    # Its step-4 checkpoint, alone in a fresh workdir: the pair must restore it
    # (a one-device checkpoint onto a two-process mesh), train steps 5..11 as
    # one job, and save at 8 and 11 together.
    workdir = tmp_path / "multi"
    shutil.copytree(one, workdir)
    for name in os.listdir(workdir / "checkpoints"):
        if name != "4":
            shutil.rmtree(workdir / "checkpoints" / name)
    for name in ("metrics.jsonl", "summary.json"):
        os.remove(workdir / name)
    assert checkpoints.latest_step(str(workdir)) == 4

    (rc0, out0, err0), (rc1, out1, err1) = _launch_pair(workdir)
    assert rc0 == 0 and rc1 == 0, (err0[-2000:], err1[-2000:])
    # Only process 0 prints (gloo's own C++ banner aside).
    assert "test_accuracy" in out0 and "summary" not in out1, out1
    multi = json.load(open(workdir / "summary.json"))
    assert multi["steps"] == steps
    assert sorted(int(n) for n in os.listdir(workdir / "checkpoints") if n.isdigit()) == [4, 8, 11]
    assert not [n for n in os.listdir(workdir) if n.startswith(".tmp-")]
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=3e-5),
                           train.restore_model(one).params, train.restore_model(str(workdir)).params)
    assert multi["test_accuracy"] == pytest.approx(single["test_accuracy"], abs=2 / 360)
    for key in ("mean_jacobian_frobenius_sq", "stacked_spectral_norm"):
        assert multi[key] == pytest.approx(single[key], rel=1e-4)
    lines = [json.loads(l) for l in open(workdir / "metrics.jsonl")]
    ref = [json.loads(l) for l in open(os.path.join(one, "metrics.jsonl"))]
    assert len(lines) == 1 and lines[0]["loss"] == pytest.approx(ref[0]["loss"], rel=1e-5)


def test_multihost_without_a_cluster_is_one_line_error(tmp_path):
    env = dict(os.environ, JAX_COORDINATOR_ADDRESS="", JAX_NUM_PROCESSES="", JAX_PROCESS_ID="",
               JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "train.py", f"--workdir={tmp_path / 'w'}", "--multihost", *ARGS],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "--multihost" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
