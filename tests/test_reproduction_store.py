"""benchmarks/reproduction/model_store.py: finished models committed beside their records, workdirs restored from them.

Two 1-epoch 8-unit digits MLPs trained where the sweep keeps them, each with a suite folder whose worst-case
UAPs are sign vectors (no attack), as the bound step's tests build theirs.
"""

import json
import os
import shutil

import numpy as np
import pytest

from benchmarks.reproduction import model_store, plan as plans, records

ARCH = plans.Arch("mlp", 1, 1)
PLAN = plans.Plan("digits", (ARCH,), ("jr",), claim_seeds=(0, 1), num_validation=0, selection_eps=0.1, num_eval=60)


def _spec(strength, seed):
    return plans.ModelSpec("digits", ARCH, "jr", strength, seed, 1)


def _suite(workdir, apply_fn, params, ds, seed):
    """``suite/``: request.json, a sign-vector UAP per budget and results.json naming them (a suite run's shape)."""
    from jacuap import metrics
    from jacuap.evaluation import store

    suite = os.path.join(workdir, "suite")
    os.makedirs(suite)
    x, y = np.asarray(ds.test_images[:PLAN.num_eval]), np.asarray(ds.test_labels[:PLAN.num_eval])
    rng = np.random.default_rng(seed)
    rows = []
    for eps in (0.1, 0.2):
        v = (eps * np.sign(rng.normal(size=ds.image_shape))).astype(np.float32)
        name = store.stem("sgd_uap", "linf", eps, 0) + ".npy"
        np.save(os.path.join(suite, name), v)
        uer = float(np.mean(metrics.predict(apply_fn, params, np.clip(x + v, 0, 1)) != y))
        rows.append({"attack": "sgd_uap", "eps": eps, "seed": 0, "uer": uer, "file": name})
    with open(os.path.join(suite, "results.json"), "w") as f:
        json.dump({"complete": True, "results": rows, "worst_case": rows, "worst_case_by_fooling_rate": rows}, f)
    with open(os.path.join(suite, "request.json"), "w") as f:
        json.dump({"model_fingerprint": store.model_fingerprint(params)}, f)
    return rows


@pytest.fixture(scope="module")
def sweep_dirs(tmp_path_factory):
    """``(workroot, out, {id: record})``: digits/mlp jr_0_s1 and jr_0.1_s0 trained, suites and records written."""
    from jacuap.evaluation import restore, store

    from benchmarks.reproduction import evaluate

    root = tmp_path_factory.mktemp("store")
    workroot, out = str(root / "work"), str(root / "results")
    made = {}
    for strength, seed in ((0.0, 1), (0.1, 0)):
        spec = _spec(strength, seed)
        evaluate.train(spec, PLAN, workroot)
        workdir = evaluate.workdir_of(workroot, spec)
        _, ds, apply_fn, params = restore(workdir)
        rows = _suite(workdir, apply_fn, params, ds, seed)
        record = {"id": spec.id, "dataset": "digits", "arch": "mlp", "method": "jr", "strength": strength,
                  "seed": seed, "config": spec.config_overrides(PLAN),
                  "params_fingerprint": store.model_fingerprint(params),
                  "train": {"num_epochs": 1}, "test": {"num_eval": PLAN.num_eval, "worst_case": rows}}
        records.save_record(out, record)
        made[spec.id] = records.load_record(out, spec.id)
    return workroot, out, made


def _workdir(workroot, rid):
    from benchmarks.reproduction import bound_records

    return bound_records.workdir_of_record(workroot, {"id": rid, "dataset": "digits", "arch": "mlp",
                                                      "method": "jr", "strength": float(rid.split("_")[1]),
                                                      "seed": int(rid[-1]), "test": {}, "config": {"num_epochs": 1}})


def _leaves(workdir):
    import jax

    from jacuap.train import checkpoints

    return [(jax.tree_util.keystr(p), np.asarray(a)) for p, a in
            jax.tree_util.tree_leaves_with_path(checkpoints.restore_model(workdir).params)]


def _files(folder):
    return {n: open(os.path.join(folder, n), "rb").read() for n in sorted(os.listdir(folder))}


def test_store_then_restore_gives_the_same_model_bit_for_bit(sweep_dirs, tmp_path):
    from jacuap.evaluation import restore, store

    from benchmarks.reproduction import bound_records

    workroot, _, made = sweep_dirs
    out = str(tmp_path / "results")
    rid = "digits/mlp/jr_0.1_s0"
    record = made[rid]
    src = _workdir(workroot, rid)
    workdir = str(tmp_path / "work" / "jr_0.1_s0")
    shutil.copytree(src, workdir)
    before, suite = _leaves(workdir), _files(os.path.join(workdir, "suite"))
    config = open(os.path.join(workdir, "config.json")).read()
    path = model_store.store(out, record, workdir)
    assert path == os.path.join(out, "digits", "weights", "mlp", "jr_0.1_s0.npz") and model_store.has_entry(out, rid)
    assert not [n for n in os.listdir(os.path.dirname(path)) if n != "jr_0.1_s0.npz"]  # no temp file left
    with np.load(path, allow_pickle=False) as z:  # plain arrays only: nothing is unpickled
        entry = {k: z[k] for k in z.files}
    assert not any(a.dtype == object for a in entry.values())
    assert str(entry["params_fingerprint"]) == record["params_fingerprint"] and str(entry["id"]) == rid
    assert {k for k in entry if k.startswith("params/")} == {"params/" + k for k, _ in before}
    assert not any("opt_state" in k for k in entry)  # no optimizer state
    assert sorted(k for k in entry if k.startswith("suite/")) == [f"suite/{n}" for n in sorted(suite)]

    shutil.rmtree(workdir)
    assert model_store.restore_workdir(out, record, workdir) is True
    after = _leaves(workdir)
    assert [k for k, _ in after] == [k for k, _ in before]
    for (k, a), (_, b) in zip(after, before):
        assert a.dtype == b.dtype == np.float32 and a.shape == b.shape and a.tobytes() == b.tobytes(), k
    assert _files(os.path.join(workdir, "suite")) == suite
    assert open(os.path.join(workdir, "config.json")).read() == config
    assert not [n for n in os.listdir(os.path.dirname(workdir)) if n.startswith(".")]  # the temp folder is gone
    # What the sweep's steps read works on it unchanged.
    _, _, _, params = restore(workdir)
    assert store.model_fingerprint(params) == record["params_fingerprint"]
    assert bound_records.holds_the_record_model(workdir, record)
    # A workdir holding a checkpoint is never overwritten.
    with pytest.raises(ValueError, match="holds a checkpoint already"):
        model_store.restore_workdir(out, record, workdir)


def test_another_model_is_refused_naming_its_fingerprint(sweep_dirs, tmp_path):
    workroot, out, made = sweep_dirs
    record = made["digits/mlp/jr_0.1_s0"]
    other = dict(record, params_fingerprint="sha256:0123456789abcdef")
    workdir = _workdir(workroot, record["id"])
    with pytest.raises(ValueError, match="holds another model .*sha256:0123456789abcdef"):
        model_store.store(str(tmp_path), other, workdir)
    assert not model_store.has_entry(str(tmp_path), record["id"])
    model_store.store(str(tmp_path), record, workdir)
    target = str(tmp_path / "restored")
    with pytest.raises(ValueError, match="holds another model .*sha256:0123456789abcdef"):
        model_store.restore_workdir(str(tmp_path), other, target)
    assert not os.path.exists(target)


def test_a_missing_entry_returns_false_and_a_corrupt_one_raises(sweep_dirs, tmp_path):
    workroot, _, made = sweep_dirs
    record = made["digits/mlp/jr_0.1_s0"]
    out, target = str(tmp_path / "results"), str(tmp_path / "restored")
    assert model_store.restore_workdir(out, record, target) is False and not os.path.exists(target)
    path = model_store.store(out, record, _workdir(workroot, record["id"]))
    data = open(path, "rb").read()
    with open(path, "wb") as f:  # a flipped byte in the middle: a member's CRC fails
        f.write(data[:len(data) // 2] + bytes([data[len(data) // 2] ^ 0xFF]) + data[len(data) // 2 + 1:])
    with pytest.raises(ValueError, match="not a readable model store entry"):
        model_store.restore_workdir(out, record, target)
    assert not os.path.exists(target) or not model_store.has_checkpoint(target)


def test_transfer_uses_the_lowest_seed_restorable_from_the_store(sweep_dirs, tmp_path, capsys):
    """Seed 0 of lambda 0 is gone (no workdir, no entry); seed 1's workdir is gone but stored: the transfer
    matrix restores it and uses it, and its diagonal is each model's own worst-case UER."""
    from benchmarks import reproduce

    workroot, out, made = sweep_dirs
    work, results = str(tmp_path / "work"), str(tmp_path / "results")
    shutil.copytree(workroot, work)
    shutil.copytree(out, results)
    lam0 = "digits/mlp/jr_0_s1"
    model_store.store(results, made[lam0], _workdir(work, lam0))
    shutil.rmtree(_workdir(work, lam0))
    sweep = reproduce.Sweep(PLAN, results, work, "", None)
    sweep.describe([ARCH], ["jr"])
    assert "weights stored: 1 of 2 records" in capsys.readouterr().out
    sweep.transfer(ARCH, 1, {"jr": 0.1})
    entry = json.load(open(os.path.join(results, "digits", "transfer.json")))["mlp"]
    ids = [lam0, "digits/mlp/jr_0.1_s0"]
    assert entry["models"] == ids
    assert model_store.has_checkpoint(_workdir(work, lam0))
    for rid in ids:
        own = next(w for w in made[rid]["test"]["worst_case"] if w["eps"] == 0.1)
        assert entry["uer"][rid][rid] == pytest.approx(own["uer"], abs=1e-12)
        assert set(entry["uer"][rid]) == set(ids)
    # No model of a group here or stored: seed 0, and its pairs are left out.
    shutil.rmtree(_workdir(work, lam0))
    os.unlink(model_store.weights_path(results, lam0))
    os.unlink(os.path.join(results, "digits", "transfer.json"))
    sweep.transfer(ARCH, 1, {"jr": 0.1})
    entry = json.load(open(os.path.join(results, "digits", "transfer.json")))["mlp"]
    assert entry["models"] == ["digits/mlp/jr_0_s0", "digits/mlp/jr_0.1_s0"]
    assert entry["uer"] == {"digits/mlp/jr_0.1_s0": {"digits/mlp/jr_0.1_s0": pytest.approx(
        next(w for w in made["digits/mlp/jr_0.1_s0"]["test"]["worst_case"] if w["eps"] == 0.1)["uer"], abs=1e-12)}}


def test_the_sweep_stores_what_is_here_and_replaces_another_models_entry(sweep_dirs, tmp_path, capsys):
    """Sweep.store_models: each record whose workdir is here gets its entry; an entry left by a record since
    replaced (another fingerprint) is replaced; a record without a workdir here is skipped."""
    from benchmarks import reproduce

    workroot, out, made = sweep_dirs
    results = str(tmp_path / "results")
    shutil.copytree(out, results)
    ids = sorted(made)
    gone = dict(made["digits/mlp/jr_0_s1"], id="digits/mlp/jr_0_s0", seed=0)  # trained elsewhere: no workdir here
    stale = model_store.weights_path(results, ids[0])
    os.makedirs(os.path.dirname(stale))
    shutil.copy(model_store.store(str(tmp_path / "other"), made[ids[1]], _workdir(workroot, ids[1])), stale)
    assert model_store.has_entry(results, ids[0]) and not model_store.holds(results, made[ids[0]])
    sweep = reproduce.Sweep(PLAN, results, workroot, "", None)
    assert sweep.store_models([made[i] for i in ids] + [gone]) == ids
    assert all(model_store.holds(results, made[i]) for i in ids) and not model_store.has_entry(results, gone["id"])
    assert sweep.store_models([made[i] for i in ids]) == []  # idempotent
    assert "weights stored" in capsys.readouterr().out


def test_doctests():
    import doctest

    failed, attempted = doctest.testmod(model_store)
    assert attempted > 0 and failed == 0

