"""benchmarks/reproduce.py: its analysis helpers, and a tiny end-to-end run."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import reproduce  # noqa: E402


@pytest.mark.parametrize("uer,expected", [
    ([0.1, 0.3, 0.7], 0.25),          # interpolated between eps 0.2 and 0.3
    ([0.6, 0.8, 0.9], 0.1),           # already above at the first eps
    ([0.1, 0.2, 0.4], None),          # never reaches 50%
    ([0.1, 0.5, 0.9], 0.2),           # exactly at a grid point
])
def test_eps_at_half(uer, expected):
    value = reproduce.eps_at_half([0.1, 0.2, 0.3], uer)
    assert value == (pytest.approx(expected) if expected is not None else None)


@pytest.mark.slow
def test_reproduce_quick_on_digits(tmp_path):
    proc = subprocess.run(
        [sys.executable, "benchmarks/reproduce.py", "--quick", "--datasets=digits", "--lambdas=0,1",
         "--baselines=false", "--epochs=3", f"--out={tmp_path / 'out'}", f"--workroot={tmp_path / 'runs'}",
         "--progress=false"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = tmp_path / "out" / "quick"
    record = json.load(open(out / "digits.json"))
    assert set(record["models"]) == {"jr_0", "jr_1"}
    factors = record["analysis"]["factors"]["jr_1"]["sgd_uap"]["uer_ratio"]
    assert len(factors) == len(record["settings"]["eps"])
    for name in ("digits.md", "digits_uer_vs_eps.png", "digits_accuracy_vs_lambda.png",
                 "digits_metrics_vs_uer.png"):
        assert (out / name).stat().st_size > 100
    # A second run reuses everything: no training, no attack.
    again = subprocess.run(proc.args, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "trained already" in again.stdout and "training" not in again.stdout.replace(
        "trained already", "")
