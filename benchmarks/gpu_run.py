"""One-command GPU benchmark run on a bare, offline GPU machine.

Here (online, with the data)::

    python benchmarks/gpu_run.py prepare            # -> gpu_carry/ (git-ignored; ~32 MiB)

copies the four Fashion-MNIST IDX files into ``gpu_carry/fashion_mnist/``,
downloads wheels of the small pure-Python packages jacuap's scripts import
that a GPU image may lack (ml_collections, absl-py, tqdm, PyYAML) into
``gpu_carry/wheels/`` and writes ``gpu_carry/manifest.json`` (sizes, sha256).

There (the repo's working tree with ``gpu_carry/`` carried along)::

    python3 benchmarks/gpu_run.py run --carry gpu_carry --out "$OUT"

checks the carry against its manifest, pip-installs (``--no-index``, into a
scratch folder put on ``PYTHONPATH``) only the carried packages that fail to
import, then runs, each as a subprocess with its own share of ``--budget-s``:

1. ``speed``: ``benchmarks/speed.py`` (jacuap conv; every row, the CNN, CIFAR-size and ImageNet-size
   ones, against the uncompiled PyTorch forms ``eager,func,jacrev``) -> ``OUT/speed_gpu.json``
2. ``speed_compile``: the same rows against the ``torch.compile`` forms (``--compile-variants``,
   default ``compile,func_compile,jacrev_compile``; each compiles on its first call, which
   ``speed.py`` times apart) -> ``OUT/speed_gpu_compile.json``.  A form that fails (no C compiler
   for Triton's launcher on a bare image, the double backward of the eager JR step) is an error
   string in its row, not a failed step.
3. ``train``: ``train.py`` (cnn, Fashion-MNIST, one epoch) -> ``OUT/train_summary.json``
4. ``attack``: ``attack.py`` (SGD-UAP, l_inf 0.1) -> ``OUT/attack_results.json``, ``OUT/attack_uaps.png``
5. ``speed_lax``: ``benchmarks/speed.py --conv lax --variants eager`` -> ``OUT/speed_gpu_lax_conv.json``
6. ``reproduce`` (only with ``--steps reproduce``): ``benchmarks/reproduce.py`` continuing the sweep from
   the committed ``results/`` (copied to ``OUT/results``); its new model records come back there.

After the speed steps ``OUT/gpu_run.json`` holds ``speed_best``: per row jacuap's seconds (the
``speed`` step's), the fastest PyTorch form over both speed files, and the ratio, so that one
file says how every row stands against the best PyTorch.  The split keeps the compiles (tens of
seconds each) from starving the rows: each step writes its JSON after every row, and a step
stopped at its timeout keeps the rows it finished.

``OUT/gpu_run.json`` (machine, ``nvidia-smi -L``, ``jax.devices()``, and per
step the command, wall time, exit code and last 40 lines of output) is
rewritten after every step, so a run stopped early keeps what finished;
``OUT/gpu_run.log`` holds every step's full output.  The train workdir
(checkpoints: many files, deep folders) stays in ``--workdir`` (a temporary
folder by default), outside ``OUT``; only the small result files are copied.

``--quick`` runs tiny sizes (sklearn digits, an MLP): about a minute on a CPU.

Standard library only: it starts before anything is installed.  Exit status:
0 when every step ran and passed, 1 when one failed or was skipped, 2 for a
usage error (one line on stderr).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Dict, List, Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CARRY = "gpu_carry"
DEFAULT_DATA_DIR = "/usr/share/datasets/fashion-mnist"
IDX_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
# Import name -> distribution, for the small packages that are carried as wheels.
# jax, flax, optax, chex, orbax and torch are the GPU image's; sklearn (digits
# only), matplotlib (attack.py's plot), scipy and tensorflow_datasets are too
# big to carry and either on the image or not needed by these steps.
CARRIED = {"ml_collections": "ml_collections", "absl": "absl-py", "yaml": "PyYAML", "tqdm": "tqdm"}
NEEDED = ("numpy", "jax", "flax", "optax", "chex", "orbax.checkpoint", "torch", "sklearn", "matplotlib")
WHEEL_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
                   "manylinux2014_x86_64", "manylinux1_x86_64")
TAIL_LINES = 40
CONFIG_CANDIDATES = ("configs/default.py", "jacuap/configs/default.py")
# Steps in order of importance: (name, share of the budget, minimum seconds full/quick).
# A share caps a step's timeout; what a step leaves unused goes to the steps after it.
STEPS = (("speed", 0.30, 90, 10), ("speed_compile", 0.30, 90, 10), ("train", 0.14, 45, 10),
         ("attack", 0.08, 30, 10), ("speed_lax", 0.18, 60, 10), ("reproduce", 1.0, 120, 30))
# reproduce (benchmarks/reproduce.py, the v2 sweep) runs only when asked for: --steps reproduce.
DEFAULT_STEPS = ("speed", "speed_compile", "train", "attack", "speed_lax")
UNCOMPILED_VARIANTS = "eager,func,jacrev"
COMPILED_VARIANTS = "compile,func_compile,jacrev_compile"


class UsageError(Exception):
    """A user mistake: reported as one line, exit status 2."""


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_json(path: str, obj: Any) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


# ---------------------------------------------------------------------------
# prepare
# ---------------------------------------------------------------------------


def _installed_version(dist: str) -> Optional[str]:
    try:
        from importlib import metadata

        return metadata.version(dist)
    except Exception:
        return None


def prepare(args) -> int:
    carry = os.path.abspath(args.carry)
    src = os.path.expanduser(args.data_dir)
    if not os.path.isdir(src):
        raise UsageError(f"data dir {src} not found (give --data-dir with the four Fashion-MNIST IDX .gz files)")
    missing = [n for n in IDX_FILES if not os.path.isfile(os.path.join(src, n))]
    if missing:
        raise UsageError(f"data dir {src} lacks {', '.join(missing)}")
    if os.path.exists(carry) and not os.path.isdir(carry):
        raise UsageError(f"--carry {carry} exists and is not a directory")
    os.makedirs(carry, exist_ok=True)

    data_out = os.path.join(carry, "fashion_mnist")
    shutil.rmtree(data_out, ignore_errors=True)
    os.makedirs(data_out)
    for name in IDX_FILES:
        shutil.copyfile(os.path.join(src, name), os.path.join(data_out, name))
    print(f"copied {len(IDX_FILES)} IDX files from {src} to {data_out}")

    wheels_out = os.path.join(carry, "wheels")
    shutil.rmtree(wheels_out, ignore_errors=True)  # one version of each: two would stop the install
    wheel_info: Dict[str, Any] = {"downloaded": False}
    if not args.no_wheels:
        os.makedirs(wheels_out)
        # The versions this interpreter has (known to work with jacuap), else the newest.
        reqs = []
        for dist in CARRIED.values():
            version = _installed_version(dist)
            reqs.append(f"{dist}=={version}" if version else dist)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
               "--python-version", args.python_version, "--implementation", "cp"]
        for plat in WHEEL_PLATFORMS:
            cmd += ["--platform", plat]
        cmd += ["-d", wheels_out] + reqs
        print("$ " + " ".join(cmd), flush=True)
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if proc.returncode != 0:
            sys.stdout.write(proc.stdout[-4000:])
            raise UsageError(f"pip download failed (exit {proc.returncode}); offline? rerun with --no-wheels "
                             f"to carry the data only")
        wheel_info = {"downloaded": True, "requirements": reqs, "python_version": args.python_version,
                      "platforms": list(WHEEL_PLATFORMS)}

    files = []
    for root, _, names in os.walk(carry):
        for name in sorted(names):
            path = os.path.join(root, name)
            rel = os.path.relpath(path, carry)
            if rel == "manifest.json" or not (rel.startswith("fashion_mnist" + os.sep) or rel.startswith("wheels" + os.sep)):
                continue
            files.append({"path": rel.replace(os.sep, "/"), "bytes": os.path.getsize(path), "sha256": _sha256(path)})
    files.sort(key=lambda f: f["path"])
    total = sum(f["bytes"] for f in files)
    manifest = {"created": _now(), "source_data_dir": src, "wheels": wheel_info, "total_bytes": total,
                "files": files}
    _write_json(os.path.join(carry, "manifest.json"), manifest)
    for f in files:
        print(f"  {f['bytes']:>10d}  {f['path']}")
    on_disk = sum(os.path.getsize(os.path.join(r, n)) for r, _, ns in os.walk(carry) for n in ns)
    print(f"{carry}: {len(files)} files, {_mib(total)} (on disk with manifest and any other files: {_mib(on_disk)})")
    if on_disk > args.max_mib * 2**20:
        raise UsageError(f"{carry} holds {_mib(on_disk)}, over --max-mib {args.max_mib}")
    return 0


# ---------------------------------------------------------------------------
# run
# ---------------------------------------------------------------------------


def check_carry(carry: str) -> Dict[str, Any]:
    """The carry against its manifest; raises UsageError on a missing or changed file."""
    if not os.path.isdir(carry):
        raise UsageError(f"carry dir {carry} not found (run `python benchmarks/gpu_run.py prepare` where the data "
                         f"is, and carry the folder along)")
    manifest_path = os.path.join(carry, "manifest.json")
    if not os.path.isfile(manifest_path):
        raise UsageError(f"{manifest_path} not found (run `python benchmarks/gpu_run.py prepare --carry {carry}`)")
    try:
        with open(manifest_path) as f:
            manifest = json.load(f)
        files = manifest["files"]
    except (OSError, ValueError, KeyError) as exc:
        raise UsageError(f"{manifest_path} unreadable: {exc}") from None
    for entry in files:
        path = os.path.join(carry, entry["path"])
        if not os.path.isfile(path):
            raise UsageError(f"carried file {path} is missing (carry {carry} whole)")
        if os.path.getsize(path) != entry["bytes"] or _sha256(path) != entry["sha256"]:
            raise UsageError(f"carried file {path} differs from {manifest_path} (truncated copy?)")
    return {"manifest": manifest_path, "created": manifest.get("created"), "files": len(files),
            "total_bytes": manifest.get("total_bytes"), "verified": True}


_PROBE = r"""
import importlib, json, sys
mods = sys.argv[1].split(",")
full = sys.argv[2] == "1"
out = {"python": sys.version.split()[0], "executable": sys.executable, "modules": {}, "import_errors": {}}
for m in mods:
    try:
        mod = importlib.import_module(m)
        out["modules"][m] = str(getattr(mod, "__version__", "ok"))
    except Exception as exc:
        out["modules"][m] = None
        out["import_errors"][m] = (type(exc).__name__ + ": " + str(exc))[:300]
if full:
    try:
        import jax
        out["jax_backend"] = jax.default_backend()
        out["jax_devices"] = [str(d) for d in jax.devices()]
        out["jax_device_kinds"] = sorted({getattr(d, "device_kind", "") for d in jax.devices()})
    except Exception as exc:
        out["jax_error"] = (type(exc).__name__ + ": " + str(exc))[:500]
    try:
        import torch
        out["torch_cuda_available"] = torch.cuda.is_available()
        if torch.cuda.is_available():
            out["torch_gpu_name"] = torch.cuda.get_device_name(0)
            out["torch_cuda"] = torch.version.cuda
    except Exception as exc:
        out["torch_error"] = (type(exc).__name__ + ": " + str(exc))[:500]
print("PROBE_JSON " + json.dumps(out))
"""


def _probe(python: str, modules, full: bool, env: Dict[str, str], timeout: float) -> Dict[str, Any]:
    try:
        proc = subprocess.run([python, "-c", _PROBE, ",".join(modules), "1" if full else "0"], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"probe timed out after {timeout:.0f}s"}
    for line in proc.stdout.splitlines():
        if line.startswith("PROBE_JSON "):
            return json.loads(line[len("PROBE_JSON "):])
    return {"error": f"probe exit {proc.returncode}", "tail": proc.stdout.splitlines()[-TAIL_LINES:]}


def _install(python: str, carry: str, site: str, missing: List[str], env: Dict[str, str]) -> Dict[str, Any]:
    wheels = os.path.join(carry, "wheels")
    dists = [CARRIED[m] for m in missing]
    info: Dict[str, Any] = {"modules": missing, "distributions": dists, "target": site}
    if not os.path.isdir(wheels) or not os.listdir(wheels):
        info["error"] = f"no wheels in {wheels} (prepared with --no-wheels?)"
        return info
    cmd = [python, "-m", "pip", "install", "--no-index", "--find-links", wheels, "--no-deps", "--no-compile",
           "--no-cache-dir", "--disable-pip-version-check", "--target", site] + dists
    info["cmd"] = cmd
    proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    info["exit_code"] = proc.returncode
    info["tail"] = proc.stdout.splitlines()[-TAIL_LINES:]
    return info


class _Runner:
    """Runs one step in its own process group, teeing its output; kills the group on timeout."""

    current: Optional[subprocess.Popen] = None

    def __init__(self, log_path: str):
        self.log_path = log_path

    @staticmethod
    def kill_current(grace: float = 10.0) -> None:
        proc = _Runner.current
        if proc is None or proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(proc.pid, sig)
            except (ProcessLookupError, PermissionError):
                return
            try:
                proc.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def run(self, name: str, cmd: List[str], timeout: float, env: Dict[str, str]) -> Dict[str, Any]:
        kwargs: Dict[str, Any] = {}
        if sys.version_info >= (3, 11):
            kwargs["process_group"] = 0  # own group (killable whole), same session (ends with us)
        else:  # pragma: no cover
            kwargs["preexec_fn"] = os.setpgrp
        chunks: List[str] = []
        start = time.perf_counter()
        with open(self.log_path, "a") as log:
            log.write(f"\n===== {name} ({_now()}): {' '.join(cmd)}\n")
            log.flush()
            proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, **kwargs)
            _Runner.current = proc

            def pump():
                for raw in iter(lambda: proc.stdout.read1(65536), b""):
                    text = raw.decode("utf-8", "replace")
                    chunks.append(text)
                    log.write(text)
                    log.flush()
                    sys.stdout.write(text)
                    sys.stdout.flush()

            reader = threading.Thread(target=pump, daemon=True)
            reader.start()
            timed_out = False
            try:
                rc = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
                self.kill_current()
                rc = proc.wait()
            reader.join(15)
            _Runner.current = None
            wall = time.perf_counter() - start
            log.write(f"===== {name}: exit {rc}{' (timed out)' if timed_out else ''} after {wall:.1f}s\n")
        lines = [ln for ln in "".join(chunks).replace("\r", "\n").splitlines() if ln.strip()]
        return {"exit_code": 124 if timed_out else rc, "raw_exit_code": rc, "timed_out": timed_out,
                "wall_s": round(wall, 2), "tail": lines[-TAIL_LINES:]}


def speed_best(out: str) -> Dict[str, Any]:
    """Per row: jacuap's seconds, the fastest PyTorch form over ``speed_gpu.json`` and ``speed_gpu_compile.json``.

    Either file may be partial or missing (a step stopped or skipped); a
    form recorded as an error string is listed under ``failed``.
    """
    runs = {}
    for name in ("speed_gpu.json", "speed_gpu_compile.json"):
        try:
            with open(os.path.join(out, name)) as f:
                runs[name] = json.load(f).get("rows", {})
        except (OSError, ValueError):
            continue
    best: Dict[str, Any] = {}
    for rows in runs.values():
        for row, r in rows.items():
            entry = best.setdefault(row, {"jacuap_s": r.get("jacuap_s"), "best": None, "best_s": None, "failed": {}})
            if entry["jacuap_s"] is None:
                entry["jacuap_s"] = r.get("jacuap_s")
            for variant, value in (r.get("references") or {}).items():
                if isinstance(value, (int, float)):
                    if entry["best_s"] is None or value < entry["best_s"]:
                        entry["best"], entry["best_s"] = variant, value
                else:
                    entry["failed"][variant] = value
    for entry in best.values():
        if entry["best_s"] and entry["jacuap_s"]:
            entry["ratio"] = entry["jacuap_s"] / entry["best_s"]
    return best


def _config_path(args) -> str:
    """train.py's config file: --config, else the first of CONFIG_CANDIDATES in the repo."""
    if args.config:
        return args.config
    for rel in CONFIG_CANDIDATES:
        if os.path.isfile(os.path.join(REPO, rel)):
            return rel
    return CONFIG_CANDIDATES[0]  # train.py then says what is missing


def _step_commands(args, carry: str, out: str, work: str, python: str, quick_dataset: str) -> Dict[str, Any]:
    data = os.path.join(carry, "fashion_mnist")
    speed = [python, "benchmarks/speed.py", "--data-dir", data]
    if args.quick:
        speed += ["--quick", "--dataset", quick_dataset]
    speed += list(args.speed_arg)
    run_dir = os.path.join(work, "run")
    if args.quick:
        model = ["--config.dataset=" + quick_dataset, "--config.model=mlp"]
        if quick_dataset != "digits":
            model.append("--config.data_dir=" + data)
        n = "200"
    else:
        model = ["--config.dataset=fashion_mnist", "--config.data_dir=" + data, "--config.model=cnn"]
        n = "2000"
    return {
        # --variants before the user's --speed-arg values would be overridden by theirs; after, it
        # overrides them: the split between the two speed steps is this script's.
        "speed": {"cmd": speed + ["--variants", UNCOMPILED_VARIANTS, "--out", os.path.join(out, "speed_gpu.json")],
                  "outputs": {os.path.join(out, "speed_gpu.json"): None}},
        "speed_compile": {"cmd": speed + ["--variants", args.compile_variants,
                                          "--out", os.path.join(out, "speed_gpu_compile.json")],
                          "outputs": {os.path.join(out, "speed_gpu_compile.json"): None}},
        "train": {"cmd": [python, "train.py", "--workdir=" + run_dir, "--config=" + _config_path(args)] + model
                         + ["--config.num_epochs=1", "--config.progress=False"],
                  "outputs": {os.path.join(out, "train_summary.json"): os.path.join(run_dir, "summary.json")}},
        "attack": {"cmd": [python, "attack.py", "--workdir=" + run_dir, "--attack=sgd_uap", "--norm=linf",
                           "--eps=0.1", "--num_craft=" + n, "--num_eval=" + n,
                           "--out=" + os.path.join(run_dir, "attack"), "--noprogress"],
                   "outputs": {os.path.join(out, "attack_results.json"): os.path.join(run_dir, "attack", "results.json"),
                               os.path.join(out, "attack_uaps.png"): os.path.join(run_dir, "attack", "uaps.png")}},
        "speed_lax": {"cmd": speed + ["--conv", "lax", "--variants", "eager",
                                      "--out", os.path.join(out, "speed_gpu_lax_conv.json")],
                      "outputs": {os.path.join(out, "speed_gpu_lax_conv.json"): None}},
        # The sweep continues from the repository's committed records (copied to OUT/results first):
        # the new records come back in OUT/results; copy them into results/ and commit.
        "reproduce": {"cmd": [python, "benchmarks/reproduce.py", "--data_dir=" + carry,
                              "--out=" + os.path.join(out, "results"), "--workroot=" + os.path.join(work, "reproduce")]
                             + (["--quick", "--datasets=" + quick_dataset] if args.quick else [])
                             + list(args.reproduce_arg),
                      "outputs": {}, "copy_tree": (os.path.join(REPO, "results"), os.path.join(out, "results"))},
    }


def run(args) -> int:
    t0 = time.monotonic()
    deadline = t0 + args.budget_s
    carry = os.path.abspath(args.carry)
    out_arg = args.out or os.environ.get("OUT")
    if not out_arg:
        raise UsageError("no output folder: give --out OUTDIR (or set OUT)")
    out = os.path.abspath(out_arg)
    if os.path.exists(out) and not os.path.isdir(out):
        raise UsageError(f"--out {out} exists and is not a directory")
    steps_wanted = [s for s in args.steps.split(",") if s]
    unknown = sorted(set(steps_wanted) - {s[0] for s in STEPS})
    if unknown:
        raise UsageError(f"unknown --steps {unknown}; choose from {','.join(s[0] for s in STEPS)}")
    if args.budget_s <= 0:
        raise UsageError("--budget-s must be positive")
    carry_check = check_carry(carry)
    os.makedirs(out, exist_ok=True)
    work = os.path.abspath(args.workdir) if args.workdir else tempfile.mkdtemp(prefix="jacuap_gpu_run_")
    os.makedirs(work, exist_ok=True)
    python = args.python or sys.executable
    log_path = os.path.join(out, "gpu_run.log")
    open(log_path, "w").close()

    report: Dict[str, Any] = {
        "status": "running", "started": _now(), "argv": sys.argv[1:], "quick": args.quick,
        "budget_s": args.budget_s, "repo": REPO, "carry": carry_check, "workdir": work, "python": python,
        "host": {"platform": platform.platform(), "node": platform.node(), "cpu_count": os.cpu_count()},
        "env": {k: v for k, v in os.environ.items()
                if k.startswith(("XLA_", "JAX_", "CUDA_", "NVIDIA_")) or k in ("PYTHONPATH",)},
        "steps": {},
    }
    report_path = os.path.join(out, "gpu_run.json")

    def save():
        report["elapsed_s"] = round(time.monotonic() - t0, 2)
        _write_json(report_path, report)

    def on_term(signum, _frame):  # the caller's timeout: stop the step, keep the report
        _Runner.kill_current(grace=3.0)
        report["status"] = f"stopped by signal {signum}"
        save()
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    save()

    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            p = subprocess.run([smi, "-L"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=30)
            report["nvidia_smi_L"] = p.stdout.strip().splitlines()
        except subprocess.TimeoutExpired:
            report["nvidia_smi_L"] = ["nvidia-smi -L timed out"]
    else:
        report["nvidia_smi_L"] = None
    print("nvidia-smi -L:", report["nvidia_smi_L"], flush=True)

    # Install only what is missing, into a scratch site dir on PYTHONPATH.
    before = _probe(python, list(CARRIED), False, env, timeout=120)
    missing = [m for m in CARRIED if before.get("modules", {}).get(m) is None] if "modules" in before else []
    report["preinstall_probe"] = before
    if missing:
        site = os.path.join(work, "site")
        os.makedirs(site, exist_ok=True)
        report["install"] = _install(python, carry, site, missing, env)
        env["PYTHONPATH"] = site + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        print(f"installed {missing} into {site}: exit {report['install'].get('exit_code')}", flush=True)
    else:
        report["install"] = {"modules": [], "note": "nothing missing"}
    probe = _probe(python, list(CARRIED) + list(NEEDED), True, env, timeout=240)
    report["probe"] = probe
    report["jax_devices"] = probe.get("jax_devices")
    print(f"jax devices: {probe.get('jax_devices')}; torch cuda: {probe.get('torch_cuda_available')} "
          f"{probe.get('torch_gpu_name', '')}; import errors: {probe.get('import_errors')}", flush=True)
    save()

    quick_dataset = "digits"
    if args.quick and probe.get("modules", {}).get("sklearn") is None:
        quick_dataset = "fashion_mnist"  # digits needs scikit-learn
        report["quick_dataset_note"] = "sklearn missing: --quick uses fashion_mnist instead of digits"
    commands = _step_commands(args, carry, out, work, python, quick_dataset)
    runner = _Runner(log_path)
    plan = [s for s in STEPS if s[0] in steps_wanted]
    ok = True
    for i, (name, weight, min_full, min_quick) in enumerate(plan):
        spec = commands[name]
        entry: Dict[str, Any] = {"cmd": spec["cmd"], "skipped": None}
        report["steps"][name] = entry
        remaining = deadline - time.monotonic()
        minimum = min_quick if args.quick else min_full
        if name == "attack" and report["steps"].get("train", {}).get("exit_code") != 0 and "train" in steps_wanted:
            entry["skipped"] = "train did not finish with exit 0"
        elif remaining < minimum:
            entry["skipped"] = f"only {remaining:.0f}s of the {args.budget_s:.0f}s budget left (needs >= {minimum}s)"
        if entry["skipped"]:
            ok = False
            print(f"--- {name}: skipped ({entry['skipped']})", flush=True)
            save()
            continue
        share = remaining * weight / sum(w for _, w, _, _ in plan[i:])
        timeout = min(remaining, max(share, minimum))
        entry["timeout_s"] = round(timeout, 1)
        print(f"--- {name} (timeout {timeout:.0f}s): {' '.join(spec['cmd'])}", flush=True)
        save()
        if spec.get("copy_tree") and os.path.isdir(spec["copy_tree"][0]) and not os.path.exists(spec["copy_tree"][1]):
            shutil.copytree(*spec["copy_tree"])
        entry.update(runner.run(name, spec["cmd"], timeout, env))
        entry["outputs"] = []
        for dst, src in spec["outputs"].items():
            if src is not None and os.path.isfile(src):
                shutil.copyfile(src, dst)
            if os.path.isfile(dst):
                entry["outputs"].append(os.path.relpath(dst, out))
        ok = ok and entry["exit_code"] == 0
        print(f"--- {name}: exit {entry['exit_code']}{' (timed out)' if entry['timed_out'] else ''} "
              f"in {entry['wall_s']:.1f}s", flush=True)
        if name.startswith("speed") and name != "speed_lax":
            report["speed_best"] = speed_best(out)
        save()
    report["status"] = "done"
    report["finished"] = _now()
    report["all_ok"] = ok
    save()
    print(f"wrote {report_path} ({'all steps passed' if ok else 'some step failed or was skipped'})")
    return 0 if ok else 1


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    pp = sub.add_parser("prepare", help="build the carry folder (here, online)")
    pp.add_argument("--carry", default=DEFAULT_CARRY, help=f"carry folder (default {DEFAULT_CARRY}, git-ignored)")
    pp.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help=f"the Fashion-MNIST IDX .gz files (default {DEFAULT_DATA_DIR})")
    pp.add_argument("--no-wheels", action="store_true", help="skip the wheel download (offline)")
    pp.add_argument("--python-version", default="3.12", help="Python of the GPU machine, for binary wheels (default 3.12)")
    pp.add_argument("--max-mib", type=float, default=60.0, help="fail when the carry is larger (default 60)")
    pr = sub.add_parser("run", help="run the benchmarks (on the GPU machine)")
    pr.add_argument("--carry", default=DEFAULT_CARRY, help=f"the prepared carry folder (default {DEFAULT_CARRY})")
    pr.add_argument("--out", default=None, help="output folder (default $OUT)")
    pr.add_argument("--quick", action="store_true", help="tiny sizes (digits, mlp): about a minute on a CPU")
    pr.add_argument("--budget-s", type=float, default=480.0, help="total seconds for everything (default 480)")
    pr.add_argument("--steps", default=",".join(DEFAULT_STEPS), help="comma list, in this order, of "
                    + ",".join(s[0] for s in STEPS) + " (default " + ",".join(DEFAULT_STEPS) + ")")
    pr.add_argument("--workdir", default=None, help="scratch: train workdir, installed wheels (default: a temp dir)")
    pr.add_argument("--config", default=None,
                    help="train.py's config file (default: the first of " + ", ".join(CONFIG_CANDIDATES) + " found)")
    pr.add_argument("--python", default=None, help="interpreter for the steps (default: this one)")
    pr.add_argument("--compile-variants", default=COMPILED_VARIANTS,
                    help="the torch.compile forms of the speed_compile step (default " + COMPILED_VARIANTS + ")")
    pr.add_argument("--speed-arg", action="append", default=[], metavar="ARG",
                    help="extra argument for speed.py (repeatable; e.g. --speed-arg=--no-memory)")
    pr.add_argument("--reproduce-arg", action="append", default=[], metavar="ARG",
                    help="extra argument for reproduce.py (repeatable; e.g. --reproduce-arg=--archs=cnn)")
    args = p.parse_args(argv)
    try:
        return prepare(args) if args.command == "prepare" else run(args)
    except UsageError as exc:
        print(f"gpu_run.py {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
