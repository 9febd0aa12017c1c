"""Trains one model of the sweep and measures everything its record holds.

Every measurement goes through the programs' own library calls
(:func:`jacuap.train.train_and_evaluate`, :func:`jacuap.evaluation.run_attacks`),
each resumable in its own folder under the model's workdir, so a killed
sweep loses at most the attack row in progress:

* ``validation/``: SGD-UAP at ``plan.selection_eps``, crafted on training
  inputs, evaluated on the validation split (what strengths are chosen by);
* ``suite/``: the attack suite with its targeted matrix at the worst-case
  budgets, and the Jacobian metrics, on the first ``num_eval`` test inputs;
* ``sgd_grid/``: SGD-UAP (the suite's first member, same seed and settings)
  at the grid budgets the suite does not run.

The per-input outcomes are recomputed from the saved UAPs with
:func:`jacuap.metrics.predict` and checked against the rates the attack run
reported (the same float32 arithmetic: they must agree exactly).
"""

from __future__ import annotations

import json
import os
import platform
import time
from typing import Any, Callable, Dict, List

import numpy as np

from benchmarks.reproduction import records
from benchmarks.reproduction.plan import ModelSpec, Plan


def workdir_of(workroot: str, spec: ModelSpec) -> str:
    """``<workroot>/<dataset>/<arch>/e<epochs>/<method>_<strength>_s<seed>``: the schedule's runs are the grid's."""
    name = spec.id.split("/")[-1]
    return os.path.join(workroot, spec.dataset, spec.arch.name, f"e{spec.epochs}", name)


def train(spec: ModelSpec, plan: Plan, workroot: str, data_dir: str = "") -> Dict[str, Any]:
    """Trains (or resumes, or reuses) ``spec``; returns its summary.json."""
    from jacuap.configs import default
    from jacuap.train import train_and_evaluate

    workdir = workdir_of(workroot, spec)
    path = os.path.join(workdir, "summary.json")
    if os.path.exists(path):
        with open(path) as f:
            summary = json.load(f)
        if summary.get("num_epochs") == spec.epochs and summary.get("validation_accuracy") is not None:
            return summary
    config = default.get_config()
    config.update(progress=False, data_dir=data_dir, **spec.config_overrides(plan))
    return train_and_evaluate(config, workdir)


def _cpu_model() -> str:
    """The host CPU's model name: XLA:CPU compiles for the host's instruction set, so the same training run
    gives bit-identical parameters on one machine but not across CPUs (a record's fingerprint says which)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        return platform.processor()


def _started_suite(workdir: str) -> str:
    """The suite of a suite run already started in ``workdir`` (its request.json), or "".

    A changed plan must not restart a model's attacks half-way: the request
    would differ, and a different request replaces the folder's rows.
    """
    try:
        with open(os.path.join(workdir, "suite", "request.json")) as f:
            return str(json.load(f).get("suite") or "")
    except (OSError, ValueError):
        return ""


def _request(spec: ModelSpec, plan: Plan, workdir: str, out: str, progress: bool, **kw):
    from jacuap import evaluation

    settings = dict(workdir=workdir, norm="linf", out=os.path.join(workdir, out), num_craft=plan.num_craft,
                    num_eval=plan.num_eval, num_metrics=0, progress=progress, overwrite=True)
    settings.update(kw)
    return evaluation.run_attacks(evaluation.AttackRequest(**settings), log=lambda m: None)


def _outcomes(apply_fn, params, x, y, clean_pred, out: str, row: Dict[str, Any]) -> Dict[str, Any]:
    """Per-input ``wrong``/``changed`` bits of the UAP of ``row`` (a results.json row), checked against its rates."""
    from jacuap import metrics

    v = np.load(os.path.join(out, row["file"]))
    pred = metrics.predict(apply_fn, params, np.clip(x + v, 0.0, 1.0))
    wrong, changed = pred != y, pred != clean_pred
    for name, bits in (("uer", wrong), ("fooling_rate", changed)):
        if abs(float(np.mean(bits)) - float(row[name])) > 1e-12:
            raise RuntimeError(f"{out}/{row['file']}: recomputed {name} {np.mean(bits)} != the run's {row[name]}")
    return {"eps": float(row["eps"]), "uer": float(row["uer"]), "fooling_rate": float(row["fooling_rate"]),
            "wrong": records.pack_bits(wrong), "changed": records.pack_bits(changed)}


def _worst_cases(apply_fn, params, x, y, clean_pred, suite_dir: str, res: Dict[str, Any],
                 key: str) -> List[Dict[str, Any]]:
    """The record entries of ``res[key]`` (a suite's results.json worst cases): per-input bits and rates."""
    by_file = {r["file"]: r for r in res["results"] if r.get("file")}
    return [{**_outcomes(apply_fn, params, x, y, clean_pred, suite_dir, by_file[w["file"]]),
             "attack": w["attack"], "seed": w["seed"], "craft_uer": w["craft_uer"],
             "craft_fooling_rate": w.get("craft_fooling_rate")} for w in res[key]]


def _rescore_crafting_fooling_rates(res: Dict[str, Any], dataset, apply_fn, params, suite_dir: str) -> Dict[str, Any]:
    """A suite run older than the fooling-rate choice: its rows' crafting-split fooling rates, recomputed.

    The crafting set is the run's own (:func:`jacuap.evaluation.sets.craft_and_eval_sets` of its config);
    each row's recomputed crafting UER must equal the one it recorded, or nothing is returned.
    """
    import types

    from jacuap import metrics
    from jacuap.evaluation import sets, suite

    config = res["config"]
    request = types.SimpleNamespace(seed=config["seed"], num_craft=config["num_craft"], num_eval=config["num_eval"],
                                    craft_split=config.get("craft_split", "train"),
                                    eval_split=config.get("eval_split", "test"))
    x_craft, y_craft = (np.asarray(a) for a in sets.craft_and_eval_sets(dataset, request)[:2])
    clean = metrics.predict(apply_fn, params, x_craft)
    rows = []
    for row in res["results"]:
        if row.get("universal") and row.get("file"):
            pred = metrics.predict(apply_fn, params, np.clip(x_craft + np.load(os.path.join(suite_dir, row["file"])),
                                                             0.0, 1.0))
            if float(np.mean(pred != y_craft)) != row["craft_uer"]:
                raise ValueError(f"{suite_dir}/{row['file']}: the recomputed crafting UER {np.mean(pred != y_craft)} "
                                 f"is not the run's {row['craft_uer']} (another crafting set?)")
            row = {**row, "craft_fooling_rate": float(np.mean(pred != clean))}
        rows.append(row)
    eps = [float(e) for e in config["eps"]]
    return {**res, "results": rows, "worst_case_by_fooling_rate": suite.worst_case(rows, eps, by="fooling_rate")}


def fooling_rate_worst_case(workdir: str, record: Dict[str, Any]) -> List[Dict[str, Any]]:
    """``test.worst_case_by_fooling_rate`` of a record made before it was recorded, from its model's workdir.

    Nothing is attacked: the suite's ``results.json`` names, per budget, the
    member with the highest crafting-split fooling rate, and its UAP file is
    there; a suite run older than that choice gets its rows' crafting-split
    fooling rates recomputed on its own crafting set.  Checked first: the
    checkpoint is the record's model (fingerprint), and the UER-chosen worst
    case recomputed from the same files gives the record's own per-input bits.

    Raises:
      ValueError: the workdir holds another model, or its files disagree with
        the record.
    """
    from jacuap import evaluation, metrics
    from jacuap.evaluation import restore

    suite_dir = os.path.join(workdir, "suite")
    with open(os.path.join(suite_dir, "results.json")) as f:
        res = json.load(f)
    _, dataset, apply_fn, params = restore(workdir)
    found = evaluation.store.model_fingerprint(params)
    if found != record.get("params_fingerprint"):
        raise ValueError(f"{workdir} holds another model (fingerprint {found}, the record's "
                         f"{record.get('params_fingerprint')})")
    if not res.get("worst_case_by_fooling_rate"):
        res = _rescore_crafting_fooling_rates(res, dataset, apply_fn, params, suite_dir)
    n = int(record["test"]["num_eval"])
    x, y = np.asarray(dataset.test_images[:n]), np.asarray(dataset.test_labels[:n])
    clean_pred = metrics.predict(apply_fn, params, x)
    again = _worst_cases(apply_fn, params, x, y, clean_pred, suite_dir, res, "worst_case")
    keep = lambda entries: [(round(float(w["eps"]), 6), w["attack"], int(w["seed"]), w["wrong"], w["changed"])
                            for w in entries]
    if keep(again) != keep(record["test"]["worst_case"]):
        raise ValueError(f"{suite_dir}: its UER-chosen worst case differs from the record's")
    return _worst_cases(apply_fn, params, x, y, clean_pred, suite_dir, res, "worst_case_by_fooling_rate")


def evaluate(spec: ModelSpec, plan: Plan, workroot: str, data_dir: str = "", progress: bool = False,
             log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Trains and measures ``spec``; returns its record (not yet saved)."""
    import jax

    from jacuap import evaluation, metrics
    from jacuap.evaluation import restore

    workdir = workdir_of(workroot, spec)
    start = time.time()
    summary = train(spec, plan, workroot, data_dir)
    trained = time.time()
    log(f"  {spec.id}: trained, test accuracy {summary['test_accuracy']:.4f}, "
        f"validation {summary['validation_accuracy']:.4f} ({trained - start:.0f} s)")
    val = _request(spec, plan, workdir, "validation", progress, attacks=["sgd_uap"], eps=[plan.selection_eps],
                   eval_split="validation", num_eval=plan.num_validation)
    val_row = val["results"][0]
    wc_eps = list(plan.worst_case_eps)
    suite_name = _started_suite(workdir) or plan.suite_of(spec.arch)
    res = _request(spec, plan, workdir, "suite", progress, attacks=[], suite=suite_name, targeted=True,
                   eps=wc_eps, num_metrics=plan.num_metrics)
    first = evaluation.suite.SUITES[suite_name].members[0]
    assert first.attack == "sgd_uap", "the grid's SGD-UAP rows reuse the suite's first member"
    extra_eps = [e for e in plan.sgd_eps if not any(abs(e - w) < 1e-9 for w in wc_eps)]
    grid = _request(spec, plan, workdir, "sgd_grid", progress, attacks=["sgd_uap"], eps=extra_eps,
                    sgd_epochs=dict(first.settings)["num_epochs"]) if extra_eps else {"results": []}
    log(f"  {spec.id}: attacked ({time.time() - trained:.0f} s)")

    restored, dataset, apply_fn, params = restore(workdir)
    n = res["config"]["num_eval"]
    x, y = np.asarray(dataset.test_images[:n]), np.asarray(dataset.test_labels[:n])
    clean_pred = metrics.predict(apply_fn, params, x)
    # The worst case of each budget chosen on the crafting split by UER, and separately by fooling rate
    # (the ratio of each metric is read from the worst case chosen by that metric).
    worst, worst_fr = (_worst_cases(apply_fn, params, x, y, clean_pred, os.path.join(workdir, "suite"), res, key)
                       for key in ("worst_case", "worst_case_by_fooling_rate"))
    sgd_rows = [(os.path.join(workdir, "suite"), r) for r in res["results"]
                if r["attack"] == "sgd_uap" and r["seed"] == first.seeds[0] and r.get("file")]
    sgd_rows += [(os.path.join(workdir, "sgd_grid"), r) for r in grid["results"] if r.get("file")]
    sgd = sorted((_outcomes(apply_fn, params, x, y, clean_pred, out, r) for out, r in sgd_rows),
                 key=lambda r: r["eps"])
    counts = np.bincount(y, minlength=dataset.num_classes).tolist()
    targeted = [{"eps": float(t["eps"]), "success": t["matrix"], "source_counts": counts}
                for t in res.get("targeted", [])]
    m = res["metrics"]
    return {
        "id": spec.id, "dataset": spec.dataset, "arch": spec.arch.name, "method": spec.method,
        "strength": float(spec.strength), "seed": int(spec.seed),
        "config": spec.config_overrides(plan),
        "params_fingerprint": evaluation.store.model_fingerprint(params),
        "train": {"test_accuracy": summary["test_accuracy"], "validation_accuracy": summary["validation_accuracy"],
                  "num_epochs": summary["num_epochs"], "steps": summary["steps"],
                  "seconds": summary.get("train_seconds")},
        "validation": {"eps": float(plan.selection_eps), "accuracy": summary["validation_accuracy"],
                       "sgd_uap_uer": val_row["uer"], "sgd_uap_fooling_rate": val_row["fooling_rate"],
                       "num_inputs": val["config"]["num_eval"]},
        "test": {"num_eval": int(n), "clean_correct": records.pack_bits(clean_pred == y), "worst_case": worst,
                 "worst_case_by_fooling_rate": worst_fr,
                 "sgd_uap": sgd, "targeted": targeted, "metrics": m,
                 "suite": suite_name, "num_craft": res["config"]["num_craft"]},
        "seconds": {"train": summary.get("train_seconds"), "evaluate": time.time() - trained},
        "machine": {"platform": platform.platform(), "cpu": _cpu_model(), "backend": jax.default_backend(),
                    "devices": jax.device_count()},
    }
