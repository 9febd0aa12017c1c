"""benchmarks/speed_ab.py: both sides of each row run, alternating, and a rerun reuses them (no timing asserted)."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.bench  # a benchmark script end to end: make test-bench (.ci/run runs it)
@pytest.mark.slow
def test_speed_ab_interleaves_and_resumes(tmp_path):
    cmd = [sys.executable, "benchmarks/speed_ab.py", "--before", ROOT, "--work", str(tmp_path / "w"),
           "--rows", "train_plain,input_jacobian", "--out", str(tmp_path / "ab.json"),
           "--speed-arg=--quick", "--speed-arg=--reps=1", "--speed-arg=--no-memory"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.load(open(tmp_path / "ab.json"))
    assert [e["order"] for e in result["rows"].values()] == [["before", "after"], ["after", "before"]]
    for e in result["rows"].values():
        assert e["before_s"] > 0 and e["after_s"] > 0 and e["after_over_before"] == e["after_s"] / e["before_s"]
    times = (tmp_path / "w" / "times.txt").read_text().splitlines()
    assert len(times) == 4
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and (tmp_path / "w" / "times.txt").read_text().splitlines() == times
    bad = subprocess.run([sys.executable, "benchmarks/speed_ab.py", "--before", str(tmp_path), "--work", "w"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "holds no benchmarks/speed.py" in bad.stderr


@pytest.mark.bench  # a benchmark script end to end: make test-bench (.ci/run runs it)
@pytest.mark.slow
def test_same_program_of_one_tree_is_the_same(tmp_path):
    proc = subprocess.run([sys.executable, "benchmarks/same_program.py", ROOT, ROOT], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0 and proc.stdout.startswith("same: "), proc.stdout + proc.stderr
    bad = subprocess.run([sys.executable, "benchmarks/same_program.py", ROOT, str(tmp_path)], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "usage" in bad.stderr


def test_default_rows_are_those_both_trees_know(tmp_path):
    """A tree from before the CIFAR rows knows only the CNN rows: the default compares those, a named new row is refused."""
    from benchmarks import speed_ab, speed_rows

    old = tmp_path / "old" / "benchmarks"
    old.mkdir(parents=True)
    (old / "speed.py").write_text("")
    (old / "speed_rows.py").write_text(f"ROWS = {speed_rows.CNN_ROWS!r}\n")
    assert speed_ab.rows_of(str(tmp_path / "old")) == speed_ab.default_rows(str(tmp_path / "old")) == list(speed_rows.CNN_ROWS)
    assert speed_ab.default_rows(ROOT) == list(speed_rows.ROWS)
    proc = subprocess.run([sys.executable, "benchmarks/speed_ab.py", "--before", str(tmp_path / "old"), "--work",
                           str(tmp_path / "w"), "--rows", "cifar_train_plain"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "has no row cifar_train_plain; it knows train_plain," in proc.stderr
    assert not (tmp_path / "w").exists()  # refused before anything is written
