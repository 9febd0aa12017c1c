"""benchmarks/lobpcg.py at a tiny size: it runs, and its rows are consistent."""

import json

import pytest

from benchmarks import lobpcg


@pytest.mark.bench  # a benchmark script end to end: make test-bench (.ci/run runs it)
@pytest.mark.slow  # ~1 min: it compiles a ResNet's LOBPCG program
def test_lobpcg_benchmark_tiny(tmp_path):
    out = tmp_path / "lobpcg.json"
    assert lobpcg.main(["--size", "16", "--num-inputs", "6", "--batch", "4", "--power-iters", "3,60",
                        "--lobpcg-rtol", "1e-3", "--out", str(out)]) == 0
    record = json.load(open(out))
    rows = {(r["method"], r["setting"]): r for r in record["rows"]}
    assert set(rows) == {("power", 3), ("power", 60), ("lobpcg", 1e-3)}
    assert record["config"]["d"] == 16 * 16 * 3
    # LOBPCG reaches its stated residual, and more power iterations lower theirs.
    assert rows[("lobpcg", 1e-3)]["relative_residual"] < 2e-3
    assert rows[("power", 60)]["relative_residual"] < rows[("power", 3)]["relative_residual"]
    assert rows[("lobpcg", 1e-3)]["sigma_relative_error_vs_best"] < 1e-3
