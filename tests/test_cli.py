"""train.py and attack.py as a user runs them, and jacuap.cli, what they share.

Exit codes: 0 done (or ``--help``, or preempted after saving), 1 the run
failed (diverged, disk full), 2 a user mistake, reported as one line on
stderr and never a traceback.  Each program start costs seconds (JAX, flax,
orbax imports), so the fast tests start few; the rest are marked slow.
"""

import errno
import json
import os
import signal
import subprocess
import sys
import types

import pytest

from jacuap import cli, configs, errors, evaluation, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A tiny run: sklearn digits, the MLP, one epoch.
TINY = ["--config.dataset=digits", "--config.model=mlp", "--config.num_epochs=1",
        "--config.eval_num_inputs=100", "--config.progress=False"]


def _run(program, args, cwd=ROOT):
    return subprocess.run([sys.executable, os.path.join(ROOT, program)] + args, cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def _assert_one_line_error(proc, program, message, code=2):
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"{program}: error: "), proc.stderr
    assert message in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


# ---- The programs, as subprocesses.

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """``train.py`` run from a folder other than the repository's, without ``--config``."""
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    proc = _run("train.py", ["--workdir=w"] + TINY, cwd=elsewhere)
    return elsewhere / "w", proc


@pytest.mark.slow
def test_train_py_from_another_folder_with_the_packaged_config(trained):
    workdir, proc = trained
    assert proc.returncode == 0, proc.stderr
    assert "(360 test inputs)" in proc.stdout and "outputs in w" in proc.stdout
    summary = json.load(open(workdir / "summary.json"))
    assert summary["dataset"] == "digits" and summary["num_epochs"] == 1
    assert (workdir / "checkpoints").is_dir()


@pytest.mark.slow
def test_attack_py_on_a_trained_workdir(trained, tmp_path):
    workdir, _ = trained
    out = tmp_path / "out"
    proc = _run("attack.py", [f"--workdir={workdir}", "--attack=sgd_uap", "--eps=0.1", "--num_craft=50",
                              "--num_eval=50", f"--out={out}", "--progress=false", "--num_metrics=0"])
    assert proc.returncode == 0, proc.stderr
    results = json.load(open(out / "results.json"))
    [row] = results["results"]
    assert (row["attack"], row["eps"], row["universal"]) == ("sgd_uap", 0.1, True)
    assert results["config"]["num_craft"] == 50 and results["config"]["num_eval"] == 50
    assert (out / row["file"]).exists() and (out / "uaps.png").exists()
    assert (out / (row["file"][:-4] + ".png")).exists()  # each UAP at its own scale
    assert results["config"]["sgd_epochs"] == 5 and results["config"]["deepfool_passes"] is None  # what ran
    assert "UER, fooling rate and clean accuracy on 50 test inputs; UAPs crafted on 50 train inputs" in proc.stdout
    assert "sgd_uap" in proc.stdout and f"outputs in {out}" in proc.stdout


@pytest.mark.parametrize("config_flag,field,advice", [
    # Without --config, the packaged default loads when the flag is defined (program import).
    # No field is close to "nonexistent": the message lists them all instead of guessing.
    ([], "nonexistent", "; the fields are dataset, data_dir, num_validation, model,"),
    # With --config (the README's path, found in the package), when the flags are parsed.
    (["--config=configs/digits.py"], "jr_lambd", " (did you mean 'jr_lambda'?)"),
])
def test_unknown_config_field_names_the_closest(tmp_path, config_flag, field, advice):
    proc = _run("train.py", [f"--workdir={tmp_path / 'w'}"] + config_flag + [f"--config.{field}=3"], cwd=tmp_path)
    _assert_one_line_error(proc, "train.py", f"unknown config field '{field}'{advice}")
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("program,flag", [
    ("train.py", "--config"),
    pytest.param("attack.py", "--attack", marks=pytest.mark.slow),
])
def test_help(program, flag):
    proc = _run(program, ["--help"])
    assert proc.returncode == 0, proc.stderr
    assert "--workdir" in proc.stdout and flag in proc.stdout and "Traceback" not in proc.stderr


@pytest.mark.parametrize("args,message", [
    (["--attack=carlini"], "unknown attack carlini; choose from sgd_uap, sga_uap, sgd_uap_restarts, deepfool_uap, sv_uap, layer_max, "
     "cosine_uap, fg_uap, gd_uap, gap_uap, pgd, fgsm"),
    pytest.param(["--eps=2"], "eps must be a finite number >= 0 (<= 1 for linf), got 2.0", marks=pytest.mark.slow),
    pytest.param(["--eps=abc"], "eps", marks=pytest.mark.slow),
    pytest.param(["--norm=l7"], "unknown norm", marks=pytest.mark.slow),
])
def test_attack_py_bad_input(tmp_path, args, message):
    # Checked before the checkpoint is read: the workdir need not hold one.
    out = tmp_path / "out"
    proc = _run("attack.py", [f"--workdir={tmp_path}", f"--out={out}"] + args)
    _assert_one_line_error(proc, "attack.py", message)
    assert not (out / "results.json").exists()


@pytest.mark.slow
def test_attack_py_missing_checkpoint(tmp_path):
    (tmp_path / "w").mkdir()
    proc = _run("attack.py", [f"--workdir={tmp_path / 'w'}", f"--out={tmp_path / 'out'}"])
    _assert_one_line_error(proc, "attack.py", str(tmp_path / "w"))
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_missing_config_file_and_positional_arguments(tmp_path):
    proc = _run("train.py", [f"--workdir={tmp_path / 'w'}", "--config=configs/nope.py"], cwd=tmp_path)
    _assert_one_line_error(proc, "train.py", "no file 'configs/nope.py'; the packaged configs are configs/default.py")
    proc = _run("attack.py", [f"--workdir={tmp_path}", "extra"])
    _assert_one_line_error(proc, "attack.py", "unexpected arguments: extra")


# ---- jacuap.cli in this process.

@pytest.fixture
def prog(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["prog.py"])


def _exit(capsys, body, **kw):
    """Runs ``body()`` inside ``cli.user_errors(**kw)``; returns (exit code, stderr)."""
    with pytest.raises(SystemExit) as info:
        with cli.user_errors(**kw):
            body()
    return info.value.code, capsys.readouterr().err


def _raise(exc):
    def body():
        raise exc
    return body


def test_user_errors_exit_codes(prog, capsys):
    assert _exit(capsys, _raise(errors.DataError("no data\nin /x"))) == (2, "prog.py: error: no data in /x\n")
    assert _exit(capsys, _raise(errors.ParallelError("--multihost: failed"))) == (2, "prog.py: error: --multihost: failed\n")
    assert _exit(capsys, _raise(train.TrainingDiverged("training diverged"))) == (1, "prog.py: error: training diverged\n")
    assert _exit(capsys, _raise(train.Preempted("stopped by signal 15"))) == (0, "prog.py: stopped by signal 15\n")


def test_user_errors_full_disk_names_the_intact_checkpoint(prog, capsys, tmp_path):
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "w/metrics.jsonl")
    code, err = _exit(capsys, _raise(full), workdir=str(tmp_path))
    assert code == 1
    assert err == (f"prog.py: error: {os.strerror(errno.ENOSPC)} (w/metrics.jsonl); no checkpoint was written; "
                   "free space and rerun the same command to resume\n")


def test_user_errors_lets_bugs_through(prog):
    with pytest.raises(FileNotFoundError):
        with cli.user_errors():
            raise FileNotFoundError(errno.ENOENT, "not a disk-full error")
    with pytest.raises(KeyError):
        with cli.user_errors():
            raise KeyError("a bug")


def test_flag_errors_name_the_closest_config_field(prog, capsys):
    config = configs.get_config()
    with pytest.raises(SystemExit) as info:
        with cli.flag_errors():
            config.learning_rte = 0.1
    assert info.value.code == 2
    assert capsys.readouterr().err == "prog.py: error: unknown config field 'learning_rte' (did you mean 'learning_rate'?)\n"


def test_resolve_config_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    packaged = cli.resolve_config_file("configs/digits.py:arg")
    assert packaged.endswith(os.path.join("jacuap", "configs", "digits.py") + ":arg") and os.path.isabs(packaged)
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "digits.py").write_text("")
    assert cli.resolve_config_file("configs/digits.py") == "configs/digits.py"  # a file here wins
    with pytest.raises(errors.ConfigError, match="no file 'other/digits.py'"):
        cli.resolve_config_file("other/digits.py")


def test_attack_request_from_flags(tmp_path):
    flags = types.SimpleNamespace(workdir=str(tmp_path), attack=["sgd_uap", " fgsm ", ""], norm="l2", eps=["0.5", "1"],
                                  out=None, num_craft=10, num_eval=20, craft_split="test", num_metrics=0,
                                  sgd_epochs=1, deepfool_passes=1, seed=3, progress=False)
    request = evaluation.AttackRequest.from_flags(flags)
    assert request.attacks == ["sgd_uap", "fgsm"] and request.eps == [0.5, 1.0]
    assert request.out == os.path.join(str(tmp_path), "attack") and request.seed == 3
    flags.eps = ["0.1", "abc"]
    with pytest.raises(errors.AttackError, match="eps must be a comma list of numbers, got '0.1,abc'"):
        evaluation.AttackRequest.from_flags(flags)


@pytest.mark.parametrize("script,args,expect", [
    ("jacuap-train", ["--workdir=w", "--config.jr_lambda=-1"], "jacuap-train: error: jr_lambda must be"),
    ("jacuap-attack", ["--help"], "--suite"),
])
def test_console_scripts_work_from_any_folder(tmp_path, script, args, expect):
    path = os.path.join(os.path.dirname(sys.executable), script)
    if not os.path.exists(path):
        pytest.skip(f"{script} is not installed (pip install -e . installs it)")
    proc = subprocess.run([path, *args], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    if args == ["--help"]:
        assert proc.returncode == 0 and expect in proc.stdout
    else:
        assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [proc.stderr.strip()]
        assert proc.stderr.startswith(expect)
        assert os.listdir(tmp_path) == []


def _interrupt_after(argv, delay, cwd):
    """Runs argv with SIGINT not ignored, sends SIGINT after ``delay`` s; (exit code, stderr)."""
    import signal
    import time

    # A child inherits an ignored SIGINT (a suite started in the background); a handler is reset on
    # exec.  So un-ignore it around the start (no preexec_fn: forking a process running JAX may hang).
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    finally:
        signal.signal(signal.SIGINT, before)
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    return proc.returncode, err


@pytest.mark.slow  # ~30 s: six program starts
@pytest.mark.parametrize("program", ["train.py", "attack.py"])
def test_ctrl_c_at_any_moment_is_one_line(tmp_path, program):
    # While absl, JAX and flax load, while the data loads, while it runs: never a traceback.
    # (A trained run stops at a checkpoint and exits 0; anything before that exits 130.)
    workdir = tmp_path / "w"
    # No progress bars: a run that gets to train before the signal (a warm compilation cache) prints none.
    args = ["--config=configs/digits.py", "--config.num_epochs=50", "--config.progress=False"] \
        if program == "train.py" \
        else ["--attack=sgd_uap", "--num_craft=100", "--num_eval=100", "--noprogress"]
    for delay in (0.8, 2.0, 4.0):  # from 0.8 s: Python's own start-up (site) is over
        code, err = _interrupt_after([sys.executable, os.path.join(ROOT, program), f"--workdir={workdir}", *args],
                                     delay, ROOT)
        if "Exception ignored in: <function _xla_gc_callback" in err:
            # SIGINT landed in JAX's garbage-collection callback, where Python drops exceptions
            # (it prints this and goes on): the run was not interrupted and must end normally.
            assert code == 0, (delay, err)
            continue
        assert "Traceback" not in err, (delay, err)
        lines = [line for line in err.splitlines() if line.strip() and not line.startswith(("W", "I"))]
        # -SIGINT: the signal came as the interpreter shut down (it restores the default action then, e.g.
        # after attack.py's one-line user error); a shell reports that as 130, like our own exit.
        assert code in (0, 2, 130, -signal.SIGINT) and len(lines) <= 1, (delay, code, err)
        if code == 130:
            assert lines and "interrupted" in lines[0]


def test_interrupt_exits_defers_a_sigint_to_the_end_of_the_stretch():
    # Blocked inside (an import must not be cut between two bytecodes of an extension's initialisation),
    # then one line and status 130 where the stretch ends; nothing after it runs.
    code = ("import os, signal, sys\n"
            "from jacuap.programs import interrupt_exits\n"
            "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
            "with interrupt_exits('prog'):\n"
            "    os.kill(os.getpid(), signal.SIGINT)\n"
            "    print('inside went on', flush=True)\n"
            "print('after', flush=True)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 130, proc.stderr
    assert proc.stdout == "inside went on\n"
    assert proc.stderr == "prog: interrupted while starting; nothing was written\n"
