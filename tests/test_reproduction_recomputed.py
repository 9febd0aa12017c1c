"""The committed claims' estimates, recomputed from the committed records without the report's code.

What a reviewer would do with ``results/``: read the records as JSON, decode
their per-input bits with numpy, and redo each estimate by its stated
definition (RESULTS.md's verdict rules), then compare with
``results/fashion_mnist.json``.  Only the estimates are redone here; the
bootstrap intervals are ``stats``' (tested against references in
``test_reproduction_stats.py``).
"""

import base64
import glob
import json
import os
from collections import defaultdict

import numpy as np
import pytest
from scipy import stats as scipy_stats

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "results")
REF_EPS = 0.1


def _bits(text, n):
    raw = np.frombuffer(base64.b64decode(text), np.uint8)
    return np.unpackbits(raw)[:n].astype(bool)


def _load(arch):
    recs = [json.load(open(p)) for p in sorted(glob.glob(os.path.join(RESULTS, "fashion_mnist", "models", arch,
                                                                    "*.json")))]
    groups = defaultdict(list)
    for r in recs:
        groups[(r["method"], float(r["strength"]))].append(r)
    return recs, groups


def _at(record, part, eps):
    return next(w for w in record["test"][part] if abs(w["eps"] - eps) < 1e-9)


def _pooled(group, part, key, eps):
    """The rate pooled over a group's seeds (every seed is scored on the same n inputs)."""
    n = group[0]["test"]["num_eval"]
    return float(np.mean([_bits(_at(r, part, eps)[key], n) for r in group]))


def _accuracy(group):
    n = group[0]["test"]["num_eval"]
    return float(np.mean([_bits(r["test"]["clean_correct"], n) for r in group]))


def _max_uer_ratio(base, model):
    eps = sorted({w["eps"] for w in base[0]["test"]["worst_case"]})
    return max(_pooled(base, "worst_case", "wrong", e) / _pooled(model, "worst_case", "wrong", e) for e in eps)


ARCHS = [a for a in ("mlp", "cnn") if glob.glob(os.path.join(RESULTS, "fashion_mnist", "models", a, "*.json"))]


@pytest.fixture(scope="module")
def analysis():
    path = os.path.join(RESULTS, "fashion_mnist.json")
    if not os.path.exists(path):
        pytest.skip("no committed analysis")
    return json.load(open(path))


@pytest.mark.parametrize("arch", ARCHS)
def test_every_records_bits_give_its_rates(arch):
    recs, _ = _load(arch)
    for r in recs:
        n = r["test"]["num_eval"]
        for w in r["test"]["worst_case"]:
            assert _bits(w["wrong"], n).mean() == pytest.approx(w["uer"], abs=1e-12), r["id"]
            assert _bits(w["changed"], n).mean() == pytest.approx(w["fooling_rate"], abs=1e-12), r["id"]
        assert _bits(r["test"]["clean_correct"], n).mean() == pytest.approx(r["train"]["test_accuracy"], abs=1e-4)


@pytest.mark.parametrize("arch", ARCHS)
def test_robustness_accuracy_correlation_and_bound_estimates(arch, analysis):
    recs, groups = _load(arch)
    claims = {c["id"]: c for c in analysis["claims"] if c["arch"] == arch}
    assert analysis["archs"][arch]["reference_eps"]["worst_case"] == REF_EPS  # the budget the claims read
    lam = json.load(open(os.path.join(RESULTS, "fashion_mnist", "selection.json")))["archs"][arch]["jr"]["chosen"]
    base, jr = groups[("jr", 0.0)], groups[("jr", float(lam))]
    # Robustness: base's pooled worst-case UER over lambda*'s, the largest over the budgets.
    assert claims["robustness"]["estimate"] == pytest.approx(_max_uer_ratio(base, jr), rel=1e-12)
    # Accuracy: the clean accuracy lambda* costs, in points.
    assert claims["accuracy"]["estimate"] == pytest.approx(100 * (_accuracy(base) - _accuracy(jr)), abs=1e-9)
    # Correlation: Spearman of s_ij against the worst-case UER at eps 0.1, one point per model.
    s = [r["test"]["metrics"]["shared_perturbation_strength"] for r in recs]
    uer = [_at(r, "worst_case", REF_EPS)["uer"] for r in recs]
    assert claims["correlation"]["estimate"] == pytest.approx(scipy_stats.spearmanr(s, uer).statistic, abs=1e-12)
    # The bound: per (model, eps) first order <= bound, and the median tightness over models at eps 0.1.
    tight = []
    for r in recs:
        budgets = r["test"]["bound"]["budgets"]
        for b in budgets:
            assert b["first_order"] <= b["bound"] * (1 + 1e-4), (r["id"], b["eps"])
            assert b["tightness"]["estimate"] == pytest.approx(b["first_order"] / b["bound"], rel=1e-6)
        tight += [b["tightness"]["estimate"] for b in budgets if abs(b["eps"] - REF_EPS) < 1e-9]
    assert claims["bound"]["estimate"] == pytest.approx(float(np.median(tight)), rel=1e-12)


@pytest.mark.parametrize("arch", ARCHS)
def test_defence_headlines(arch, analysis):
    _, groups = _load(arch)
    entries = [d for d in analysis["defences"] if d["arch"] == arch and d["method"] != "jr" and d["headline"]]
    for d in entries:
        model = groups[(d["method"], float(d["strength"]))]
        assert d["headline"]["estimate"] == pytest.approx(_max_uer_ratio(groups[("jr", 0.0)], model), rel=1e-12)
        cost = 100 * (_accuracy(groups[("jr", 0.0)]) - _accuracy(model))
        assert d["accuracy_cost"]["estimate"] == pytest.approx(cost, abs=1e-9)
