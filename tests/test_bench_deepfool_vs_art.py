"""Smoke test of benchmarks/deepfool_vs_art.py (tiny digits run; needs the bench extra)."""

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("art")


@pytest.mark.bench  # a benchmark script end to end: make test-bench (.ci/run runs it)
@pytest.mark.slow
def test_deepfool_vs_art_quick(tmp_path):
    from benchmarks import deepfool_vs_art

    out = tmp_path / "out.json"
    result = deepfool_vs_art.main(["--quick", "--workdir", str(tmp_path / "run"), "--n-craft", "8",
                                   "--n-eval", "16", "--variants", "default,seq_b1", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert not saved["partial"] and set(saved["rows"]) == {"default", "ART", "seq_b1"}
    assert result["models_agree"]["clean_prediction_agreement"] == 1.0
    for row in saved["rows"].values():
        assert 0.0 <= row["uer"] <= 1.0 and row["linf"] <= 0.2 + 1e-6
