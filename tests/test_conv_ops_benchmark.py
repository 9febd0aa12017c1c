"""benchmarks/conv_ops.py: the evidence behind SPEED.md runs end to end and writes every row.

Timings themselves are never compared (the machine is shared and noisy);
what is checked is the shape of the output: every section, every row, every
value a finite positive number of seconds (or milliseconds), and the JSON
file equal to what ``main`` returns.
"""

import json
import math

import pytest

pytestmark = pytest.mark.slow

CONV_FORMS = ("lax", "jacuap.conv")  # the row labels SPEED.md quotes


def _finite_positive(values):
    return all(isinstance(v, float) and math.isfinite(v) and v > 0 for v in values)


@pytest.mark.bench  # a benchmark script end to end: make test-bench (.ci/run runs it)
def test_conv_ops_quick_writes_every_row(tmp_path):
    from benchmarks import conv_ops

    out = tmp_path / "conv_ops.json"
    result = conv_ops.main(["--quick", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["dataset"] == "digits"
    assert saved["machine"]["backend"] and saved["machine"]["cpu_count"] >= 1
    assert "per_op" not in saved  # --quick skips the torch comparison
    expected = {
        "loop_forms": {f"{c}, {form}" for c in CONV_FORMS for form in ("lax.scan", "Python loop")},
        "forward_mode_price": {f"{c}, spectral_norm power x20 (jit)" for c in CONV_FORMS},
        "exact_penalty_forms": {"K VJPs, Python loop (jacuap)", "vmap over the K cotangents",
                                "one VJP of a K-times tiled batch"},
    }
    for section, rows in expected.items():
        assert set(saved[section]) == rows, section
        assert _finite_positive(saved[section].values()), saved[section]
        assert saved[section] == pytest.approx(result[section])


def test_conv_ops_per_op_rows_compare_xla_and_torch():
    pytest.importorskip("torch")
    from benchmarks import conv_ops

    rows = conv_ops.per_op(reps=1)
    ops = [r["op"] for r in rows]
    for layer in ("conv0 (1->32, 28x28)", "conv1 (32->64, 14x14)"):
        for op in ("forward", "input-gradient", "weight-gradient", "input-gradient with lax conv"):
            assert f"{layer} {op}" in ops
    assert len(rows) == 8
    for r in rows:
        assert _finite_positive([r["xla_ms"], r["torch_ms"], r["xla_gflops"], r["torch_gflops"], r["ratio"]]), r
        assert r["ratio"] == pytest.approx(r["xla_ms"] / r["torch_ms"])
