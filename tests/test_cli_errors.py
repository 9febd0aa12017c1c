"""Every program mistake ends in one line: train.py and attack.py on bad input.

Each case runs the program as a user does (a subprocess, from a scratch
folder, ``HOME`` pointing into it) and checks the exit code, exactly one
stderr line ``<prog>: error: ...`` with the expected words, no traceback,
and that nothing was written: the scratch folder (workdir, ``~``, tfds'
data dir included) is byte for byte what the case set up.  Flag, config and
workdir mistakes are reported before JAX's training stack loads (about a
second); data mistakes once the data is read.

The rest checks jacuap.cli's messages in this process, the tfds offline rule
(:mod:`jacuap.data.tfds`), and that README's config-field table is the one
``python -m jacuap.configs.reference`` generates.
"""

import dataclasses
import errno
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import pytest

from datafiles import write_idx
from jacuap import cli, configs, data, errors
from jacuap.configs import reference
from jacuap.data import tfds as tfds_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _snapshot(folder) -> Dict[str, Tuple[str, int, bytes]]:
    """Every path under ``folder``: its kind, mode and (for files) content."""
    out = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = os.path.join(root, name)
            st = os.lstat(path)
            content = b""
            if os.path.isfile(path) and not os.path.islink(path):
                with open(path, "rb") as f:
                    content = f.read()
            out[os.path.relpath(path, folder)] = ("d" if os.path.isdir(path) else "f", st.st_mode, content)
    return out


@dataclasses.dataclass
class Case:
    id: str
    args: List[str]                      # "{w}" is the workdir, "{d}" the scratch folder
    words: Tuple[str, ...]               # all in the one stderr line
    program: str = "train.py"
    code: int = 2
    setup: Optional[Callable] = None     # setup(scratch folder)
    env: Dict[str, str] = dataclasses.field(default_factory=dict)
    within_s: Optional[float] = None     # the answer must come this fast (wall clock)


def _file(d):
    (d / "afile").write_text("not a folder")


def _bad_local_config(d):
    (d / "configs").mkdir()
    (d / "configs" / "default.py").write_text("def get_config(:\n")


def _config_without_get_config(d):
    (d / "mine.py").write_text("x = 1\n")


def _empty_idx(d):
    (d / "data").mkdir()
    for stem in ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte"):
        write_idx(d / "data" / (stem + ".gz"), np.zeros((0, 28, 28), np.uint8))
    for stem in ("train-labels-idx1-ubyte", "t10k-labels-idx1-ubyte"):
        write_idx(d / "data" / (stem + ".gz"), np.zeros((0,), np.uint8))


def _data_folder(d):
    (d / "data").mkdir()


def _empty_workdir(d):
    (d / "w").mkdir()


CASES = [
    # --config: fields and values.
    Case("unknown-field-no-config", ["--workdir={w}", "--config.nonexistent=3"],
         ("unknown config field 'nonexistent'; the fields are dataset, data_dir,", "python -m jacuap.configs.reference")),
    Case("unknown-field-close", ["--workdir={w}", "--config.jr_lambd=1"],
         ("unknown config field 'jr_lambd' (did you mean 'jr_lambda'?)",)),
    Case("unknown-field-with-config", ["--workdir={w}", "--config=configs/digits.py", "--config.batchsize=8"],
         ("unknown config field 'batchsize' (did you mean 'batch_size'?)",)),
    Case("sub-field", ["--workdir={w}", "--config.dataset.x=3"],
         ("--config.dataset.x: config field 'dataset' has no sub-fields; use --config.dataset=VALUE",)),
    Case("value-not-a-number", ["--workdir={w}", "--config.jr_lambda=abc"], ("--config.jr_lambda=abc", "abc")),
    Case("value-missing", ["--workdir={w}", "--config.jr_lambda"], ("Missing value for flag --config.jr_lambda",)),
    Case("negative-jr-lambda", ["--workdir={w}", "--config.jr_lambda=-1"],
         ("jr_lambda must be a finite number >= 0, got -1.0",)),
    Case("unknown-dataset", ["--workdir={w}", "--config.dataset=imagenet"],
         ("unknown dataset 'imagenet'; choose one of digits, mnist, fashion_mnist, cifar10",)),
    Case("data-dir-missing", ["--workdir={w}", "--config.data_dir={d}/nope"],
         ("data_dir", "nope", "is not a readable directory")),
    # --config: files.
    Case("config-missing-file", ["--workdir={w}", "--config=missing.py"],
         ("--config: no file 'missing.py'; the packaged configs are configs/default.py",)),
    Case("config-missing-packaged-name", ["--workdir={w}", "--config=configs/nope.py"],
         ("no file 'configs/nope.py'", "configs/digits.py")),
    Case("config-missing-file-and-unknown-field", ["--workdir={w}", "--config=missing.py", "--config.nonexistent=3"],
         ("--config: no file 'missing.py'",)),
    Case("packaged-config-from-another-folder", ["--workdir={w}", "--config=configs/default.py", "--config.seed=-1"],
         ("seed must be an integer", "got -1")),
    Case("local-config-does-not-parse", ["--workdir={w}", "--config=configs/default.py"],
         ("bad --config: invalid syntax (default.py, line 1)",), setup=_bad_local_config),
    Case("config-without-get-config", ["--workdir={w}", "--config=mine.py"],
         ("bad --config: the file defines no get_config()",), setup=_config_without_get_config),
    # Flags.
    Case("positional-argument", ["--workdir={w}", "extra"], ("unexpected arguments: extra",)),
    Case("unknown-flag", ["--workdir={w}", "--bogus=1"], ("Unknown command line flag 'bogus'",)),
    Case("workdir-left-out", [], ("--workdir", "must have a value")),
    Case("workdir-empty", ["--workdir="], ("--workdir must name a folder, got ''",)),
    Case("workdir-is-a-file", ["--workdir={d}/afile"], ("--workdir", "afile' is a file, not a folder; choose another",),
         setup=_file),
    Case("workdir-under-a-file", ["--workdir={d}/afile/sub"], ("cannot be created", "afile is a file, not a folder"),
         setup=_file),
    # Data (read after the config is valid).
    Case("idx-with-0-images", ["--workdir={w}", "--config.dataset=mnist", "--config.data_dir={d}/data"],
         ("mnist from IDX files in", "the train split holds 0 images"), setup=_empty_idx),
    Case("mnist-offline", ["--workdir={w}", "--config.dataset=mnist", "--config.data_dir={d}/data"],
         ("mnist not found; tried: IDX files in", "cannot be downloaded: JACUAP_OFFLINE is set; nothing was downloaded",
          "To fix:"),
         setup=_data_folder, env={"JACUAP_OFFLINE": "1"}),
    Case("mnist-offline-no-data-dir", ["--workdir={w}", "--config.dataset=mnist"],
         ("tfds.data_source('mnist')", "not prepared in", "tensorflow_datasets", "nothing was downloaded"),
         env={"JACUAP_OFFLINE": "1"}, within_s=60),
    # attack.py (its imports take seconds: a few cases only).
    Case("attack-no-checkpoint", ["--workdir={w}", "--out={d}/out"], ("attack.py: error:", "w"),
         program="attack.py", setup=_empty_workdir),
    Case("attack-unknown-flag", ["--workdir={d}", "--bogus=1"], ("Unknown command line flag 'bogus'",),
         program="attack.py"),
    Case("attack-unknown-attack", ["--workdir={d}", "--attack=sgd_uapp"],
         ("unknown attack sgd_uapp; choose from sgd_uap, sga_uap",), program="attack.py"),
    Case("attack-missing-workdir", ["--workdir={d}/nope", "--attack=sgd_uap"], ("workdir", "nope' does not exist"),
         program="attack.py"),
]

# attack.py's flag mistakes and --help answer before JAX and the attacks load (README: under a second).
ATTACK_BEFORE_JAX = [
    ["--help"],
    ["--workdir={d}", "--attack=sgd_uapp"],
    ["--workdir={d}", "--attack=sgd_uap", "--eps=2"],
    ["--workdir={d}", "--attack=sv_uap", "--loss=margin"],
    ["--workdir={d}", "--suite=quick", "--attack=sgd_uap"],
    ["--workdir={d}/nope", "--attack=gd_uap", "--prior=range", "--norm=l2", "--eps=1"],
]


def _run(case: Case, scratch, preexec_fn=None):
    args = [a.format(w=scratch / "w", d=scratch) for a in case.args]
    env = dict(os.environ, HOME=str(scratch / "home"), **case.env)
    env.pop("TFDS_DATA_DIR", None)
    start = time.monotonic()
    proc = subprocess.run([sys.executable, os.path.join(ROOT, case.program)] + args, cwd=scratch, env=env,
                          capture_output=True, text=True, timeout=300, preexec_fn=preexec_fn)
    return proc, time.monotonic() - start


def _assert_one_line_error(proc, program, words, code):
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"{program}: error: "), proc.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_ends_in_one_line_and_writes_nothing(tmp_path, case):
    (tmp_path / "home").mkdir()
    if case.setup is not None:
        case.setup(tmp_path)
    before = _snapshot(tmp_path)
    proc, seconds = _run(case, tmp_path)
    _assert_one_line_error(proc, case.program, case.words, case.code)
    assert _snapshot(tmp_path) == before
    assert not (tmp_path / "home" / "tensorflow_datasets").exists()
    if case.within_s is not None:
        assert seconds < case.within_s


def test_read_only_workdir_is_not_writable_advice(tmp_path):
    """A folder the user cannot write: advice to choose another, not to free space."""
    readonly = tmp_path / "ro"
    readonly.mkdir()
    readonly.chmod(0o555)
    try:
        if os.access(readonly, os.W_OK):
            pytest.skip("the read-only folder is still writable (root); test_check_workdir_not_writable covers it")
        for workdir, words in [(readonly, ("ro' is not writable", "choose a writable folder")),
                               (readonly / "w", ("cannot be created", "is not writable"))]:
            case = Case("ro", [f"--workdir={workdir}"], words)
            before = _snapshot(tmp_path)
            proc, _ = _run(case, tmp_path)
            _assert_one_line_error(proc, "train.py", words + ("--workdir",), 1)
            assert "free space" not in proc.stderr
            assert _snapshot(tmp_path) == before
    finally:
        readonly.chmod(0o755)


def test_check_workdir_not_writable(tmp_path, monkeypatch):
    # What os.access answers for a read-only file system or a folder of another user, even as root.
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: False if os.fspath(path) == str(tmp_path)
                        else real_access(path, mode))
    with pytest.raises(errors.UnwritableError) as e:
        cli.check_workdir(str(tmp_path))
    assert str(e.value) == (f"--workdir {str(tmp_path)!r} is not writable (permissions or a read-only file system); "
                            "choose a writable folder")
    with pytest.raises(errors.UnwritableError, match="cannot be created: .* is not writable"):
        cli.check_workdir(str(tmp_path / "w"))
    assert os.listdir(tmp_path) == []


def test_config_mistake_is_reported_before_the_training_stack_loads(tmp_path):
    # -X importtime lists every module the program imported, on stderr, before the error line.
    proc = subprocess.run([sys.executable, "-X", "importtime", os.path.join(ROOT, "train.py"),
                           f"--workdir={tmp_path / 'w'}", "--config.jr_lambda=-1"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "jacuap.configs.reference" in imported  # the list is complete
    heavy = [m for m in imported if m.split(".")[0] in ("orbax", "optax", "scipy") or m.startswith("jacuap.train")]
    assert heavy == []
    assert proc.stderr.strip().splitlines()[-1] == "train.py: error: jr_lambda must be a finite number >= 0, got -1.0"


@pytest.mark.parametrize("args", ATTACK_BEFORE_JAX, ids=lambda a: " ".join(a))
def test_attack_py_answers_before_jax_loads(tmp_path, args):
    # A jax that cannot be imported: the answer must not need it (nor the attacks, train or scipy, which import it).
    for name in ("jax", "scipy"):
        (tmp_path / "blocked" / name).mkdir(parents=True)
        (tmp_path / "blocked" / name / "__init__.py").write_text(f"raise ImportError('{name} imported')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path / "blocked"), ROOT]))
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "attack.py")] + [a.format(d=tmp_path) for a in args],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    if args == ["--help"]:
        assert proc.returncode == 0, proc.stderr
        assert "sgd_uap, sga_uap" in proc.stdout and "standard" in proc.stdout
    else:
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and proc.stderr.startswith("attack.py: error: ")


def test_cli_and_train_py_import_no_jax():
    # train.py's module level: its flags, and the default config loaded with the overrides of sys.argv.
    code = ("import runpy, sys; sys.argv = ['train.py', '--workdir=x', '--config.seed=1']; "
            f"runpy.run_path({os.path.join(ROOT, 'train.py')!r}, run_name='not_main'); "
            "print(','.join(m for m in ('jax', 'flax', 'orbax', 'jacuap.train') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert out.strip() == ""


def test_help_names_the_config_fields_and_the_reference():
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), "--help"], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())
    assert "python -m jacuap.configs.reference" in text and "README 'Config fields'" in text
    for field in ("momentum", "adv_eps", "max_to_keep", "eval_num_inputs", "progress"):
        assert field in text


# ---- jacuap.cli's one-line messages, in this process.

@pytest.fixture
def prog(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["prog.py"])


def _exit(capsys, exc, workdir=None):
    with pytest.raises(SystemExit) as info:
        with cli.user_errors(workdir=workdir):
            raise exc
    return info.value.code, capsys.readouterr().err


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES, errno.EPERM])
def test_unwritable_folder_says_choose_another_not_free_space(prog, capsys, tmp_path, code):
    exit_code, err = _exit(capsys, OSError(code, os.strerror(code), str(tmp_path / "config.json")), str(tmp_path))
    assert exit_code == 1  # a fault of the environment, not of the request
    assert err == (f"prog.py: error: {tmp_path} is not writable ({os.strerror(code)} ({tmp_path / 'config.json'})); "
                   "choose a writable folder\n")


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_full_disk_says_free_space(prog, capsys, tmp_path, code):
    exit_code, err = _exit(capsys, OSError(code, os.strerror(code), "w/metrics.jsonl"), str(tmp_path))
    assert exit_code == 1
    assert err.endswith("no checkpoint was written; free space and rerun the same command to resume\n")
    assert "not writable" not in err


def test_file_in_the_way_of_the_workdir(prog, capsys, tmp_path):
    exit_code, err = _exit(capsys, FileExistsError(errno.EEXIST, "File exists", "afile"), "afile")
    assert (exit_code, err) == (2, "prog.py: error: cannot create the folder 'afile': File exists; a file is in the "
                                   "way; choose another folder\n")


def test_check_workdir(tmp_path):
    cli.check_workdir(str(tmp_path))
    cli.check_workdir(str(tmp_path / "new" / "deeper"))
    (tmp_path / "f").write_text("")
    os.symlink(tmp_path / "gone", tmp_path / "link")
    for bad, words in [("", "must name a folder"), (str(tmp_path / "f"), "is a file"),
                       (str(tmp_path / "f" / "x"), "cannot be created"),
                       (str(tmp_path / "link"), "is a broken symbolic link, not a folder")]:
        with pytest.raises(errors.ConfigError, match=words):
            cli.check_workdir(bad)
    assert sorted(os.listdir(tmp_path)) == ["f", "link"]


def test_unknown_field_advice():
    assert reference.unknown_field_message("learning_rte") == \
        "unknown config field 'learning_rte' (did you mean 'learning_rate'?)"
    far = reference.unknown_field_message("zzz")
    assert far.startswith("unknown config field 'zzz'; the fields are dataset, data_dir, num_validation, model, ")
    assert "did you mean" not in far


# ---- The tfds offline rule.

def test_offline_probe_is_bounded_even_when_the_connection_hangs(monkeypatch):
    monkeypatch.delenv("JACUAP_OFFLINE", raising=False)
    released = threading.Event()

    def hang(*args, **kwargs):  # a name lookup or SYN that never comes back (until the test ends)
        released.wait(30)
        raise socket.timeout("timed out")

    monkeypatch.setattr(socket, "create_connection", hang)
    start = time.monotonic()
    try:
        reason = tfds_lib.offline_reason("mnist", timeout=0.3)
    finally:
        released.set()
    assert time.monotonic() - start < 2
    assert reason == "no network (storage.googleapis.com:443 did not answer within 0.3 s)"


def test_offline_probe_reports_an_unreachable_host(monkeypatch):
    monkeypatch.delenv("JACUAP_OFFLINE", raising=False)

    def refuse(*args, **kwargs):
        raise ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")

    monkeypatch.setattr(socket, "create_connection", refuse)
    assert tfds_lib.offline_reason("cifar10") == "no network (www.cs.toronto.edu:443: Connection refused)"


def test_offline_load_dataset_fails_at_once_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("JACUAP_OFFLINE", "1")
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST_DIR", str(tmp_path / "no-debian"))
    for name in ("mnist", "fashion_mnist", "cifar10"):
        start = time.monotonic()
        with pytest.raises(errors.DataError) as e:
            data.load_dataset(name)
        assert time.monotonic() - start < 10
        assert "cannot be downloaded: JACUAP_OFFLINE is set; nothing was downloaded" in str(e.value)
        assert str(tmp_path / "tfds") in str(e.value)
    assert os.listdir(tmp_path) == []


def test_a_prepared_tfds_copy_needs_no_network(tmp_path):
    assert not tfds_lib.is_prepared("mnist", tmp_path)
    (tmp_path / "mnist" / "3.0.1").mkdir(parents=True)
    assert not tfds_lib.is_prepared("mnist", tmp_path)
    (tmp_path / "mnist" / "3.0.1" / "dataset_info.json").write_text("{}")
    assert tfds_lib.is_prepared("mnist", tmp_path)


def test_a_failed_download_removes_what_it_created(tmp_path, monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")
    monkeypatch.setattr(tfds_lib, "offline_reason", lambda name: None)  # "online"
    (tmp_path / "mine.txt").write_text("kept")
    (tmp_path / "downloads").mkdir()
    (tmp_path / "downloads" / "old.zip").write_text("kept")

    def partial_download(name, data_dir, **kwargs):
        os.makedirs(os.path.join(data_dir, "mnist", "3.0.1.incomplete7"))
        with open(os.path.join(data_dir, "downloads", "part.tmp"), "w") as f:
            f.write("half")
        raise ConnectionResetError("connection reset mid-download")

    monkeypatch.setattr(tfds, "data_source", partial_download)
    with pytest.raises(errors.DataError, match="failed: ConnectionResetError"):
        data.load_tfds("mnist", data_dir=str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["downloads", "mine.txt"]
    assert os.listdir(tmp_path / "downloads") == ["old.zip"]


# ---- The config-field reference.

def test_readme_config_table_is_the_generated_one():
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    assert reference.BEGIN in readme and reference.END in readme
    assert reference.replace_table(readme) == readme, \
        "README's config table is stale: run `python -m jacuap.configs.reference --update README.md`"


def test_reference_covers_every_field_and_names_the_registries():
    assert set(reference.DESCRIPTIONS) == set(configs.FIELDS)
    assert [name for name, _, _ in reference.rows()] == list(reference.DESCRIPTIONS)
    from jacuap import models

    text = reference.DESCRIPTIONS
    assert text["dataset"].startswith(", ".join(data.DATASETS) + " ")
    assert text["model"].startswith(", ".join(models.MODELS) + " ")
    for field, choices in [("optimizer", configs.OPTIMIZERS), ("lr_schedule", configs.LR_SCHEDULES),
                           ("adv_training", configs.ADV_TRAINING), ("jr_space", configs.JR_SPACES)]:
        for choice in choices:
            assert choice in text[field], (field, choice)
