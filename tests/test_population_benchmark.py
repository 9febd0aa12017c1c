"""benchmarks/population.py runs end to end on toy sizes and writes every row.

Timings themselves are never compared (the machine is shared and noisy); what
is checked is the output's shape: a row per architecture, kind and P, each
time a finite positive number of seconds, the ratio and rates consistent
with them, and the JSON file equal to what ``main`` returns.
"""

import json
import math

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.bench]  # make test-bench (.ci/run runs it)


def test_population_quick_writes_every_row(tmp_path):
    from benchmarks import population

    out = tmp_path / "population.json"
    result = population.main(["--quick", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(result))
    assert saved["dataset"] == "digits" and saved["batch"] == 32
    assert saved["machine"]["backend"] and len(saved["machine"]["loadavg_start"]) == 3
    rows = saved["rows"]
    assert {(r["arch"], r["kind"], r["P"]) for r in rows} == {
        (a, k, p) for a in ("mlp", "cnn") for k in population.KINDS for p in (1, 2)}
    for r in rows:
        for key in ("population_s", "separate_s", "ratio", "population_model_steps_per_s",
                    "separate_model_steps_per_s"):
            assert isinstance(r[key], float) and math.isfinite(r[key]) and r[key] > 0, (key, r)
        assert r["ratio"] == pytest.approx(r["population_s"] / r["separate_s"])
        assert r["population_model_steps_per_s"] == pytest.approx(r["P"] * r["steps"] / r["population_s"])
        assert r["loadavg_before"] >= 0 and r["loadavg_after"] >= 0


def test_population_rejects_an_unknown_kind():
    from benchmarks import population

    with pytest.raises(SystemExit, match="--kinds: unknown kind 'jr'"):
        population.main(["--quick", "--kinds", "jr", "--out", ""])
