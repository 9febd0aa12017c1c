"""benchmarks/reproduction/report.py: claims, tables, JSON, markdown and plots from synthetic records."""

import json
import re

import numpy as np
import pytest

from benchmarks.reproduction import records, render, report

K, N = 4, 200
REPS = 100
WC_EPS = (0.05, 0.1)
SGD_EPS = (0.05, 0.1, 0.2, 0.3)
# (method, strength, seeds, wrong rate at eps 0.1, clean accuracy, shared perturbation strength)
MODELS = [
    ("jr", 0.0, (0, 1), 0.40, 0.90, 0.50),
    ("jr", 0.1, (0, 1), 0.12, 0.895, 0.20),
    ("jr", 1.0, (0,), 0.05, 0.80, 0.10),
    ("uat", 0.1, (0,), 0.20, 0.85, 0.30),
]


def bits(rng, rate):
    values = np.zeros(N, bool)
    values[rng.permutation(N)[: int(round(min(rate, 1.0) * N))]] = True
    return records.pack_bits(values)


def make_bound(s, rate):
    """A ``test.bound`` in bound.uap_bound's layout: tightness s (0.5 + eps); first order exact below eps 0.1,
    1.5x too small from there (it "breaks" at 0.1); the bound allows every input to be fooled."""
    iv = lambda x: {"estimate": x, "low": 0.9 * x, "high": 1.1 * x, "level": 0.95, "reps": REPS, "skipped": 0}
    budgets = []
    for e in WC_EPS:
        b = 1000.0 * e * e
        fo = b * s * (0.5 + e)
        ob = fo * (1.0 if e < 0.1 else 1.5)
        budgets.append({"eps": e, "bound": b, "first_order": fo, "observed": ob, "unclipped": ob, "holds": True,
                        "tightness": iv(fo / b), "observed_over_first_order": iv(ob / fo),
                        "unclipped_over_first_order": iv(ob / fo), "in_band": e < 0.1,
                        "implied_fooling_rate": 1.0, "fooling_rate": min(rate * e / 0.1, 1.0) * 0.9})
    return {"norm": "linf", "num_inputs": 100, "input_dim": 64, "sigma_max": 10.0, "band": [0.8, 1.25],
            "rtol": 1e-4, "holds": True, "first_order_breaks_at_eps": 0.1, "budgets": budgets}


def make_record(method, strength, seed, rate, acc, s, arch="cnn"):
    """A record of schema jacuap.reproduction.model/1; the wrong rate grows linearly with eps."""
    rng = np.random.default_rng([int(1000 * strength), seed, len(method)])
    at = lambda e: min(rate * e / 0.1, 1.0)
    pair_s = [[s * (1 + i + 2 * j) / 5 for j in range(K)] for i in range(K)]
    pair_s[0][2] = None  # a class pair absent from the metric's sample
    success = [[None if i == j else min(1.0, 0.8 * pair_s[i][j] + 0.05) if pair_s[i][j] is not None else 0.1
                for j in range(K)] for i in range(K)]
    metrics = {m: s * (1 + 0.1 * k) for k, m in enumerate(report.METRICS)}
    metrics["universality_ratio"] = None  # undefined metrics are None in records
    metrics["shared_perturbation_strength_by_class"] = pair_s
    return {
        "schema": records.SCHEMA, "id": records.model_id("fmnist", arch, method, strength, seed),
        "dataset": "fmnist", "arch": arch, "method": method, "strength": strength, "seed": seed,
        "config": {"num_epochs": 3}, "params_sha256": "0" * 64,
        "seconds": {"train": 360.0, "evaluate": 1440.0}, "machine": {"backend": "cpu", "devices": 1},
        "train": {"test_accuracy": acc, "validation_accuracy": acc, "num_epochs": 3, "steps": 10, "seconds": 1.0},
        "test": {
            "num_eval": N, "clean_correct": bits(rng, acc),
            "worst_case": [{"eps": e, "attack": "sgd_uap", "seed": 0, "uer": at(e), "fooling_rate": at(e) * 0.9,
                            "craft_uer": at(e), "wrong": bits(rng, at(e)), "changed": bits(rng, at(e) * 0.9)}
                           for e in WC_EPS],
            "sgd_uap": [{"eps": e, "uer": at(e), "fooling_rate": at(e), "wrong": bits(rng, at(e)),
                         "changed": bits(rng, at(e))} for e in SGD_EPS],
            "targeted": [{"eps": 0.1, "success": success, "source_counts": [N // K] * K}],
            "metrics": metrics,
            "bound": make_bound(s, rate),
        },
    }


def make_records(models=MODELS, arch="cnn"):
    return [make_record(m, st, seed, rate, acc, s, arch) for m, st, seeds, rate, acc, s in models for seed in seeds]


SELECTION = {"archs": {"cnn": {
    "jr": {"chosen": 0.1, "rule": "largest lambda within 1 point of lambda 0's validation accuracy",
           "candidates": [{"strength": st, "validation_accuracy": acc, "validation_uer": rate}
                          for m, st, _, rate, acc, _ in MODELS if m == "jr"]},
    "uat": {"chosen": 0.1, "rule": "only strength", "candidates": []}}}}


def claims_by_id(analysis):
    return {c["id"]: c for c in analysis["claims"]}


def test_analyse_and_write_report(tmp_path):
    recs = make_records()
    analysis = report.analyse(recs, SELECTION, reps=REPS)
    claims = claims_by_id(analysis)
    assert [c["id"] for c in analysis["claims"]] == ["robustness", "accuracy", "correlation", "bound", "class_pairs"]
    for c in analysis["claims"]:
        assert {"claim", "arch", "estimate", "ci95", "verdict", "detail"} <= set(c)
        assert c["verdict"] in {"holds", "holds partly", "does not hold"}
        assert c["ci95"][0] <= c["estimate"] <= c["ci95"][1]
    # Robustness: the largest UER ratio over the worst-case eps, paired (same seeds).
    rob = claims["robustness"]
    assert rob["estimate"] == pytest.approx(0.4 / 0.12, rel=0.02) and rob["detail"]["paired"]
    assert [x["eps"] for x in rob["detail"]["uer_ratio"]] == list(WC_EPS) and rob["detail"]["eps50_ratio"]["estimate"] > 1
    # Every lambda of the grid against the base ("up to 4x": where): lambda* is the headline's comparison.
    per = rob["detail"]["lambdas"]
    assert [x["strength"] for x in per] == [0.1, 1.0] and per[0]["uer_ratio"] == rob["detail"]["uer_ratio"]
    assert per[1]["uer_ratio"][1]["estimate"] == pytest.approx(0.4 / 0.05, rel=0.05) and not per[1]["paired"]
    # Where: every (lambda, ratio, eps) whose interval reaches 4x (200 inputs: lambda 0.1's 3.3x too).
    assert rob["where"].startswith("4x within the interval: ") and "UER ratio at lambda 1, eps 0.1: 8 [" in rob["where"]
    tight = [{"strength": 0.5, "uer_ratio": [{"eps": 0.1, "estimate": 2.0, "low": 1.5, "high": 2.5}],
              "fooling_rate_ratio": [{"eps": 0.1, "estimate": 3.5, "low": 3.0, "high": 4.2}], "eps50_ratio": None}]
    assert report._where_robustness(tight) == "4x within the interval: fooling rate ratio (worst case by UER) at lambda 0.5, eps 0.1: 3.5 [3, 4.2]"
    assert report._where_robustness(tight, {0.5: {"estimate": 3.5, "low": 3.1, "high": 3.9}}) == (
        "4x within the interval: fooling rate ratio (worst case by UER) at lambda 0.5, eps 0.1: 3.5 [3, 4.2] (accuracy cost 3.5 [3.1, 3.9] "
        "points)")
    assert "UER ratio at lambda 1, eps 0.1: 8 [" in rob["where"] and "(accuracy cost " in rob["where"]
    tight[0]["fooling_rate_ratio"][0]["high"] = 3.9
    assert report._where_robustness(tight) == "4x excluded at every lambda, eps and ratio"
    assert "cost > 1 point at lambda 1" in claims["accuracy"]["where"]
    # Accuracy: every lambda, the chosen one headlined, the 1-seed one unpaired.
    acc = claims["accuracy"]
    assert [x["strength"] for x in acc["detail"]["lambdas"]] == [0.1, 1.0]
    assert acc["estimate"] == pytest.approx(0.5, abs=0.01)
    assert acc["detail"]["lambdas"][1]["estimate"] == pytest.approx(10.0) and not acc["detail"]["lambdas"][1]["paired"]
    assert acc["detail"]["lambdas"][1]["verdict"] == "does not hold"
    # Correlation: s_ij is monotone in the UER over the 6 records; universality_ratio is None everywhere.
    corr = claims["correlation"]
    assert corr["detail"]["n_records"] == 6 and corr["estimate"] == pytest.approx(1.0)
    assert corr["detail"]["metrics"]["universality_ratio"] is None
    # JR's own models (5 < 6) get their correlations but no "where" verdict.
    assert corr["detail"]["jr_only"]["n_records"] == 5 and corr["where"] == ""
    assert corr["detail"]["jr_only"]["metrics"]["shared_perturbation_strength"]["spearman"]["estimate"] == pytest.approx(1.0)
    # The same on per-lambda means: the seeds of one lambda are one point.
    assert corr["detail"]["jr_per_lambda"]["n_points"] == 3
    assert corr["detail"]["jr_per_lambda"]["metrics"]["shared_perturbation_strength"]["spearman"]["estimate"] == pytest.approx(1.0)
    assert "lambda*'s class pairs: Spearman" in claims["class_pairs"]["where"]
    # Class pairs: 11 known ordered pairs per record (12, one None), two base seeds pooled for the plot; the
    # interval resamples the 5 complete unordered pairs (both directions known) and the 2 seeds.
    assert len(analysis["archs"]["cnn"]["class_pair_points"]["base"]["x"]) == 22
    pool = claims["class_pairs"]["detail"]["pools"]["jr"]
    assert (pool["n"], pool["clusters"], pool["seeds"]) == (20, 5, 2)
    assert claims["class_pairs"]["sample"] == "base: 5 unordered pairs x 2 seeds; lambda*: 5 unordered pairs x 2 seeds"
    assert claims["robustness"]["sample"] == "2 vs 2 seeds" and claims["correlation"]["sample"] == "6 models, one point each"
    assert [d["method"] for d in analysis["defences"]] == ["uat"] and not analysis["defences"][0]["paired"]
    table = analysis["archs"]["cnn"]["table"]
    assert [(r["method"], r["strength"], r["chosen"]) for r in table] == [
        ("jr", 0.0, False), ("jr", 0.1, True), ("jr", 1.0, False), ("uat", 0.1, True)]
    assert table[0]["clean_accuracy"]["mean"] == pytest.approx(0.9) and table[0]["clean_accuracy"]["std"] == 0
    assert table[2]["clean_accuracy"]["std"] is None

    paths = render.write_report(analysis, recs, str(tmp_path), "fmnist")
    for name in ("fmnist.md", "fmnist.json", "fmnist_cnn_frontier.png", "fmnist_cnn_uer_vs_eps.png",
                 "fmnist_cnn_metrics_vs_uer.png", "fmnist_cnn_class_pairs.png", "fmnist_cnn_bound_vs_observed.png"):
        assert str(tmp_path / name) in paths and (tmp_path / name).stat().st_size > 0
    def no_constants(name):
        raise AssertionError(f"{name} in the JSON")
    loaded = json.loads((tmp_path / "fmnist.json").read_text(), parse_constant=no_constants)
    assert [c["verdict"] for c in loaded["claims"]] == [c["verdict"] for c in analysis["claims"]]
    text = (tmp_path / "fmnist.md").read_text()
    assert CLAIM_TEXT in text and "| uat | 0.1 |" in text
    assert "- rule (1): " in text and text.count("- rule (1): ") == 1  # each selection rule stated once
    assert "max UER ratio [95%] (at eps)" in text and re.search(r"\| jr \| [^|]+ \| [^|]+ \| [^|]+\] \(eps [0-9.]+\) \|", text)
    assert "### JR per lambda" in text and "\n| 1 | 1 | " in text  # lambda 1, one seed
    assert not list(tmp_path.glob("*.tmp"))
    # 6 records of 0.5 h each, and the schedule search's runs but the one the base record is.
    analysis["schedule"] = {"cnn": {"epochs": 3, "runs": {"3": {"train_seconds": 360.0}, "6": {"train_seconds": 720.0}}}}
    render.write_report(analysis, recs, str(tmp_path), "fmnist")
    text = (tmp_path / "fmnist.md").read_text()
    assert ("- **cnn** machine time: 3.2 h (training 0.6 h, evaluation 2.4 h, schedule search 0.2 h; on cpu x1)"
            in text)
    for name in report.PLOTS:
        assert f"![fmnist cnn {name}](fmnist_cnn_{name}.png)" in text

    # RESULTS.md's copy: no title, no claims section (it has its own block), headings one level down.
    block = render.results_block("fmnist", text)
    assert block.startswith("### Setup\n") and "## Claims" not in block and CLAIM_TEXT not in block
    assert "\n### cnn\n" in block and "\n#### Models" in block and "| uat | 0.1 |" in block
    assert "![fmnist cnn frontier](results/fmnist_cnn_frontier.png)" in block


def test_the_bound_row(tmp_path):
    recs = make_records()
    claim = claims_by_id(report.analyse(recs, SELECTION, reps=REPS))["bound"]
    # The median over the 6 models of tightness s (0.5 + 0.1) at eps 0.1: s = 0.5, 0.5, 0.2, 0.2, 0.1, 0.3.
    assert claim["estimate"] == pytest.approx(0.6 * 0.25) and claim["verdict"] == "holds"
    assert claim["ci95"][0] <= claim["estimate"] <= claim["ci95"][1] and claim["detail"]["eps"] == 0.1
    assert claim["claim"] == "The UAP's effect is bounded by norms of data-dependent Jacobians"
    where = claim["where"]
    assert "bound held at 12/12 (model, eps)" in where and "implied FR >= measured FR at 12/12" in where
    assert "first order breaks from eps 0.1" in where and claim["detail"]["breaks_at_eps"] == 0.1
    assert "the real logit change within the bound at 12/12" in where
    # The bound is on the first-order effect: a real logit change above it makes the row partial.
    big = [{**r, "test": {**r["test"], "bound": {**r["test"]["bound"], "budgets": [
        {**b, "observed": 2 * b["bound"]} if k == 0 else b for k, b in enumerate(r["test"]["bound"]["budgets"])]}}}
        if i == 3 else r for i, r in enumerate(recs)]
    other = claims_by_id(report.analyse(big, SELECTION, reps=REPS))["bound"]
    assert other["verdict"] == "holds partly" and "the real logit change within the bound at 11/12" in other["where"]
    assert [p["id"] for p in other["detail"]["observed_exceeded"]] == [recs[3]["id"]]
    assert len(claim["detail"]["points"]) == 12 and "not measured" not in where
    # A point above its bound is a finding; a measured fooling rate above the implied one makes it partial.
    recs[0]["test"]["bound"]["budgets"][1].update(first_order=1e6, holds=False)
    recs[1]["test"]["bound"]["budgets"][0]["implied_fooling_rate"] = 0.0
    claim = claims_by_id(report.analyse(recs, SELECTION, reps=REPS))["bound"]
    assert claim["verdict"] == "does not hold" and [p["id"] for p in claim["detail"]["violations"]] == [recs[0]["id"]]
    assert "bound held at 11/12" in claim["where"] and "implied FR >= measured FR at 11/12" in claim["where"]
    recs[0]["test"]["bound"]["budgets"][1].update(first_order=1.0, holds=True)
    assert claims_by_id(report.analyse(recs, SELECTION, reps=REPS))["bound"]["verdict"] == "holds partly"
    # Records without test.bound (the model's workdir was elsewhere) are counted, never an error.
    del recs[2]["test"]["bound"]
    claim = claims_by_id(report.analyse(recs, SELECTION, reps=REPS))["bound"]
    assert "1 of 6 records not measured" in claim["where"] and claim["detail"]["not_measured"] == [recs[2]["id"]]
    for r in recs:
        r["test"].pop("bound", None)
    analysis = report.analyse(recs, SELECTION, reps=REPS)
    claim = claims_by_id(analysis)["bound"]
    assert claim["verdict"] == "not measured (6 records without test.bound)" and claim["estimate"] is None
    paths = render.write_report(analysis, recs, str(tmp_path), "fmnist")
    assert str(tmp_path / "fmnist_cnn_bound_vs_observed.png") in paths
    assert "none of the 6 records has test.bound" in (tmp_path / "fmnist.md").read_text()


CLAIM_TEXT = report.CLAIMS["robustness"]


def test_deterministic():
    recs = make_records()
    assert report.analyse(recs, SELECTION, reps=50, seed=1) == report.analyse(recs, SELECTION, reps=50, seed=1)


def test_missing_chosen_model_is_not_measured(tmp_path):
    recs = [r for r in make_records() if not (r["method"] == "jr" and r["strength"] == 0.1)]
    analysis = report.analyse(recs, SELECTION, reps=REPS)
    claims = claims_by_id(analysis)
    for kind in ("robustness", "accuracy"):
        assert claims[kind]["verdict"] == "not measured" and claims[kind]["estimate"] is None
        assert claims[kind]["ci95"] == [None, None]
    assert claims["accuracy"]["detail"]["lambdas"][0]["strength"] == 1.0  # the other lambdas are still reported
    # 4 models left: the correlation is reported but decides nothing (MIN_CORRELATION_MODELS).
    assert claims["correlation"]["verdict"] == "not measured (4 models < 6)"
    assert claims["correlation"]["estimate"] is not None
    assert len(render.write_report(analysis, recs, str(tmp_path), "fmnist")) == 2 + len(report.PLOTS)


def test_missing_base_and_unselected_method(tmp_path):
    recs = [r for r in make_records() if r["strength"] != 0.0] + [make_record("trades", 6.0, 0, 0.3, 0.8, 0.4)]
    analysis = report.analyse(recs, SELECTION, reps=REPS)
    claims = claims_by_id(analysis)
    assert {claims[k]["verdict"] for k in ("robustness", "accuracy", "class_pairs")} == {"not measured"}
    assert [(d["method"], d["base_missing"]) for d in analysis["defences"]] == [("uat", True), ("trades", True)]
    render.write_report(analysis, recs, str(tmp_path), "fmnist")


def test_one_seed_everywhere_and_two_archs(tmp_path):
    one = [(m, st, (0,), rate, acc, s) for m, st, _, rate, acc, s in MODELS]
    recs = make_records(one) + make_records(one, arch="mlp")
    selection = {"archs": {"cnn": SELECTION["archs"]["cnn"]}}  # mlp has no selection: uat is its only strength
    analysis = report.analyse(recs, selection, reps=REPS)
    assert sorted(analysis["archs"]) == ["cnn", "mlp"]
    by_arch = {(c["arch"], c["id"]): c for c in analysis["claims"]}
    rob = by_arch[("cnn", "robustness")]
    assert rob["detail"]["paired"] and rob["ci95"][0] < rob["estimate"] < rob["ci95"][1]
    assert by_arch[("mlp", "robustness")]["verdict"] == "not measured"  # no JR choice for mlp
    assert [d["arch"] for d in analysis["defences"]] == ["cnn", "mlp"]
    assert len(render.write_report(analysis, recs, str(tmp_path), "fmnist")) == 2 + 2 * len(report.PLOTS)


def test_bad_records():
    with pytest.raises(ValueError, match="dataset"):
        report.analyse(make_records() + [dict(make_records()[0], dataset="other")], SELECTION, reps=REPS)
    with pytest.raises(ValueError, match="records"):
        report.analyse({"a": 1}, SELECTION)


def test_replace_marked(tmp_path):
    path = tmp_path / "R.md"
    path.write_text("intro\n<!-- claims:x -->\nold\n<!-- /claims:x -->\nrest\n")
    assert render.replace_marked(str(path), "claims:x", "new\n")
    assert path.read_text() == "intro\n<!-- claims:x -->\nnew\n<!-- /claims:x -->\nrest\n"
    assert render.replace_marked(str(path), "claims:x", "new\n")  # idempotent
    assert not render.replace_marked(str(path), "claims:y", "z\n")
    assert not render.replace_marked(str(tmp_path / "absent.md"), "claims:x", "z\n")
    assert path.read_text().count("new") == 1


def test_results_md_claims_are_the_committed_outputs():
    """RESULTS.md's claims blocks are results/<dataset>.json's claims, its report blocks results/<dataset>.md."""
    import os
    import re

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    text = open(os.path.join(root, "RESULTS.md")).read()
    blocks = re.findall(r"<!-- claims:(\w+) -->\n(.*?)<!-- /claims:\1 -->", text, re.S)
    for dataset, block in blocks:
        analysis = json.load(open(os.path.join(root, "results", f"{dataset}.json")))
        models = os.path.join(root, "results", dataset, "models")
        count = sum(name.endswith(".json") for arch in os.listdir(models) for name in os.listdir(os.path.join(models, arch)))
        assert block == render.claims_block(dataset, analysis["claims"], count), \
            f"RESULTS.md's claims:{dataset} block differs from results/{dataset}.json: rerun benchmarks/reproduce.py"
    blocks = re.findall(r"<!-- report:(\w+) -->\n(.*?)<!-- /report:\1 -->", text, re.S)
    for dataset, block in blocks:
        with open(os.path.join(root, "results", f"{dataset}.md")) as f:
            assert block == render.results_block(dataset, f.read()), \
                f"RESULTS.md's report:{dataset} block differs from results/{dataset}.md: rerun benchmarks/reproduce.py"
    assert blocks, "RESULTS.md shows no report block"


def test_fooling_rate_ratio_uses_the_worst_case_chosen_by_fooling_rate():
    """Where every record of both sides has it, the FR ratio reads the FR-chosen worst case (here twice the
    UER-chosen one's fooling rate on JR's side), and says so; one older record anywhere: the UER-chosen one."""
    recs = make_records()
    rng = np.random.default_rng(9)
    for r in recs:
        r["test"]["worst_case_by_fooling_rate"] = [
            {**w, "attack": "sga_uap", "fooling_rate": min(1.0, 2 * w["fooling_rate"] if r["strength"] else w["fooling_rate"]),
             "changed": bits(rng, min(1.0, 2 * w["fooling_rate"] if r["strength"] else w["fooling_rate"]))}
            for w in r["test"]["worst_case"]]
    rob = claims_by_id(report.analyse(recs, SELECTION, reps=REPS))["robustness"]
    assert rob["detail"]["fooling_rate_worst_case_by"] == "fooling_rate"
    fr = rob["detail"]["fooling_rate_ratio"][1]  # eps 0.1: 0.36 on the base, 0.216 on lambda 0.1
    assert fr["estimate"] == pytest.approx(0.36 / 0.216, rel=0.05)
    table = report.analyse(recs, SELECTION, reps=REPS)["archs"]["cnn"]["table"]
    assert table[1]["worst_case"][1]["fooling_rate_by_fooling_rate"] == pytest.approx(0.216)
    del recs[0]["test"]["worst_case_by_fooling_rate"]
    rob = claims_by_id(report.analyse(recs, SELECTION, reps=REPS))["robustness"]
    assert rob["detail"]["fooling_rate_worst_case_by"] == "uer"
    assert rob["detail"]["fooling_rate_ratio"][1]["estimate"] == pytest.approx(0.36 / 0.108, rel=0.05)
