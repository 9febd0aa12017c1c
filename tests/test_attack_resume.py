"""attack.py as a resumable, all-or-nothing job (jacuap.evaluation.run + jacuap.evaluation.store).

Each finished row (and its UAP) is on disk at once under a name unique per
(attack, norm, eps, seed); results.json comes last; a rerun reuses finished
rows; another request needs --overwrite; one process per output folder.  Most
cases run in-process on one tiny trained digits MLP; subprocesses only where
the program's exit code and its one line are the point.
"""

import errno
import json
import os
import shutil
import stat
import subprocess
import sys

import numpy as np
import pytest

from jacuap import errors, evaluation, io, train
from jacuap.configs import default

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("digits") / "w"
    config = default.get_config()
    config.update(dataset="digits", model="mlp", num_epochs=1, progress=False, eval_num_inputs=50)
    train.train_and_evaluate(config, str(workdir))
    return str(workdir)


def _request(workdir, out, **kw):
    base = dict(workdir=workdir, attacks=["sgd_uap"], norm="linf", eps=[0.05, 0.1], out=str(out),
                num_craft=64, num_eval=50, num_metrics=0, sgd_epochs=1, progress=False)
    base.update(kw)
    return evaluation.AttackRequest(**base)


def _run(request):
    lines = []
    return evaluation.run_attacks(request, log=lines.append), lines


def _files(out, tensorboard=False):
    """Every file under ``out``, relative (the TensorBoard event files only with ``tensorboard``)."""
    found = sorted(os.path.relpath(os.path.join(root, f), out) for root, _, files in os.walk(out) for f in files)
    return [f for f in found if tensorboard or not f.startswith("tensorboard" + os.sep)]


def _temps(out):
    return [f for f in _files(out) if ".tmp-" in f]


class _Crafts:
    """Wraps evaluation.craft: counts calls, raises ``exc`` on call number ``fail_at`` (1-based)."""

    def __init__(self, monkeypatch, fail_at=None, exc=KeyboardInterrupt, check=None):
        self.calls, self.real = 0, evaluation.craft
        self.fail_at, self.exc, self.check = fail_at, exc, check
        monkeypatch.setattr(evaluation.run, "craft", self)

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.check:
            self.check()
        if self.calls == self.fail_at:
            raise self.exc()
        return self.real(*args, **kwargs)


def _attack_py(args, code=None):
    """attack.py in a subprocess; ``code`` (Python) runs first in the same interpreter."""
    if code is None:
        cmd = [sys.executable, os.path.join(ROOT, "attack.py")] + args
    else:
        boot = (f"{code}\nimport runpy, sys\nsys.argv = ['attack.py'] + {args!r}\n"
                f"runpy.run_path({os.path.join(ROOT, 'attack.py')!r}, run_name='__main__')")
        cmd = [sys.executable, "-c", boot]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


def _assert_one_line(proc, message, code):
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("attack.py: error: "), proc.stderr
    assert message in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


# ---- Requests refused before anything is written.

@pytest.mark.parametrize("kw,message", [
    (dict(eps=[0.1, 0.1]), "eps 0.1 is given twice"),
    (dict(eps=[0.1, 0.1000001]), "eps 0.1 is given twice"),
    (dict(attacks=["sgd_uap", "sgd_uap"]), "attack sgd_uap is given twice"),
    (dict(seed=-1), "seed must be an integer >= 0, got -1"),
    (dict(num_eval=0), "num_eval must be positive"),
    (dict(num_craft=-3), "num_craft must be positive"),
])
def test_bad_requests_write_nothing(kw, message, tmp_path):
    with pytest.raises(errors.AttackError, match=message) as info:
        _request("w", tmp_path / "out", **kw)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()


def test_budgets_are_named_by_six_significant_digits():
    request = _request("w", "o", eps=[0.1000000001, 0.25])
    assert request.eps == [0.1, 0.25]
    assert evaluation.store.stem("sgd_uap", "l2", 1e-7, 3) == "sgd_uap_l2_eps1e-07_seed3"


def test_out_that_is_a_file_is_refused_in_process(tmp_path):
    (tmp_path / "f").write_text("mine")
    for out in (tmp_path / "f", tmp_path / "f" / "sub"):
        with pytest.raises(errors.AttackError, match="a file, not a folder"):
            evaluation.run_attacks(_request(str(tmp_path / "no-workdir"), out))
    assert (tmp_path / "f").read_text() == "mine" and os.listdir(tmp_path) == ["f"]


# ---- Complete runs, reruns, interruptions.

def test_rows_are_saved_and_a_rerun_reuses_them(trained, tmp_path, monkeypatch):
    out = tmp_path / "out"
    results, lines = _run(_request(trained, out))
    assert lines == []
    assert results["complete"] is True
    names = ["sgd_uap_linf_eps0.05_seed0", "sgd_uap_linf_eps0.1_seed0"]
    assert _files(out) == sorted([".lock", "request.json", "results.json", "uaps.png", "rows/metrics.json"]
                                 + [f"{n}.npy" for n in names] + [f"{n}.png" for n in names]
                                 + [f"rows/{n}.json" for n in names])
    record = json.load(open(out / "request.json"))
    assert record["eps"] == [0.05, 0.1] and record["checkpoint_step"] == results["config"]["checkpoint_step"]
    assert record["model_fingerprint"].startswith("sha256:")
    # The model is the checkpoint's, recorded with its fingerprint.
    assert results["config"]["model"] == "mlp" and results["config"]["dataset"] == "digits"
    assert results["config"]["model_fingerprint"] == record["model_fingerprint"]
    before = {f: os.stat(out / f) for f in _files(out)}
    text = (out / "results.json").read_bytes()

    crafts = _Crafts(monkeypatch)
    again, lines = _run(_request(trained, out))
    assert crafts.calls == 0
    assert lines == [f"reusing 2 finished rows of 2 in {out}"]
    assert again == results and (out / "results.json").read_bytes() == text
    for f, st in before.items():  # nothing rewritten: same inode, same mtime (the lock holds a new PID)
        if f == ".lock":
            continue
        now = os.stat(out / f)
        assert (now.st_ino, now.st_mtime_ns) == (st.st_ino, st.st_mtime_ns), f


def test_interrupted_run_resumes_to_the_uninterrupted_result(trained, tmp_path, monkeypatch):
    kw = dict(attacks=["sgd_uap", "sv_uap"], eps=[0.05, 0.1])
    reference, _ = _run(_request(trained, tmp_path / "ref", **kw))
    out = tmp_path / "out"
    crafts = _Crafts(monkeypatch, fail_at=4)  # Ctrl-C while crafting the last row (sv_uap, eps 0.1)
    with pytest.raises(KeyboardInterrupt):
        _run(_request(trained, out, **kw))
    assert not (out / "results.json").exists() and not (out / "uaps.png").exists()
    assert _temps(out) == []
    assert len([f for f in _files(out) if f.endswith(".npy")]) == 3
    assert len([f for f in _files(out) if f.startswith("rows/")]) == 3

    crafts.fail_at, crafts.calls = None, 0
    results, lines = _run(_request(trained, out, **kw))  # the lock died with the interrupted call
    assert crafts.calls == 1 and lines == [f"reusing 3 finished rows of 4 in {out}"]
    assert results["complete"] and (out / "results.json").exists() and (out / "uaps.png").exists()
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]
    assert strip(results["results"]) == strip(reference["results"])
    for row in results["results"]:  # SV-UAP's direction is keyed as in one uninterrupted run
        np.testing.assert_array_equal(np.load(out / row["file"]), np.load(tmp_path / "ref" / row["file"]))


def test_results_json_is_removed_before_rows_change(trained, tmp_path, monkeypatch):
    out = tmp_path / "out"
    _run(_request(trained, out))
    os.unlink(out / "rows" / "sgd_uap_linf_eps0.1_seed0.json")  # as if that row never finished
    seen = []
    crafts = _Crafts(monkeypatch, check=lambda: seen.append((out / "results.json").exists()))
    results, lines = _run(_request(trained, out))
    assert crafts.calls == 1 and seen == [False]
    assert lines == [f"reusing 1 finished rows of 2 in {out}"] and results["complete"]


def test_another_request_is_refused_then_replaced_with_overwrite(trained, tmp_path):
    out = tmp_path / "out"
    first, _ = _run(_request(trained, out))
    (out / "notes.txt").write_text("mine")
    (out / "other.npy").write_bytes(b"not jacuap's")
    listing = _files(out)
    with pytest.raises(errors.AttackError, match=r"holds the outputs of another request \(eps: 0.05,0.1, not 0.2\); "
                                                 r".*--overwrite to replace them \(only that request's files\)"):
        _run(_request(trained, out, eps=[0.2]))
    assert _files(out) == listing
    results, _ = _run(_request(trained, out, eps=[0.2], overwrite=True))
    assert [r["eps"] for r in results["results"]] == [0.2]
    assert _files(out) == sorted([".lock", "request.json", "results.json", "uaps.png", "rows/metrics.json",
                                  "sgd_uap_linf_eps0.2_seed0.npy", "sgd_uap_linf_eps0.2_seed0.png",
                                  "rows/sgd_uap_linf_eps0.2_seed0.json", "notes.txt", "other.npy"])
    assert (out / "notes.txt").read_text() == "mine"


def test_results_of_the_previous_layout_need_overwrite(trained, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "sgd_uap_linf_eps0.1.npy").write_bytes(b"old")
    (out / "results.json").write_text(json.dumps({"results": [{"file": "sgd_uap_linf_eps0.1.npy"}]}))
    with pytest.raises(errors.AttackError, match="holds an earlier run's outputs"):
        _run(_request(trained, out, eps=[0.1]))
    _run(_request(trained, out, eps=[0.1], overwrite=True))
    assert not (out / "sgd_uap_linf_eps0.1.npy").exists() and (out / "sgd_uap_linf_eps0.1_seed0.npy").exists()


def test_folder_in_use_is_busy(trained, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with io.exclusive_lock(str(out)):
        with pytest.raises(errors.BusyError, match=f"{out} is in use by process {os.getpid()}"):
            _run(_request(trained, out))
    assert _files(out) == [".lock"]


def test_one_evaluation_input_gives_null_and_a_note(trained, tmp_path):
    out = tmp_path / "out"
    results, _ = _run(_request(trained, out, eps=[0.1], num_eval=1, num_metrics=5))
    saved = json.loads((out / "results.json").read_text())  # strict JSON: no NaN
    assert saved == results and saved["config"]["num_eval"] == 1
    m = saved["metrics"]
    assert m["num_inputs"] == 1
    for key in ("shared_perturbation_strength", "jacobian_cosine", "gram_cosine"):
        assert m[key] is None and m[f"{key}_note"].startswith("undefined: fewer than 2 metric inputs")
    assert saved["results"][0]["uer"] in (0.0, 1.0)


def test_capping_is_reported_and_recorded(trained, tmp_path):
    results, lines = _run(_request(trained, tmp_path / "out", attacks=["fgsm"], eps=[0.1],
                                   num_craft=10**6, num_eval=10**6))
    config = results["config"]
    assert len(lines) == 1 and lines[0].startswith("note: num_craft 1000000 capped at ")
    assert f"num_eval 1000000 capped at {config['num_eval']}" in lines[0]
    assert config["num_craft_requested"] == 10**6 and 0 < config["num_craft"] < 10**6
    assert config["num_eval_requested"] == 10**6 and 0 < config["num_eval"] < 10**6


def test_failing_figure_leaves_no_temp_file_and_resumes(trained, tmp_path, monkeypatch):
    import matplotlib.figure

    out = tmp_path / "out"

    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", full)
    with pytest.raises(OSError) as info:
        _run(_request(trained, out))
    assert _temps(out) == [] and not (out / "results.json").exists() and not (out / "uaps.png").exists()
    message = evaluation.output_failure(info.value, str(out))
    assert message == (f"No space left on device writing {out}; 2 finished rows are kept; "
                       f"free space and rerun the same command to resume")
    monkeypatch.undo()
    crafts = _Crafts(monkeypatch)
    results, lines = _run(_request(trained, out))
    assert crafts.calls == 0 and results["complete"] and (out / "uaps.png").exists()


def test_every_output_has_the_umask_permissions(trained, tmp_path):
    old = os.umask(0o027)
    try:
        _run(_request(trained, tmp_path / "out"))
    finally:
        os.umask(old)
    out = tmp_path / "out"
    modes = {f: stat.S_IMODE(os.stat(out / f).st_mode) for f in _files(out, tensorboard=True)}
    assert {os.path.splitext(f)[1] for f in _files(out)} == {"", ".json", ".npy", ".png"}
    assert any(f.startswith("tensorboard" + os.sep) for f in modes)
    assert set(modes.values()) == {0o640}, modes


@pytest.mark.parametrize("edit,message", [
    (lambda c: {}, r"config.json lacks \w+, .* more, which checkpoint \d+ was trained with; restore config.json"),
    (lambda c: dict(c, model="cnn"), "disagrees with checkpoint .*: model='cnn' \\(checkpoint: 'mlp'\\)"),
])
def test_edited_config_json_is_one_config_error(trained, tmp_path, edit, message):
    workdir = tmp_path / "w"
    shutil.copytree(trained, workdir)
    config = json.loads((workdir / "config.json").read_text())
    (workdir / "config.json").write_text(json.dumps(edit(config)))
    with pytest.raises(errors.ConfigError, match=message) as info:
        _run(_request(str(workdir), tmp_path / "out"))
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()


def test_output_failure_words_read_only_and_foreign_errors(tmp_path):
    out = str(tmp_path / "out")
    ro = OSError(errno.EROFS, os.strerror(errno.EROFS), os.path.join(out, ".request.json.tmp-x"))
    assert evaluation.output_failure(ro, out) == (
        f"cannot write to {out}: Read-only file system; make it writable and rerun the same command, "
        f"or choose another --out")
    elsewhere = PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "w" / "checkpoints"))
    assert evaluation.output_failure(elsewhere, out) is None
    assert evaluation.output_failure(FileNotFoundError(errno.ENOENT, "x"), out) is None


# ---- The program: exit codes, the one line, the final message.

def test_attack_py_out_is_a_file_exits_2(tmp_path):
    (tmp_path / "f").write_text("mine")
    proc = _attack_py([f"--workdir={tmp_path}", f"--out={tmp_path / 'f'}", "--progress=false"])
    _assert_one_line(proc, "is a file, not a folder", 2)
    assert os.listdir(tmp_path) == ["f"]


def test_attack_py_read_only_out_exits_1(trained, tmp_path):
    out = tmp_path / "out"
    # Every atomic write fails as on a read-only file system (works as root too).
    code = ("import errno, os\nfrom jacuap import io\n"
            "def ro(path, write):\n    raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))\n"
            "io.atomic_write = ro")
    proc = _attack_py([f"--workdir={trained}", f"--out={out}", "--progress=false", "--attack=sgd_uap",
                       "--eps=0.1", "--num_craft=32", "--num_eval=32", "--num_metrics=0"], code=code)
    _assert_one_line(proc, f"cannot write to {out}: Read-only file system; make it writable", 1)
    assert _files(out) == [".lock"]


def test_attack_py_unwritable_out_exits_1(trained, tmp_path):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        if os.access(parent, os.W_OK):
            pytest.skip("this user writes into read-only folders (root)")
        proc = _attack_py([f"--workdir={trained}", f"--out={parent / 'out'}", "--progress=false",
                           "--attack=fgsm", "--eps=0.1", "--num_eval=32", "--num_metrics=0"])
        _assert_one_line(proc, "Permission denied", 1)
        assert os.listdir(parent) == []
    finally:
        parent.chmod(0o755)


@pytest.mark.slow  # a program run: make test-slow (.ci/run runs it)
def test_attack_py_per_input_only_names_the_files_it_wrote(trained, tmp_path):
    out = tmp_path / "out"
    proc = _attack_py([f"--workdir={trained}", f"--out={out}", "--progress=false", "--attack=fgsm",
                       "--eps=0.1", "--num_eval=32", "--num_metrics=0"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == f"outputs in {out}: results.json"
    assert not [f for f in _files(out) if f.endswith((".npy", ".png"))]
    assert json.load(open(out / "results.json"))["results"][0]["file"] is None

    # Another request into the same --out: its own sub-folder, named by the request; the first one's stay.
    first = {f: (out / f).read_bytes() for f in _files(out) if f != ".lock"}
    args = [f"--workdir={trained}", f"--out={out}", "--progress=false", "--attack=sgd_uap", "--eps=0.1",
            "--num_craft=32", "--num_eval=32", "--num_metrics=0", "--sgd_epochs=1"]
    proc = _attack_py(args)
    assert proc.returncode == 0, proc.stderr
    name = evaluation.AttackRequest(workdir=trained, attacks=["sgd_uap"], norm="linf", eps=[0.1], out=str(out),
                                    num_craft=32, num_eval=32, num_metrics=0, sgd_epochs=1).folder_name()
    assert name.startswith("sgd_uap_linf_eps0.1_")
    assert proc.stdout.strip().splitlines()[-1].startswith(f"outputs in {out / name}: results.json")
    assert json.load(open(out / name / "results.json"))["results"][0]["attack"] == "sgd_uap"
    assert {f: (out / f).read_bytes() for f in _files(out) if f != ".lock" and not f.startswith(name)} == first


def test_request_folder_keeps_the_folder_of_the_same_request(tmp_path):
    request = _request("w", tmp_path, eps=[0.1])
    assert evaluation.request.request_folder(str(tmp_path), request) == str(tmp_path)  # fresh
    (tmp_path / "request.json").write_text(json.dumps({**request.fields(), "checkpoint_step": 3, "format": 1}))
    assert evaluation.request.request_folder(str(tmp_path), request) == str(tmp_path)  # this request: resumes
    other = _request("w", tmp_path, eps=[0.1], loss="margin")
    assert evaluation.request.request_folder(str(tmp_path), other) == str(tmp_path / other.folder_name())
    assert other.folder_name() != request.folder_name() != _request("w", tmp_path, eps=[0.1], num_craft=65).folder_name()
