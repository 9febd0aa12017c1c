"""benchmarks/reproduce.py (reproduction v2): the plan, the records, and the whole pipeline on digits."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from benchmarks.reproduction import plan as plans, records, render

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_full_plan_covers_the_issue():
    p = plans.full_plan("fashion_mnist")
    assert [a.name for a in p.archs] == ["mlp", "cnn"]
    assert p.grid("jr") == (0.0, 0.01, 0.05, 0.1, 0.5, 1.0)
    assert set(p.methods) == {"jr", "stacked_spectral", "uat", "cw_uat", "sat", "pgd", "trades"}
    assert p.claim_seeds == (0, 1, 2) and p.worst_case_eps == (0.05, 0.1, 0.2)
    assert min(p.sgd_eps) == 0.02 and max(p.sgd_eps) == 0.3 and set(p.worst_case_eps) <= set(p.sgd_eps)
    assert p.num_validation > 0
    assert plans.full_plan("cifar10").archs[0].name == "resnet"


def test_the_cnn_suite_is_the_standard_one_without_deepfool(tmp_path):
    from jacuap.evaluation import suite

    from benchmarks.reproduction import evaluate

    p = plans.full_plan("fashion_mnist")
    mlp, cnn = p.archs
    assert p.suite_of(mlp) == "standard" and p.suite_of(cnn) == plans.CNN_SUITE
    standard, cut = suite.SUITES["standard"], suite.SUITES[plans.CNN_SUITE]
    assert [m for m in standard.members if m.attack != "deepfool_uap"] == list(cut.members)
    assert len(cut.members) == len(standard.members) - 1 and cut.targeted_epochs == standard.targeted_epochs
    # A model whose suite run started under another suite finishes under it.
    assert evaluate._started_suite(str(tmp_path)) == ""
    (tmp_path / "suite").mkdir()
    (tmp_path / "suite" / "request.json").write_text(json.dumps({"suite": "standard", "eps": [0.1]}))
    assert evaluate._started_suite(str(tmp_path)) == "standard"


def test_every_method_config_is_a_valid_training_config():
    from jacuap import configs
    from jacuap.configs import default

    p = plans.full_plan("fashion_mnist")
    for arch in p.archs:
        for spec in plans.grid_models(p, arch, arch.epochs):
            config = default.get_config()
            config.update(**spec.config_overrides(p))
            configs.validate(config)
    assert plans.METHODS["stacked_spectral"].config(0.1)["jr_mode"] == "stacked_spectral"
    assert plans.METHODS["trades"].config(6.0)["trades_beta"] == 6.0


@pytest.mark.parametrize("done,chosen,todo", [
    ({}, None, [8, 16]),
    ({8: 0.90}, None, [16]),
    ({8: 0.900, 16: 0.9025}, 8, []),           # 0.25 points: converged at 8
    ({8: 0.90, 16: 0.91}, None, [32]),        # 1 point: double
    ({8: 0.90, 16: 0.91, 32: 0.912}, 16, []),
    ({8: 0.90, 16: 0.91, 32: 0.95}, 32, []),  # the cap (64 would pass max_epochs 32)
])
def test_schedule_search(done, chosen, todo):
    p = plans.Plan("d", (), ())
    assert plans.schedule_runs(p, plans.Arch("cnn", 8, 32), done) == (chosen, todo)


def _c(strength, acc, uer):
    return {"strength": strength, "validation_accuracy": acc, "validation_uer": uer}


def test_selection_rules():
    p = plans.Plan("d", (), ())
    jr = [_c(0.01, 0.899, 0.35), _c(0.1, 0.891, 0.30), _c(0.5, 0.885, 0.20), _c(1.0, 0.86, 0.1)]
    assert plans.choose(p, "jr", jr, 0.90)["chosen"] == 0.1  # largest within 1 point (0.5 is 1.5 below)
    uat = [_c(0.05, 0.895, 0.25), _c(0.1, 0.892, 0.22), _c(0.2, 0.85, 0.05)]
    assert plans.choose(p, "uat", uat, 0.90)["chosen"] == 0.1  # most robust within 1 point
    pick = plans.choose(p, "pgd", [_c(0.05, 0.85, 0.2), _c(0.1, 0.80, 0.1)], 0.90)
    assert pick["chosen"] == 0.05 and "none was within" in pick["rule"]
    assert [c["strength"] for c in pick["candidates"]] == [0.05, 0.1]


def test_seed_models_are_the_claims_groups():
    p = plans.Plan("d", (), (), claim_seeds=(0, 1, 2))
    arch = plans.Arch("cnn", 8, 64)
    ids = [s.id for s in plans.seed_models(p, arch, 8, {"jr": 0.1, "uat": 0.05})]
    assert ids == ["d/cnn/jr_0_s1", "d/cnn/jr_0.1_s1", "d/cnn/uat_0.05_s1",
                   "d/cnn/jr_0_s2", "d/cnn/jr_0.1_s2", "d/cnn/uat_0.05_s2"]


def test_each_groups_transfer_rows_come_before_its_extra_seeds(tmp_path):
    """The stages' order: JR's grid and choice, its transfer rows, its seeds; then the defences' the same way;
    a last transfer pass. Only the order is checked here (the stages themselves: the quick run and the store's
    tests), so the stages are replaced by a log."""
    from benchmarks import reproduce

    calls = []

    class Logged(reproduce.Sweep):
        def schedule(self, arch):
            return 4

        def select(self, arch, methods, epochs):
            calls.append(("select", tuple(methods)))
            return {m: self.plan.grid(m)[-1] for m in methods}

        def transfer(self, arch, epochs, chosen):
            calls.append(("transfer", tuple(sorted(chosen))))

        def ensure(self, spec):
            calls.append(("ensure", spec.id))

    plan = plans.quick_plan("digits")
    Logged(plan, str(tmp_path / "out"), str(tmp_path / "work"), "", None).run(list(plan.archs), ["jr", "uat"])
    assert calls == [
        ("select", ("jr",)), ("transfer", ("jr",)),
        ("ensure", "digits/mlp/jr_0_s1"), ("ensure", "digits/mlp/jr_1_s1"),
        ("select", ("uat",)), ("transfer", ("jr", "uat")),
        ("ensure", "digits/mlp/jr_0_s1"), ("ensure", "digits/mlp/uat_0.1_s1"),
        ("transfer", ("jr", "uat")),
    ]


def test_bits_round_trip_and_reject_bad_lengths(tmp_path):
    rng = np.random.default_rng(0)
    for n in (1, 7, 8, 9, 10000):
        bits = rng.random(n) < 0.3
        np.testing.assert_array_equal(records.unpack_bits(records.pack_bits(bits), n), bits)
    with pytest.raises(ValueError, match="hold 16 values"):
        records.unpack_bits(records.pack_bits(np.ones(9, bool)), 20)
    with pytest.raises(ValueError, match="vector"):
        records.pack_bits(np.ones((2, 2), bool))
    rid = records.model_id("digits", "mlp", "jr", 0.1, 2)
    assert rid == "digits/mlp/jr_0.1_s2" and records.load_record(str(tmp_path), rid) is None
    path = records.save_record(str(tmp_path), {"id": rid, "x": 1})
    assert path.endswith("digits/models/mlp/jr_0.1_s2.json")
    assert records.load_record(str(tmp_path), rid) == {"schema": records.SCHEMA, "id": rid, "x": 1}
    with pytest.raises(ValueError):
        records.save_record(str(tmp_path), {"id": rid, "x": float("nan")})  # JSON without NaN
    assert records.load_record(str(tmp_path), rid)["x"] == 1  # the failed write left the record intact


def _run(*args, timeout=900, cwd=ROOT):
    return subprocess.run([sys.executable, "benchmarks/reproduce.py", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def _checkout_copy(dst):
    """The working tree's files (tracked and untracked, not ignored) as a fresh git repository at ``dst``."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True,
                            check=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src = os.path.join(ROOT, rel)
        if os.path.isfile(src):
            os.makedirs(os.path.dirname(os.path.join(dst, rel)), exist_ok=True)
            shutil.copy2(src, os.path.join(dst, rel))
    git = lambda *a: subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *a], cwd=dst,
                                    capture_output=True, text=True, check=True).stdout
    git("init", "-q")
    git("add", "-A")
    git("commit", "-q", "-m", "copy")
    return git


@pytest.mark.bench  # a benchmark script end to end: make test-bench (.ci/run runs it)
@pytest.mark.slow
def test_reproduce_quick_on_digits(tmp_path):
    """The whole pipeline: schedule, grid, selection, seeds, records, claims, report; a rerun does nothing.

    Run bare (``--quick`` without ``--out``) in a copy of the checkout: its toy records go under the git-ignored
    ``runs/reproduce_quick/``, and nothing tracked (``results/``, ``RESULTS.md``) changes.
    """
    repo = tmp_path / "repo"
    git = _checkout_copy(repo)
    args = ["--quick", "--datasets=digits", "--reps=50"]
    refused = _run("--quick", "--datasets=digits", "--out=results", cwd=repo)
    assert refused.returncode == 2 and "--quick writes toy-sized records" in refused.stderr
    first = _run(*args, "--max_models=2", cwd=repo)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "stopped after 2 new models" in first.stdout
    proc = _run(*args, cwd=repo)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "sweep complete" in proc.stdout
    assert git("status", "--porcelain") == ""  # results/ and RESULTS.md untouched
    out = repo / "runs" / "reproduce_quick" / "results"
    schedule = json.load(open(out / "digits" / "schedule.json"))
    assert schedule["mlp"]["epochs"] == 4 and set(schedule["mlp"]["runs"]) == {"4", "8"}
    selection = json.load(open(out / "digits" / "selection.json"))["archs"]["mlp"]
    assert selection["jr"]["chosen"] in (0.1, 1.0) and selection["uat"]["chosen"] == 0.1
    ids = sorted(os.path.splitext(f)[0] for f in os.listdir(out / "digits" / "models" / "mlp"))
    lam = f"{selection['jr']['chosen']:g}"
    assert ids == sorted(["jr_0_s0", "jr_0.1_s0", "jr_1_s0", "uat_0.1_s0", "jr_0_s1", f"jr_{lam}_s1", "uat_0.1_s1"])
    record = records.load_record(str(out), "digits/mlp/jr_0_s1")
    n = record["test"]["num_eval"]
    wrong = records.unpack_bits(record["test"]["worst_case"][0]["wrong"], n)
    assert wrong.mean() == pytest.approx(record["test"]["worst_case"][0]["uer"], abs=1e-12)
    assert [r["eps"] for r in record["test"]["sgd_uap"]] == [0.05, 0.1, 0.2]
    assert record["params_fingerprint"].startswith("sha256:") and record["train"]["validation_accuracy"] > 0.5
    # The worst case chosen by fooling rate on the crafting split, beside the one chosen by UER.
    by_fr = record["test"]["worst_case_by_fooling_rate"]
    assert [w["eps"] for w in by_fr] == [0.1] and by_fr[0]["craft_fooling_rate"] >= record["test"]["worst_case"][0][
        "craft_fooling_rate"]
    changed = records.unpack_bits(by_fr[0]["changed"], n)
    assert changed.mean() == pytest.approx(by_fr[0]["fooling_rate"], abs=1e-12)
    # The transfer matrix's diagonal is each model's own worst case.
    transfer = json.load(open(out / "digits" / "transfer.json"))["mlp"]
    assert len(transfer["models"]) == 3  # lambda 0, lambda*, uat at seed 0
    for rid in transfer["models"]:
        own = next(w for w in records.load_record(str(out), rid)["test"]["worst_case"] if w["eps"] == 0.1)
        assert transfer["uer"][rid][rid] == pytest.approx(own["uer"], abs=1e-12)
    analysis = json.load(open(out / "digits.json"))
    for claim in analysis["claims"]:
        assert {"claim", "estimate", "ci95", "verdict"} <= set(claim)
    # The bound step measured every record from its workdir: test.bound at each worst-case budget, a claims row.
    for rid in ids:
        b = records.load_record(str(out), f"digits/mlp/{rid}")["test"]["bound"]
        assert [x["eps"] for x in b["budgets"]] == [0.1] and b["num_inputs"] == 60 and b["holds"]
    bound_row = next(c for c in analysis["claims"] if c["id"] == "bound")
    assert bound_row["verdict"] in ("holds", "holds partly") and "bound held at 7/7 (model, eps)" in bound_row["where"]
    assert (out / "digits_mlp_bound_vs_observed.png").stat().st_size > 0
    assert (out / "digits.md").stat().st_size > 500
    # Every finished model's weights are stored beside its record (under the git-ignored quick folder).
    assert sorted(f[:-4] for f in os.listdir(out / "digits" / "weights" / "mlp")) == sorted(ids)
    assert any(f.endswith(".png") for f in os.listdir(out))
    # A rerun, as on another machine: nothing trained or attacked, the same records.
    before = {f: (out / "digits" / "models" / "mlp" / f).read_bytes()
              for f in os.listdir(out / "digits" / "models" / "mlp")}
    # ... and the blocks a results file places get the claims and the report (RESULTS.md's mechanism).
    md = tmp_path / "RESULTS.md"
    md.write_text("intro\n<!-- claims:digits -->\n<!-- /claims:digits -->\nprose\n"
                  "<!-- report:digits -->\nold\n<!-- /report:digits -->\nend\n")
    again = _run(*args, f"--results_md={md}", cwd=repo)
    assert again.returncode == 0 and "0 new models" in again.stdout, again.stderr[-2000:]
    text = md.read_text()
    assert text.startswith("intro\n<!-- claims:digits -->\nGenerated by") and "\nprose\n" in text
    assert render.results_block("digits", (out / "digits.md").read_text()) in text and "\nold\n" not in text
    assert render.claims_table(json.load(open(out / "digits.json"))["claims"])[-1] in text
    assert before == {f: (out / "digits" / "models" / "mlp" / f).read_bytes()
                      for f in os.listdir(out / "digits" / "models" / "mlp")}
    assert git("status", "--porcelain") == ""
    # A record made before the fooling-rate choice, from a suite run made before it too: the step recomputes
    # the rows' crafting-split fooling rates from the saved UAPs and gives the record what the sweep gave it.
    old = records.load_record(str(out), "digits/mlp/jr_0.1_s0")
    want = old["test"].pop("worst_case_by_fooling_rate")
    records.save_record(str(out), old)
    suite_json = repo / "runs" / "reproduce_quick" / "work" / "digits" / "mlp" / "e4" / "jr_0.1_s0" / "suite" / "results.json"
    res = json.loads(suite_json.read_text())
    del res["worst_case_by_fooling_rate"]
    res["results"] = [{k: v for k, v in row.items() if k != "craft_fooling_rate"} for row in res["results"]]
    suite_json.write_text(json.dumps(res))
    again = _run(*args, "--max_models=0", cwd=repo)
    assert again.returncode == 0 and "jr_0.1_s0: worst case by fooling rate added" in again.stdout, again.stderr[-2000:]
    assert records.load_record(str(out), "digits/mlp/jr_0.1_s0")["test"]["worst_case_by_fooling_rate"] == want
    # A workdir lost (a fresh clone) is restored from the stored weights when a step needs it: the bound
    # measured again on the restored model is the one measured on the trained one.
    work = repo / "runs" / "reproduce_quick" / "work" / "digits" / "mlp" / "e4"
    lost = records.load_record(str(out), "digits/mlp/jr_0_s0")
    bound = lost["test"].pop("bound")
    records.save_record(str(out), lost)
    shutil.rmtree(work / "jr_0_s0")
    again = _run(*args, "--max_models=0", cwd=repo)
    assert again.returncode == 0 and "digits/mlp/jr_0_s0: workdir restored from the store" in again.stdout, (
        again.stderr[-2000:])
    assert records.load_record(str(out), "digits/mlp/jr_0_s0")["test"]["bound"] == bound
    # A record whose model was trained elsewhere (no workdir here, no weights stored) keeps no test.bound, is
    # listed by --plan, and is counted as not measured in the claims row.
    moved = records.load_record(str(out), "digits/mlp/jr_0_s1")
    del moved["test"]["bound"]
    records.save_record(str(out), moved)
    os.rename(work / "jr_0_s1", work / "jr_0_s1.elsewhere")
    weights = out / "digits" / "weights" / "mlp"
    os.rename(weights / "jr_0_s1.npz", tmp_path / "jr_0_s1.npz")
    plan = _run(*args, "--plan", cwd=repo)
    assert plan.returncode == 0 and "bound (test.bound): 6 measured, 0 to measure, 1 not measured" in plan.stdout
    assert "digits/mlp/jr_0_s1: bound: not measured (workdir missing)" in plan.stdout
    assert "worst case by fooling rate (test.worst_case_by_fooling_rate): 7 recorded, 0 to add" in plan.stdout
    assert "weights stored: 6 of 7 records" in plan.stdout
    again = _run(*args, "--max_models=0", cwd=repo)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "bound" not in records.load_record(str(out), "digits/mlp/jr_0_s1")["test"]
    bound_row = next(c for c in json.load(open(out / "digits.json"))["claims"] if c["id"] == "bound")
    assert "1 of 7 records not measured" in bound_row["where"]


def test_user_mistakes_are_one_line(tmp_path):
    for args, message in ((["--datasets=imagenet"], "unknown dataset"), (["--methods=foo"], "unknown method"),
                          (["--max_models=-1"], "max_models")):
        proc = _run(*args, f"--out={tmp_path}", timeout=120)
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_doctests():
    import doctest

    from benchmarks.reproduction import class_pairs

    for module in (plans, records, class_pairs):
        failed, attempted = doctest.testmod(module)
        assert attempted > 0 and failed == 0, module.__name__


def test_promote_a_rerun(tmp_path):
    """A whole-arch re-run replaces every record of that arch and its selection/transfer entries; another arch
    only the ids the re-run has; the replaced ones land in the archive, which is never overwritten."""
    from benchmarks.reproduction import promote

    def put(out, key, **extra):
        path = tmp_path / out / "d" / "models" / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"id": f"d/{key[:-5]}", **extra}))

    for key in ("mlp/jr_0_s0.json", "mlp/jr_0.1_s0.json", "mlp/jr_0.5_s1.json", "cnn/jr_0_s0.json",
                "cnn/jr_0.1_s0.json"):
        put("results", key, v=2)
    for key in ("mlp/jr_0_s0.json", "mlp/jr_0.1_s0.json", "cnn/jr_0_s0.json"):
        put("rerun", key, v=3)
    (tmp_path / "results" / "d" / "selection.json").write_text(json.dumps({"archs": {"mlp": {"jr": 1}, "cnn": {"jr": 2}}}))
    (tmp_path / "rerun" / "d" / "selection.json").write_text(json.dumps({"archs": {"mlp": {"jr": 3}}}))
    (tmp_path / "results" / "d" / "transfer.json").write_text(json.dumps({"mlp": {"old": 1}}))
    args = [str(tmp_path / p) for p in ("rerun", "results", "v2")]
    moved = promote.promote(*args, "d", whole=["mlp"])
    assert moved == ["cnn/jr_0_s0.json", "mlp/jr_0.1_s0.json", "mlp/jr_0_s0.json"]
    now = {p.relative_to(tmp_path / "results" / "d" / "models").as_posix(): json.loads(p.read_text())["v"]
           for p in (tmp_path / "results" / "d" / "models").rglob("*.json")}
    assert now == {"mlp/jr_0_s0.json": 3, "mlp/jr_0.1_s0.json": 3, "cnn/jr_0_s0.json": 3, "cnn/jr_0.1_s0.json": 2}
    archived = sorted(p.relative_to(tmp_path / "v2" / "d" / "models").as_posix()
                      for p in (tmp_path / "v2" / "d" / "models").rglob("*.json"))
    assert archived == ["cnn/jr_0_s0.json", "mlp/jr_0.1_s0.json", "mlp/jr_0.5_s1.json", "mlp/jr_0_s0.json"]
    assert json.loads((tmp_path / "results" / "d" / "selection.json").read_text()) == {"archs": {"mlp": {"jr": 3}, "cnn": {"jr": 2}}}
    assert json.loads((tmp_path / "v2" / "d" / "selection.json").read_text()) == {"archs": {"mlp": {"jr": 1}}}
    assert json.loads((tmp_path / "results" / "d" / "transfer.json").read_text()) == {}
    assert json.loads((tmp_path / "v2" / "d" / "transfer.json").read_text()) == {"mlp": {"old": 1}}
    with pytest.raises(ValueError, match="already holds"):
        promote.promote(*args, "d", whole=["mlp"])
    with pytest.raises(ValueError, match="whole names resnet"):
        promote.promote(str(tmp_path / "rerun"), *args[1:], "d", whole=["resnet"])
    with pytest.raises(ValueError, match="has no records"):
        promote.promote(str(tmp_path / "empty"), *args[1:], "d")
