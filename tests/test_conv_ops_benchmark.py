"""benchmarks/conv_ops.py runs end to end (its numbers are evidence for SPEED.md, never asserted)."""

import json

import pytest


def test_conv_ops_benchmark_quick_runs(tmp_path):
    """The evidence script behind SPEED.md runs and writes every section (no timing asserted)."""
    from benchmarks import conv_ops

    out = tmp_path / "conv_ops.json"
    result = conv_ops.main(["--quick", "--out", str(out)])
    saved = json.loads(out.read_text())
    for section in ("loop_forms", "forward_mode_price", "exact_penalty_forms"):
        assert saved[section] == pytest.approx(result[section])
        assert all(seconds > 0 for seconds in saved[section].values())
    assert set(saved["loop_forms"]) == {f"{c}, {form}" for c in ("lax", "jacuap.conv")
                                        for form in ("lax.scan", "Python loop")}
