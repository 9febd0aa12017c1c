"""benchmarks/torch_bridge.py: the bridge's speed benchmark runs end to end on toy sizes.

Timings are never compared (the machine is shared and noisy); what is
checked is the output: every row and column in the JSON (and the Markdown
table beside it), every time a finite positive number of seconds, and each
mechanism's result equal to native PyTorch's (the checks made before timing).
"""

import json
import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROWS = ("sgd_uap_step", "input_jacobian", "deepfool_uap_pass")
COLUMNS = ("torch", "convert", "callback", "flax")


def _finite_positive(value):
    return isinstance(value, float) and math.isfinite(value) and value > 0


@pytest.mark.bench  # a benchmark script end to end: make test-bench (.ci/run runs it)
def test_torch_bridge_quick_writes_every_row_and_checks(tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "torch_bridge.json"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "torch_bridge.py"), "--quick",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    saved = json.loads(out.read_text())
    assert saved["config"]["quick"] is True
    assert saved["machine"]["torch_threads"] == os.cpu_count()
    assert len(saved["machine"]["loadavg_at_start"]) == 3 and len(saved["machine"]["loadavg_at_end"]) == 3
    assert set(saved["rows"]) == set(ROWS)
    for row in ROWS:
        cols = saved["rows"][row]["columns"]
        assert set(cols) == set(COLUMNS), row
        for name in COLUMNS:
            col = cols[name]
            assert not col.get("na"), (row, name, col.get("na"))  # the bridge does every row of this network
            assert col["reps"] == saved["rows"][row]["reps"] >= 1
            assert all(_finite_positive(t) for t in col["all_s"]), (row, name, col["all_s"])
            assert _finite_positive(col["median_s"]) and _finite_positive(col["min_s"]), (row, name)
            assert col["min_s"] <= col["median_s"]
            if name != "torch":
                assert _finite_positive(col["ratio_median"]), (row, name)
        for mech in ("convert", "callback"):  # same function as torch: the results agree
            check = cols[mech]["check"]
            if row == "sgd_uap_step":
                assert check["grad_rel_max_abs_diff"] < 1e-3, check
                assert check["v_sign_flips"] <= 0.01 * check["v_size"], check
                # as close to the float64 truth as native float32 PyTorch is
                assert check["grad_rel_fro_err_vs_float64"] < 10 * check["torch_grad_rel_fro_err_vs_float64"] + 1e-5
            elif row == "input_jacobian":
                assert check["rel_max_abs_diff"] < 1e-3, check
                assert check["rel_fro_err_vs_float64"] < 10 * check["torch_rel_fro_err_vs_float64"] + 1e-5
            else:
                assert check["v_max_abs_diff"] < 1e-4 and check["fooling_rate_diff"] == 0, check
                assert check["deepfool_iterations"] == check["torch_deepfool_iterations"], check
        assert cols["flax"]["check"] is None  # another network: nothing to compare
    assert saved["goal"]["ratio"] == 1.5 and saved["goal"]["summary"]
    table = (tmp_path / "torch_bridge.md").read_text()
    for row in ROWS:
        assert f"| {row} |" in table
