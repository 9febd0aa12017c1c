"""One workdir, one run, one config: the lock, the fingerprint, validation, repairs, signals, bad workdirs.

Each case checks the exit (or exception), the one line, and what is (not) left on disk.
The finished run every case starts from is one epoch of SGD on digits (constant schedule),
trained once in this process; subprocess cases run train.py only where a real process is
needed (exit codes, stderr, a lock held by another process, a real signal).
"""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import ml_collections
import pytest

from jacuap import configs, io, train
from jacuap.configs import default
from jacuap.errors import BusyError, CheckpointError, ConfigError
from jacuap.train import checkpoints, loop, runtime
from subprocess_env import one_device_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIELDS = dict(dataset="digits", model="mlp", num_epochs=1, batch_size=256, optimizer="sgd", momentum=0.9,
              learning_rate=0.05, lr_schedule="constant", jr_lambda=0.1, jr_num_proj=1, eval_num_inputs=32,
              progress=False)
ARGS = [f"--config={configs.config_path('digits')}"] + [f"--config.{k}={v}" for k, v in FIELDS.items()
                                                         if k not in ("dataset", "model", "jr_num_proj")]


def _config(**overrides):
    config = default.get_config()
    config.update(FIELDS)
    config.update(overrides)
    return config


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished run's workdir (never modified: cases work on copies)."""
    workdir = str(tmp_path_factory.mktemp("finished") / "w")
    train.train_and_evaluate(_config(), workdir)
    return workdir


@pytest.fixture
def copy(finished, tmp_path):
    workdir = str(tmp_path / "w")
    shutil.copytree(finished, workdir)
    return workdir


def _snapshot(workdir):
    """{relative path: bytes} of every file under ``workdir`` but the lock file."""
    out = {}
    for root, _, files in os.walk(workdir):
        for name in files:
            path = os.path.join(root, name)
            if name != io.LOCK_NAME:
                out[os.path.relpath(path, workdir)] = open(path, "rb").read()
    return out


def _train_py(workdir, *extra, timeout=300):
    env = one_device_env()
    return subprocess.run([sys.executable, "train.py", f"--workdir={workdir}", *ARGS, *extra], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _one_line(proc, code, *needles):
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == code, proc.stderr[-3000:]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# -- Validation: before anything is written ----------------------------------------------------

BAD = [
    (dict(seed=-1), "seed"),
    (dict(seed=2**32), "seed"),
    (dict(learning_rate=float("inf")), "learning_rate"),
    (dict(learning_rate=float("nan")), "learning_rate"),
    (dict(momentum=-5.0), "momentum"),
    (dict(momentum=1.0), "momentum"),
    (dict(momentum=float("nan")), "momentum"),
    (dict(max_to_keep=0), "max_to_keep"),
    (dict(eval_num_inputs=0), "eval_num_inputs"),
    (dict(eval_num_inputs=-1), "eval_num_inputs"),
    (dict(adv_eps=float("inf")), "adv_eps"),
    (dict(adv_step_size=float("inf")), "adv_step_size"),
    (dict(jr_lambda=float("nan")), "jr_lambda"),
]


@pytest.mark.parametrize("overrides,field", BAD, ids=lambda v: str(v) if isinstance(v, dict) else None)
def test_bad_value_is_a_one_line_config_error(overrides, field, tmp_path):
    config = _config()
    with config.unlocked(), config.ignore_type():
        config.update(overrides)
    with pytest.raises(ConfigError, match=field) as info:
        configs.validate(config)
    assert "\n" not in str(info.value)
    workdir = tmp_path / "w"
    with pytest.raises(ConfigError, match=field):
        train.train_and_evaluate(config, str(workdir))
    assert not workdir.exists()


def test_plain_dict_or_missing_field_is_a_config_error(tmp_path):
    workdir = tmp_path / "w"
    with pytest.raises(ConfigError, match="ConfigDict"):
        train.train_and_evaluate(_config().to_dict(), str(workdir))
    missing = ml_collections.ConfigDict({k: v for k, v in _config().items() if k != "momentum"})
    with pytest.raises(ConfigError, match="no field 'momentum'"):
        train.train_and_evaluate(missing, str(workdir))
    assert not workdir.exists()


@pytest.mark.parametrize("flag,field", [("--config.learning_rate=inf", "learning_rate"),
                                        ("--config.momentum=1.0", "momentum"), ("--config.seed=-1", "seed")])
def test_train_py_refuses_a_bad_value_writing_nothing(tmp_path, flag, field):
    workdir = tmp_path / "w"
    _one_line(_train_py(workdir, flag), 2, field)
    assert not workdir.exists()


# -- The fingerprint --------------------------------------------------------------------------

def test_fingerprint_is_every_field_but_the_documented_ones():
    assert set(runtime.NOT_FINGERPRINTED) < set(configs.FIELDS)
    cosine = runtime.config_fingerprint(_config(lr_schedule="cosine"))
    assert set(cosine) == set(configs.FIELDS) - set(runtime.NOT_FINGERPRINTED) | {"num_epochs"}
    assert {"momentum", "seed", "learning_rate", "optimizer", "adv_steps"} <= set(cosine)
    constant = runtime.config_fingerprint(_config(lr_schedule="constant"))
    assert set(constant) == set(cosine) - {"num_epochs"}
    json.dumps(cosine)  # stored in the checkpoint's JSON meta


def test_earlier_checkpoints_are_compared_on_the_fields_they_have():
    # Earlier versions stored these 15 fields (no momentum), num_epochs among them.
    old_keys = ("dataset", "model", "jr_lambda", "jr_num_proj", "jr_space", "num_epochs", "batch_size",
                "learning_rate", "optimizer", "lr_schedule", "seed", "adv_training", "adv_eps", "adv_steps",
                "adv_step_size")
    old = {"fingerprint": {k: _config()[k] for k in old_keys}, "history": [{}]}
    runtime.check_resumable("w", old, runtime.config_fingerprint(_config(momentum=0.5)))
    runtime.check_resumable("w", old, runtime.config_fingerprint(_config(num_epochs=3)))  # constant: extendable
    with pytest.raises(CheckpointError, match=r"'jr_lambda': \(0.1, 0.2\)"):
        runtime.check_resumable("w", old, runtime.config_fingerprint(_config(jr_lambda=0.2)))
    cosine = {"fingerprint": runtime.config_fingerprint(_config(lr_schedule="cosine"))}
    with pytest.raises(CheckpointError, match=r"'num_epochs': \(1, 3\)"):
        runtime.check_resumable("w", cosine, runtime.config_fingerprint(_config(lr_schedule="cosine", num_epochs=3)))
    with pytest.raises(CheckpointError, match="already at step 10 .* past this run's 5 steps"):
        runtime.check_resumable("w", old, runtime.config_fingerprint(_config()), step=10, total_steps=5)


def test_a_config_with_tuples_resumes_from_its_own_json_metadata():
    def with_hidden(hidden):
        config = _config()
        config.model_kwargs = {"hidden": hidden}
        return config

    stored = json.loads(json.dumps({"fingerprint": runtime.config_fingerprint(with_hidden((16,)))}))  # the checkpoint's
    runtime.check_resumable("w", stored, runtime.config_fingerprint(with_hidden((16,))))
    with pytest.raises(CheckpointError, match=r"'model_kwargs'"):
        runtime.check_resumable("w", stored, runtime.config_fingerprint(with_hidden((32,))))


def test_resume_with_another_momentum_is_refused_leaving_the_workdir_as_it_was(copy):
    before = _snapshot(copy)
    with pytest.raises(CheckpointError) as info:
        train.train_and_evaluate(_config(momentum=0.5), copy)
    message = str(info.value)
    assert "'momentum': (0.9, 0.5)" in message and "\n" not in message
    assert "learning_rate" not in message  # only the fields that differ
    assert _snapshot(copy) == before  # config.json, checkpoints, metrics and summary untouched


def test_resume_neutral_fields_may_change_and_a_constant_run_may_be_extended(copy, finished):
    summary = train.train_and_evaluate(_config(num_epochs=2, eval_num_inputs=16, max_to_keep=3,
                                               checkpoint_every_steps=2), copy)
    assert summary["num_epochs"] == 2 and summary["jacobian_num_inputs"] == 16
    lines = [json.loads(l) for l in open(os.path.join(copy, "metrics.jsonl"))]
    first = [json.loads(l) for l in open(os.path.join(finished, "metrics.jsonl"))]
    assert [l["epoch"] for l in lines] == [1, 2] and lines[0] == first[0]
    assert json.load(open(os.path.join(copy, "config.json")))["num_epochs"] == 2
    assert checkpoints.restore_meta(copy)[1]["fingerprint"] == runtime.config_fingerprint(_config(num_epochs=2))


# -- Repairs on rerun --------------------------------------------------------------------------

def test_rerun_rewrites_a_metrics_jsonl_cut_mid_line(copy, finished):
    path = os.path.join(copy, "metrics.jsonl")
    whole = open(path).read()
    with open(path, "w") as f:
        f.write(whole[: len(whole) // 2])
    train.train_and_evaluate(_config(), copy)
    assert open(path).read() == whole
    os.remove(path)
    train.train_and_evaluate(_config(), copy)
    assert open(path).read() == whole
    assert checkpoints.latest_step(copy) == checkpoints.latest_step(finished)  # nothing trained again


def test_rerun_recomputes_a_missing_summary_json(copy, finished):
    os.remove(os.path.join(copy, "summary.json"))
    summary = train.train_and_evaluate(_config(), copy)
    assert json.load(open(os.path.join(copy, "summary.json"))) == summary
    assert summary == json.load(open(os.path.join(finished, "summary.json")))


# -- Signals during the final evaluation -----------------------------------------------------

def _summary_after_signal(real):
    def summary(job):
        os.kill(os.getpid(), signal.SIGINT)
        return real(job)
    return summary


def test_sigint_during_the_summary_finishes_it_then_stops(copy, monkeypatch):
    """The run completes (the signal came after the last step), then the stop is delivered: never lost."""
    os.remove(os.path.join(copy, "summary.json"))
    monkeypatch.setattr(loop, "_summary", _summary_after_signal(loop._summary))
    # SIG_IGN when the suite was started in the background of a shell without job control.
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            train.train_and_evaluate(_config(), copy)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers given back
    finally:
        signal.signal(signal.SIGINT, before)
    assert json.load(open(os.path.join(copy, "summary.json")))["steps"] == checkpoints.latest_step(copy)


def test_a_stop_the_loop_never_saw_reaches_the_previous_handler():
    seen = []
    before = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    try:
        with runtime.StopSignals() as stop:
            os.kill(os.getpid(), signal.SIGTERM)
            assert stop.received == signal.SIGTERM and not seen  # held while the loop runs
        assert seen == [signal.SIGTERM]
        with pytest.raises(runtime.Preempted):  # a stop the loop acted on is not delivered twice
            with runtime.StopSignals() as stop:
                os.kill(os.getpid(), signal.SIGTERM)
                raise runtime.Preempted()
        assert seen == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, before)


def test_train_py_sigint_during_the_summary_writes_it_and_exits_130_in_one_line(copy):
    os.remove(os.path.join(copy, "summary.json"))
    code = ("import os, runpy, signal, sys\n"
            "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
            "from jacuap.train import loop\n"
            "real = loop._summary\n"
            "def summary(job):\n"
            "    os.kill(os.getpid(), signal.SIGINT)\n"
            "    return real(job)\n"
            "loop._summary = summary\n"
            "sys.argv = sys.argv[1:]\n"
            "runpy.run_path('train.py', run_name='__main__')\n")
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", code, "train.py", f"--workdir={copy}", *ARGS], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 130, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "KeyboardInterrupt" not in proc.stderr, proc.stderr[-3000:]
    assert len(proc.stderr.strip().splitlines()) == 1 and "interrupted" in proc.stderr, proc.stderr[-3000:]
    assert json.load(open(os.path.join(copy, "summary.json")))["steps"] == checkpoints.latest_step(copy)


# -- One run per workdir --------------------------------------------------------------------

def test_a_workdir_in_use_is_refused_in_process(copy):
    before = _snapshot(copy)
    with io.exclusive_lock(copy):
        with pytest.raises(BusyError, match=f"in use by process {os.getpid()}"):
            train.train_and_evaluate(_config(), copy)
    assert _snapshot(copy) == before


def test_train_py_on_a_workdir_in_use_exits_2(copy):
    before = _snapshot(copy)
    with io.exclusive_lock(copy):
        _one_line(_train_py(copy), 2, f"in use by process {os.getpid()}")
    assert _snapshot(copy) == before


def test_the_lock_of_a_killed_run_is_taken_over(copy):
    code = ("import sys, time\nfrom jacuap import io\n"
            "with io.exclusive_lock(sys.argv[1]):\n    print('locked', flush=True)\n    time.sleep(120)\n")
    holder = subprocess.Popen([sys.executable, "-c", code, copy], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                              env=dict(os.environ, JAX_PLATFORMS="cpu"))
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(BusyError, match=f"process {holder.pid}"):
            train.train_and_evaluate(_config(), copy)
    finally:
        holder.kill()
        holder.wait(timeout=60)
    assert holder.returncode == -signal.SIGKILL
    assert open(os.path.join(copy, io.LOCK_NAME)).read().strip() == str(holder.pid)  # left behind
    summary = train.train_and_evaluate(_config(), copy)
    assert summary["steps"] == checkpoints.latest_step(copy)


def test_the_lock_file_does_not_disturb_checkpoints_or_restore(finished):
    assert os.path.exists(os.path.join(finished, io.LOCK_NAME))
    assert not os.path.exists(os.path.join(finished, "checkpoints", io.LOCK_NAME))
    assert train.restore_model(finished).step == checkpoints.latest_step(finished)


# -- Bad workdirs ------------------------------------------------------------------------------

def test_a_workdir_that_is_a_file_is_a_config_error(tmp_path):
    path = tmp_path / "file"
    path.write_text("mine")
    for workdir in (path, path / "below"):
        with pytest.raises(ConfigError, match="a file") as info:
            train.train_and_evaluate(_config(), str(workdir))
        assert "\n" not in str(info.value)
    assert path.read_text() == "mine"


def test_train_py_on_a_file_exits_2_with_one_line(tmp_path):
    path = tmp_path / "file"
    path.write_text("mine")
    _one_line(_train_py(path), 2, "is a file")
    assert path.read_text() == "mine" and os.listdir(tmp_path) == ["file"]


def _read_only_folder(tmp_path):
    """A folder this process cannot write: a read-only tmpfs as root, else permissions; None if neither."""
    path = tmp_path / "ro"
    path.mkdir()
    if os.geteuid() != 0:
        path.chmod(0o555)
        return path
    if shutil.which("mount") and subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(path)],
                                                capture_output=True).returncode == 0:
        return path
    return None


def _release(path):
    if os.geteuid() == 0:
        subprocess.run(["umount", str(path)], capture_output=True)
    path.chmod(0o755)


def test_a_read_only_workdir_is_refused_writing_nothing(tmp_path):
    path = _read_only_folder(tmp_path)
    if path is None:
        pytest.skip("cannot make a read-only folder (root without mount)")
    try:
        with pytest.raises(OSError) as info:
            train.train_and_evaluate(_config(), str(path))
        assert info.value.errno in (errno.EACCES, errno.EROFS) and info.value.filename == str(path)
        assert os.listdir(path) == []
    finally:
        _release(path)


def test_train_py_on_a_read_only_workdir_is_one_line_without_free_space_advice(tmp_path):
    path = _read_only_folder(tmp_path)
    if path is None:
        pytest.skip("cannot make a read-only folder (root without mount)")
    try:
        assert not os.access(path, os.W_OK)
        proc = _train_py(path)
        # A folder that cannot be written is a fault of the environment (exit 1), with its own advice.
        line = _one_line(proc, 1, "not writable")
        assert "free space" not in line
        assert os.listdir(path) == []
    finally:
        _release(path)


# -- A damaged checkpoint ----------------------------------------------------------------------

def test_train_py_on_a_damaged_checkpoint_prints_exactly_one_line(copy):
    step = checkpoints.latest_step(copy)
    state = os.path.join(copy, "checkpoints", str(step), "state")
    for root, _, files in os.walk(state):
        if os.path.basename(root) == "d":  # the array data; the tree metadata stays readable
            for name in files:
                path = os.path.join(root, name)
                with open(path, "r+b") as f:
                    f.truncate(os.path.getsize(path) // 3)
    before = _snapshot(copy)
    line = _one_line(_train_py(copy), 2, f"checkpoint {step}", "cannot be restored")
    assert line.startswith("train.py: error: ")
    assert _snapshot(copy) == before
