"""benchmarks/gpu_run.py: ``prepare`` builds a verified carry, ``run --quick`` runs every step (on CPU here).

The wheel download needs the network, so ``prepare`` runs with ``--no-wheels``
on a fake data folder; ``run`` then installs nothing (every carried package
imports here).  No timing is asserted.
"""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "benchmarks", "gpu_run.py")
IDX_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


def _gpu_run(*args, env=None, timeout=60):
    return subprocess.run([sys.executable, SCRIPT, *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, timeout=timeout)


@pytest.fixture
def carry(tmp_path):
    """A carry prepared from a fake data folder of four tiny files."""
    src = tmp_path / "fake_fashion_mnist"
    src.mkdir()
    for i, name in enumerate(IDX_FILES):
        (src / name).write_bytes(bytes([i]) * (10 + i))
    out = tmp_path / "carry"
    proc = _gpu_run("prepare", "--carry", str(out), "--data-dir", str(src), "--no-wheels")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


def test_prepare_copies_and_writes_manifest(carry):
    manifest = json.loads((carry / "manifest.json").read_text())
    paths = {f["path"]: f for f in manifest["files"]}
    assert set(paths) == {f"fashion_mnist/{n}" for n in IDX_FILES}
    for i, name in enumerate(IDX_FILES):
        assert (carry / "fashion_mnist" / name).read_bytes() == bytes([i]) * (10 + i)
        assert paths[f"fashion_mnist/{name}"]["bytes"] == 10 + i
        assert len(paths[f"fashion_mnist/{name}"]["sha256"]) == 64
    assert manifest["total_bytes"] == sum(10 + i for i in range(4))
    assert not manifest["wheels"]["downloaded"]


def test_user_mistakes_are_one_line_exit_2(tmp_path, carry):
    proc = _gpu_run("prepare", "--carry", str(tmp_path / "c"), "--data-dir", str(tmp_path / "nowhere"), "--no-wheels")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    proc = _gpu_run("run", "--carry", str(tmp_path / "missing"), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2 and "not found" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    # A carried file that changed on the way is caught before anything runs.
    (carry / "fashion_mnist" / IDX_FILES[0]).write_bytes(b"truncated")
    proc = _gpu_run("run", "--carry", str(carry), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2 and "differs" in proc.stderr, proc.stderr


@pytest.mark.bench  # a benchmark script end to end: make test-bench (.ci/run runs it)
@pytest.mark.slow
def test_run_quick_on_cpu(tmp_path, carry):
    out, work = tmp_path / "out", tmp_path / "work"
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", JAX_PLATFORMS="cpu")
    speed_args = ["--reps=1", "--slow-reps=1", "--pretrain-steps=1", "--set-size=64", "--deepfool-size=32",
                  "--power-iters=2", "--no-memory", "--torch-threads=1",
                  "--rows=train_plain,input_jacobian"]  # the orchestration is under test; speed.py has its own
    proc = _gpu_run("run", "--carry", str(carry), "--out", str(out), "--workdir", str(work), "--quick",
                    "--budget-s", "500", "--compile-variants=func_compile",  # one compile per row: minutes, not ten
                    *[f"--speed-arg={a}" for a in speed_args], env=env, timeout=580)
    assert (out / "gpu_run.json").is_file(), proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "gpu_run.json").read_text())
    assert report["status"] == "done" and report["carry"]["verified"]
    assert report["jax_devices"] and all("cpu" in d.lower() for d in report["jax_devices"])
    assert list(report["steps"]) == ["speed", "speed_compile", "train", "attack", "speed_lax"]
    for name, step in report["steps"].items():
        assert step["skipped"] is None, (name, step["skipped"])
        assert step["exit_code"] == 0, (name, step["tail"])
        assert step["wall_s"] > 0 and isinstance(step["tail"], list)
    assert proc.returncode == 0, proc.stderr[-3000:]
    variants = {}
    for name in ("speed_gpu.json", "speed_gpu_compile.json", "speed_gpu_lax_conv.json"):
        speed = json.loads((out / name).read_text())
        assert speed["rows"] and "partial" not in speed
        variants[name] = speed["config"]["torch_variants"]
    assert variants == {"speed_gpu.json": ["eager", "func", "jacrev"], "speed_gpu_compile.json": ["func_compile"],
                        "speed_gpu_lax_conv.json": ["eager"]}
    assert json.loads((out / "speed_gpu_lax_conv.json").read_text())["config"]["conv"] == "lax"
    # One table of every row against the fastest PyTorch form of both speed steps.
    best = report["speed_best"]
    assert set(best) == {"train_plain", "input_jacobian"}
    assert all(e["best"] in ("eager", "func", "jacrev", "func_compile") and e["ratio"] > 0 for e in best.values())
    assert (out / "train_summary.json").is_file() and (out / "attack_results.json").is_file()
    assert (out / "gpu_run.log").stat().st_size > 0
    # Every file comes back through a device run's $OUT: at most 8, none deeper.
    assert len(list(out.iterdir())) <= 8 and all(p.is_file() for p in out.iterdir())


@pytest.mark.bench  # a benchmark script end to end: make test-bench (.ci/run runs it)
def test_reproduce_step_continues_from_the_committed_records(tmp_path, carry):
    """``--steps reproduce`` copies results/ into OUT and runs reproduce.py there (here: analysis only)."""
    out, work = tmp_path / "out", tmp_path / "work"
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", JAX_PLATFORMS="cpu")
    proc = _gpu_run("run", "--carry", str(carry), "--out", str(out), "--workdir", str(work), "--quick",
                    "--steps", "reproduce", "--reproduce-arg=--max_models=0", env=env, timeout=300)
    report = json.loads((out / "gpu_run.json").read_text())
    assert list(report["steps"]) == ["reproduce"], report["steps"]
    step = report["steps"]["reproduce"]
    assert step["exit_code"] == 0 and proc.returncode == 0, step["tail"]
    assert "--max_models=0" in step["cmd"] and f"--out={out / 'results'}" in step["cmd"]
    assert "0 new models" in "\n".join(step["tail"])
    committed = os.path.join(REPO, "results")
    if os.path.isdir(committed):  # the committed records travel with the run
        assert sorted(os.listdir(out / "results")) == sorted(os.listdir(committed))


def test_speed_best_merges_both_speed_files(tmp_path):
    """gpu_run.json's speed_best: the fastest PyTorch form over both speed steps; errors listed apart."""
    from benchmarks import gpu_run

    rows = {"speed_gpu.json": {"a": {"jacuap_s": 1.0, "references": {"eager": 4.0, "func": 2.0}},
                               "b": {"jacuap_s": 3.0, "references": {"eager": 1.5}}},
            "speed_gpu_compile.json": {"a": {"jacuap_s": 1.1, "references": {
                "compile": "RuntimeError: does not currently support double backward", "func_compile": 0.5}}}}
    for name, r in rows.items():
        (tmp_path / name).write_text(json.dumps({"rows": r, "partial": True}))
    best = gpu_run.speed_best(str(tmp_path))
    assert best["a"]["best"] == "func_compile" and best["a"]["best_s"] == 0.5 and best["a"]["ratio"] == 2.0
    assert best["a"]["failed"] == {"compile": "RuntimeError: does not currently support double backward"}
    assert best["b"]["best"] == "eager" and best["b"]["ratio"] == 2.0
    (tmp_path / "speed_gpu_compile.json").unlink()
    assert gpu_run.speed_best(str(tmp_path))["a"]["best"] == "func"
