"""benchmarks/plain_step_flags.py end to end on tiny sizes: every configuration reports a time or XLA's refusal."""

import json

import pytest

pytestmark = pytest.mark.bench


def test_every_configuration_reports_a_time_or_an_error(tmp_path):
    from benchmarks import plain_step_flags

    out = tmp_path / "flags.json"
    result = plain_step_flags.main(["--dataset=digits", "--model=mlp", "--steps=3", "--rounds=1", f"--out={out}"])
    assert json.loads(out.read_text()) == result
    assert len(result["rows"]) == len(plain_step_flags.CONFIGS)
    for row in result["rows"]:
        assert ("median_s" in row and row["median_s"] > 0) or row["error"]
    assert "median_s" in result["rows"][0]  # jacuap's defaults always run
