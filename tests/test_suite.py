"""jacuap.evaluation.suite through jacuap.evaluation: the ensemble and its worst case, targeted matrices,
layer maximisation, transfer, and evaluating a given UAP.  One tiny trained digits MLP per module."""

import json
import re
import shutil
import os
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jacuap import attacks, errors, evaluation, train
from jacuap.configs import default

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EPS = [0.05, 0.1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("digits") / "w"
    config = default.get_config()
    config.update(dataset="digits", model="mlp", num_epochs=2, progress=False, eval_num_inputs=50)
    train.train_and_evaluate(config, str(workdir))
    return str(workdir)


def _request(workdir, out, **kw):
    base = dict(workdir=workdir, attacks=["sgd_uap"], norm="linf", eps=EPS, out=str(out),
                num_craft=64, num_eval=50, num_metrics=0, sgd_epochs=1, progress=False)
    base.update(kw)
    return evaluation.AttackRequest(**base)


@pytest.fixture(scope="module")
def quick(trained, tmp_path_factory):
    out = tmp_path_factory.mktemp("quick") / "out"
    request = _request(trained, out, attacks=[], suite="quick")
    return request, evaluation.run_attacks(request, log=lambda line: None)


def test_quick_suite_writes_a_worst_case_per_budget(quick):
    request, results = quick
    out = request.out
    assert json.load(open(os.path.join(out, "results.json"))) == json.loads(json.dumps(results))
    expected = [(a, s) for a, s, _ in evaluation.suite.suite_tasks("quick", 0)]
    assert ("sgd_uap", 1) in expected
    rows = results["results"]
    assert sorted((r["attack"], r["seed"], r["eps"]) for r in rows) == sorted(
        (a, s, e) for a, s in expected for e in EPS)
    assert [w["eps"] for w in results["worst_case"]] == EPS
    for w in results["worst_case"]:
        members = [r for r in rows if r["eps"] == w["eps"]]
        chosen = [r for r in members if (r["attack"], r["seed"]) == (w["attack"], w["seed"])]
        assert len(chosen) == 1  # one of the members ...
        assert all(r["craft_uer"] <= w["craft_uer"] for r in members)  # ... none with a higher crafting UER
        assert (w["uer"], w["fooling_rate"], w["file"]) == (chosen[0]["uer"], chosen[0]["fooling_rate"],
                                                            chosen[0]["file"])
        v = np.load(os.path.join(out, w["file"]))
        assert v.shape == (8, 8, 1) and np.max(np.abs(v)) <= w["eps"] + 1e-6
    for r in rows:  # every UAP keeps its metadata beside it
        assert 0 <= r["craft_uer"] <= 1 and r["num_craft"] == 64
        assert r["source_model_fingerprint"] == results["config"]["model_fingerprint"]
        assert r["source_workdir"] == os.path.abspath(request.workdir)
    assert results["config"]["class_names"][:2] == ["0", "1"]
    # The suite fixes each member's settings: the request's sgd_epochs/deepfool_passes did not run; the rows say what did.
    assert results["config"]["sgd_epochs"] is None and results["config"]["deepfool_passes"] is None
    assert {r["settings"]["num_epochs"] for r in rows if r["attack"] == "sgd_uap"} == {1}
    record = results["suite"]
    assert record["name"] == "quick"
    assert record["gradient_evaluations_per_budget"] == sum(m["gradient_evaluations_per_budget"]
                                                            for m in record["members"]) > 0
    sgd = next(m for m in record["members"] if m["attack"] == "sgd_uap")
    assert sgd["gradient_evaluations_per_budget"] == 2 * 1 * 64  # 2 seeds x 1 epoch x 64 inputs


def test_targeted_matrix_is_k_by_k_with_class_names(quick):
    request, results = quick
    assert [t["eps"] for t in results["targeted"]] == EPS
    for t in results["targeted"]:
        m = t["matrix"]
        assert len(m) == 10 and all(len(row) == 10 for row in m)
        assert all(m[i][i] is None for i in range(10))
        assert all(0 <= m[i][j] <= 1 for i in range(10) for j in range(10) if i != j)
        assert t["class_names"] == [str(i) for i in range(10)] and list(t["success"]) == t["class_names"]
        assert np.load(os.path.join(request.out, t["file"])).shape == (10, 8, 8, 1)
        assert t["figure"] == f"targeted_eps{t['eps']:g}.png"
        assert os.path.getsize(os.path.join(request.out, t["figure"])) > 1000


def test_suite_resume_reuses_every_row(quick, monkeypatch):
    request, results = quick
    calls = []
    monkeypatch.setattr(evaluation.run, "craft", lambda *a, **k: calls.append(a) or 1 / 0)
    monkeypatch.setattr(attacks, "targeted_uap_matrix", lambda *a, **k: 1 / 0)
    lines = []
    again = evaluation.run_attacks(request, log=lines.append)
    assert calls == [] and again == results
    assert lines == [f"reusing {len(results['results'])} finished rows of {len(results['results'])} in {request.out}"]


def test_suite_and_attack_are_exclusive_and_suites_are_known(trained, tmp_path):
    with pytest.raises(errors.AttackError, match="--suite and --attack are exclusive"):
        _request(trained, tmp_path, suite="quick")
    with pytest.raises(errors.AttackError, match="unknown suite 'big'; choose from standard, quick"):
        _request(trained, tmp_path, attacks=[], suite="big")
    with pytest.raises(errors.AttackError, match="--uap_file takes one --eps"):
        _request(trained, tmp_path, attacks=[], uap_file="f.npy")
    flags = types.SimpleNamespace(workdir="w", attack=["sgd_uap", "sv_uap"], norm="linf", eps=["0.1"], out=None,
                                  num_craft=10, num_eval=10, craft_split="train", num_metrics=0, sgd_epochs=1,
                                  deepfool_passes=1, seed=0, progress=False, suite="quick")
    assert evaluation.AttackRequest.from_flags(flags, attack_given=False).attacks == []
    with pytest.raises(errors.AttackError, match="exclusive"):
        evaluation.AttackRequest.from_flags(flags, attack_given=True)


def test_uap_file_reproduces_the_crafted_row_and_checks_it(quick, tmp_path):
    request, results = quick
    row = next(r for r in results["results"] if r["attack"] == "sgd_uap" and r["eps"] == 0.1 and r["seed"] == 0)
    path = os.path.join(request.out, row["file"])
    got = evaluation.run_attacks(_request(request.workdir, tmp_path / "given", attacks=[], uap_file=path,
                                          eps=[0.1]), log=lambda line: None)
    (given,) = got["results"]
    assert given["attack"] == "uap_file" and given["uap_file"] == os.path.abspath(path)
    assert (given["uer"], given["fooling_rate"], given["craft_uer"]) == (row["uer"], row["fooling_rate"],
                                                                        row["craft_uer"])
    assert got["worst_case"][0]["file"] == given["file"]
    np.save(tmp_path / "shape.npy", np.zeros((4, 4), np.float32))
    np.save(tmp_path / "big.npy", np.full((8, 8, 1), 0.2, np.float32))
    (tmp_path / "junk.npy").write_text("not an array")
    for name, message in (("shape.npy", "has shape (4, 4); the model's inputs have shape (8, 8, 1)"),
                          ("big.npy", "has linf norm 0.2 > eps 0.1"),
                          ("junk.npy", "cannot be read as a .npy array")):
        out = tmp_path / f"out_{name}"
        with pytest.raises(errors.AttackError, match=re.escape(message)) as info:
            evaluation.run_attacks(_request(request.workdir, out, attacks=[], uap_file=str(tmp_path / name),
                                            eps=[0.1]))
        assert "\n" not in str(info.value) and not out.exists()
    # Just inside the budget (1e-6 relative) is accepted.
    np.save(tmp_path / "edge.npy", np.full((8, 8, 1), 0.1 * (1 + 5e-7), np.float32))
    assert evaluation.load_uap_file(str(tmp_path / "edge.npy"), (8, 8, 1), "linf", 0.1).shape == (8, 8, 1)


def test_attack_py_uap_file_over_budget_is_one_line(quick, tmp_path):
    request, _ = quick
    np.save(tmp_path / "big.npy", np.full((8, 8, 1), 0.2, np.float32))
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "attack.py"), f"--workdir={request.workdir}",
                           f"--uap_file={tmp_path / 'big.npy'}", f"--out={tmp_path / 'o'}"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"attack.py: error: --uap_file {tmp_path / 'big.npy'} has linf norm 0.2 > eps 0.1; "
        f"give a budget at least its norm (--eps)"]


def test_transfer_from_the_same_workdir_equals_the_plain_run(trained, tmp_path):
    plain = evaluation.run_attacks(_request(trained, tmp_path / "plain", eps=[0.1]))
    moved = evaluation.run_attacks(_request(trained, tmp_path / "moved", eps=[0.1], source_workdir=trained))
    keys = ("uer", "fooling_rate", "craft_uer", "clean_accuracy", "source_model_fingerprint", "source_workdir")
    assert [{k: r[k] for k in keys} for r in plain["results"]] == [{k: r[k] for k in keys} for r in moved["results"]]
    np.testing.assert_array_equal(np.load(tmp_path / "plain" / plain["results"][0]["file"]),
                                  np.load(tmp_path / "moved" / moved["results"][0]["file"]))
    assert moved["config"]["source_workdir"] == os.path.abspath(trained)
    assert moved["config"]["source_model_fingerprint"] == plain["config"]["model_fingerprint"]


def test_transfer_needs_one_input_shape(trained, tmp_path, monkeypatch):
    real = evaluation.restore

    def restore(workdir):
        model = real(trained)
        if workdir == "other":
            model = model._replace(dataset=types.SimpleNamespace(image_shape=(4, 4, 1), name="tiny"))
        return model

    monkeypatch.setattr(evaluation.run, "restore", restore)
    with pytest.raises(errors.AttackError, match=r"--source_workdir other takes inputs \[4, 4, 1\], "
                                                 r"--workdir .* \[8, 8, 1\]; transfer needs one shape"):
        evaluation.run_attacks(_request(trained, tmp_path / "o", source_workdir="other"))
    assert not (tmp_path / "o").exists()


def test_layer_max(trained, tmp_path):
    with pytest.raises(errors.AttackError, match="no layer 'dense7' in the model; choose from .*dense0, dense1"):
        evaluation.run_attacks(_request(trained, tmp_path / "bad", attacks=["layer_max"], layer="dense7"))
    with pytest.raises(errors.AttackError, match="--layer is read by the attacks on hidden layers only"):
        _request(trained, tmp_path, attacks=["sgd_uap"], layer="dense0")
    results = evaluation.run_attacks(_request(trained, tmp_path / "ok", attacks=["layer_max"], layer="dense0",
                                              eps=[0.1]))
    (row,) = results["results"]
    assert row["layer"] == "dense0" and row["universal"] and row["file"] == "layer_max_linf_eps0.1_seed0.npy"
    assert np.max(np.abs(np.load(tmp_path / "ok" / row["file"]))) <= 0.1 + 1e-6
    # Without --layer, the layer before the classifier.
    (row,) = evaluation.run_attacks(_request(trained, tmp_path / "default", attacks=["layer_max"],
                                             eps=[0.1]))["results"]
    assert row["layer"] == "dense1"


def test_compiled_programs_are_reused_across_budgets_and_restarts():
    traces = []
    w = jax.random.normal(jax.random.PRNGKey(0), (16, 3))

    def apply_fn(params, x):
        if isinstance(x, jax.core.Tracer):
            traces.append(x.shape)
        return x.reshape(len(x), -1) @ params

    x = jax.random.uniform(jax.random.PRNGKey(1), (40, 4, 4, 1))
    y = jnp.arange(40) % 3
    def features_fn(params, x):
        if isinstance(x, jax.core.Tracer):
            traces.append(x.shape)
        return jax.nn.relu(x.reshape(len(x), -1) @ params)

    layers_fn = lambda params, x: (features_fn(params, x),)
    for attack, kw in ((attacks.sgd_uap, {"num_epochs": 2}), (attacks.sgd_uap_restarts, {"restarts": 3, "num_epochs": 2}),
                       (attacks.sga_uap, {"num_epochs": 2}), (attacks.deepfool_uap, {"max_passes": 2}),
                       (attacks.sgd_uap, {"num_epochs": 2, "loss": "margin"}),
                       (attacks.cosine_uap, {"num_epochs": 2}),
                       (attacks.cosine_uap, {"num_epochs": 2, "prior": "range", "input_shape": (4, 4, 1)}),
                       (attacks.fg_uap, {"num_epochs": 2, "features_fn": features_fn}),
                       (attacks.gd_uap, {"num_epochs": 2, "features_fn": layers_fn, "prior": "data"}),
                       (attacks.gap_uap, {"num_epochs": 2}),
                       (attacks.layer_max_uap, {"num_epochs": 2, "features_fn": features_fn})):
        data = None if kw.get("prior") == "range" else x
        size = {"num_inputs": 40} if data is None else {}
        attack(apply_fn, w, data, y, eps=0.05, key=jax.random.PRNGKey(2), batch_size=16, **kw, **size)
        after_first = len(traces)
        attack(apply_fn, w, data, y, eps=0.1, key=jax.random.PRNGKey(3), batch_size=16, **kw, **size)
        assert len(traces) == after_first, attack


def test_gradient_budget_and_suites_are_fixed():
    assert set(evaluation.suite.SUITES) == {"standard", "quick", "strong", "zoo", "standard_without_deepfool"}
    without = evaluation.suite.SUITES["standard_without_deepfool"]
    assert list(without.members) == [m for m in evaluation.suite.SUITES["standard"].members
                                     if m.attack != "deepfool_uap"]
    zoo = evaluation.suite.SUITES["zoo"].members
    assert {m.attack for m in zoo} == set(attacks.universal_names())  # the benchmark ranks every attack
    assert all(m.seeds == (0,) for m in zoo) and len({m.name for m in zoo}) == len(zoo)
    strong = {m.name: m for m in evaluation.suite.SUITES["strong"].members}
    assert {m.attack for m in strong.values()} == set(attacks.universal_names()) - {"layer_max"}
    for name in ("sgd_uap_margin", "sga_uap_margin", "sgd_uap_restarts_margin"):
        assert dict(strong[name].settings)["loss"] == "margin"
    assert dict(strong["gd_uap"].settings)["prior"] == "none"  # the data-free member reads no data
    assert dict(strong["cosine_uap_range"].settings)["prior"] == "range"
    standard = {m.attack: m for m in evaluation.suite.SUITES["standard"].members}
    assert set(standard) == {"sgd_uap", "sga_uap", "sgd_uap_restarts", "deepfool_uap", "sv_uap"}
    assert standard["sgd_uap"].seeds == (0, 1)
    assert dict(standard["deepfool_uap"].settings) == {"max_passes": 3, "batch_size": 32}
    assert evaluation.suite.gradient_evaluations("sga_uap", {"num_epochs": 5}, 100, 10) == 2000
    assert evaluation.suite.gradient_evaluations("targeted", {"num_epochs": 5}, 100, 10) == 5000


@pytest.mark.bench  # a benchmark script end to end: make test-bench (.ci/run runs it)
def test_transfer_benchmark_uses_the_worst_case_or_crafts(quick, tmp_path):
    request, results = quick
    copy = tmp_path / "a" / "b" / "c" / "copy"  # deeper than the workdir: attack_dir leads nowhere from it
    shutil.copytree(request.workdir, copy)  # the same model, without attack outputs: sgd_uap is crafted
    attack_dir = os.path.relpath(request.out, request.workdir)
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "transfer.py"),
                           f"--workdirs={request.workdir},{copy}", "--eps=0.1", f"--out={tmp_path / 'tr'}",
                           f"--attack_dir={attack_dir}", "--num_craft=64", "--num_eval=50", "--sgd_epochs=1"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    record = json.load(open(tmp_path / "tr" / "transfer.json"))
    worst = next(w for w in results["worst_case"] if w["eps"] == 0.1)
    assert record["sources"][0]["kind"] == "worst_case" and record["sources"][0]["attack"] == worst["attack"]
    assert record["sources"][1]["attack"] == "sgd_uap" and "craft_1" in record["sources"][1]["file"]
    assert record["uer"][0] == [worst["uer"], worst["uer"]]  # one model twice: the same UER
    assert record["uer"][1][0] == record["uer"][1][1]
    assert (tmp_path / "tr" / "transfer.png").stat().st_size > 1000


TOY_ATTACK = '''
"""A user's attack, registered from outside the package: v = eps * sign(mean of the crafting inputs - 0.5)."""
import jax.numpy as jnp
import numpy as np

from jacuap import attacks


def toy_uap(apply_fn, params, x, y=None, *, eps, norm="linf", key=None, scale=1.0):
    direction = jnp.mean(jnp.asarray(x), axis=0) - 0.5
    return attacks.UAPResult(attacks.scale_to_budget(scale * direction, norm, eps), np.zeros(1))


attacks.register(attacks.AttackSpec("toy_uap", toy_uap, needs_labels=False, settings={"scale": 1.0},
                                    summary="eps * sign(mean(x) - 0.5)"))
'''


@pytest.mark.slow  # a program run: make test-slow (.ci/run runs it)
def test_attack_py_runs_a_registered_toy_attack_and_the_zoo(trained, tmp_path):
    """One file and one register line make an attack that attack.py runs beside the zoo's new attacks."""
    (tmp_path / "toy_attack.py").write_text(TOY_ATTACK)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "attack.py"), f"--workdir={trained}", f"--out={out}",
                           "--attack_modules=toy_attack", "--attack=toy_uap,gd_uap,cosine_uap,fg_uap,gap_uap",
                           "--eps=0.1", "--num_craft=64", "--num_eval=50", "--sgd_epochs=1", "--num_metrics=0",
                           "--noprogress"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    results = json.load(open(out / "results.json"))
    rows = {r["attack"]: r for r in results["results"]}
    assert set(rows) == {"toy_uap", "gd_uap", "cosine_uap", "fg_uap", "gap_uap"}
    for name, row in rows.items():
        v = np.load(out / row["file"])
        assert v.shape == (8, 8, 1) and np.max(np.abs(v)) <= 0.1 + 1e-6, name
        assert 0 <= row["craft_fooling_rate"] <= 1 and 0 <= row["uer"] <= 1
    assert np.abs(np.load(out / rows["toy_uap"]["file"])) == pytest.approx(np.full((8, 8, 1), 0.1))  # a vertex
    assert rows["toy_uap"]["settings"] == {"scale": 1.0}
    assert rows["gd_uap"]["layer"] == "dense0,dense1" and rows["gd_uap"]["settings"]["prior"] == "none"
    assert rows["fg_uap"]["layer"] == "dense1"
    assert 0 < rows["fg_uap"]["feature_dominance_clean"] <= 1 and 0 < rows["fg_uap"]["feature_dominance_perturbed"] <= 1
    for key in ("worst_case", "worst_case_by_fooling_rate"):
        (w,) = results[key]
        assert w["attack"] in rows
    by_fooling = max(rows.values(), key=lambda r: r["craft_fooling_rate"])
    assert results["worst_case_by_fooling_rate"][0]["craft_fooling_rate"] == by_fooling["craft_fooling_rate"]
    assert "worst case by fooling rate eps=0.1" in proc.stdout
    # Without the module the name is unknown: one line.
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "attack.py"), f"--workdir={trained}",
                           f"--out={tmp_path / 'o2'}", "--attack_modules=no_such_module", "--attack=toy_uap"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "cannot import 'no_such_module'" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "o2").exists()


@pytest.mark.slow  # a dozen attacks' programs: make test-slow (.ci/run runs it)
def test_strong_suite_runs_every_member(trained, tmp_path):
    request = _request(trained, tmp_path / "strong", attacks=[], suite="strong", eps=[0.1])
    results = evaluation.run_attacks(request, log=lambda line: None)
    expected = {(name, s) for name, s, _ in evaluation.suite.suite_tasks("strong", 0)}
    assert {(r["attack"], r["seed"]) for r in results["results"]} == expected
    margin = [r for r in results["results"] if r["attack"] == "sgd_uap_margin"]
    assert margin and all(r["settings"]["loss"] == "margin" and r["attack_variant_of"] == "sgd_uap" for r in margin)
    assert results["suite"]["name"] == "strong" and "targeted" not in results


@pytest.mark.bench  # a benchmark script end to end: make test-bench (.ci/run runs it)
def test_attack_zoo_benchmark_ranks_every_attack(trained, tmp_path):
    """benchmarks/attack_zoo.py: the zoo suite per seed, one table line per attack, worst-case counts."""
    from benchmarks import attack_zoo

    state = attack_zoo.main([f"--workdirs={trained}", "--seeds=0", "--norms=l2", "--quick", "--no_art",
                             "--num_craft=64", "--num_eval=50", f"--workroot={tmp_path / 'runs'}",
                             f"--out={tmp_path / 'zoo'}"])
    lines = state["table"]
    assert {line["attack"] for line in lines} == {m.name for m in evaluation.suite.SUITES["zoo"].members}
    assert sum(line["worst_by_uer"] for line in lines) == 1 == sum(line["worst_by_fooling_rate"] for line in lines)
    assert all(0 <= line["uer"] <= 1 and line["seeds"] == 1 for line in lines)
    assert "| sgd_uap_margin |" in (tmp_path / "zoo.md").read_text()
    (won,) = attack_zoo.winners(lines)  # one budget: the best row overall, and per family the family's best
    assert won["best"][1] == max(line["uer"] for line in lines)
    assert won["families"]["data-free"][0] in ("gd_uap", "gd_uap_range", "cosine_uap_range")
    assert won["families"]["standard suite"][1] == max(line["uer"] for line in lines if line["attack"] in
                                                        {m.name for m in evaluation.suite.SUITES["standard"].members})
    assert "## Who wins where" in (tmp_path / "zoo.md").read_text()
    counts = attack_zoo.worst_counts(lines)  # one budget and seed: one worst case by each metric
    assert sum(c[1] for c in counts) == 1 == sum(c[2] for c in counts)
    assert "## How often each attack was the worst case" in (tmp_path / "zoo.md").read_text()
    again = attack_zoo.main([f"--workdirs={trained}", "--seeds=0", "--norms=l2", "--quick", "--no_art",
                             "--num_craft=64", "--num_eval=50", f"--workroot={tmp_path / 'runs'}",
                             f"--out={tmp_path / 'zoo'}"])  # resumes: nothing is recomputed
    assert again["runs"] == json.loads(json.dumps(state["runs"]))


def test_loss_flag_reaches_the_label_attacks(trained, tmp_path):
    results = evaluation.run_attacks(_request(trained, tmp_path / "m", attacks=["sgd_uap", "sv_uap"], loss="margin",
                                              eps=[0.1]), log=lambda line: None)
    rows = {r["attack"]: r for r in results["results"]}
    assert rows["sgd_uap"]["settings"]["loss"] == "margin" and "loss" not in rows["sv_uap"]["settings"]
    assert json.load(open(tmp_path / "m" / "request.json"))["loss"] == "margin"  # a ce run is another request
    with pytest.raises(errors.AttackError, match="--loss is read by sgd_uap, sga_uap and sgd_uap_restarts only"):
        _request(trained, tmp_path, attacks=["sv_uap"], loss="margin")
    with pytest.raises(errors.AttackError, match="unknown loss 'hinge'; choose ce or margin"):
        _request(trained, tmp_path, loss="hinge")


def test_prior_flag_reaches_the_data_free_attacks(trained, tmp_path):
    (row,) = evaluation.run_attacks(_request(trained, tmp_path / "p", attacks=["cosine_uap"], prior="range",
                                             eps=[0.1]), log=lambda line: None)["results"]
    assert row["settings"]["prior"] == "range"
    with pytest.raises(errors.AttackError, match="--prior is read by cosine_uap and gd_uap only"):
        _request(trained, tmp_path, attacks=["sgd_uap"], prior="range")
    with pytest.raises(errors.AttackError, match="unknown prior 'noise'"):
        _request(trained, tmp_path, attacks=["gd_uap"], prior="noise")
