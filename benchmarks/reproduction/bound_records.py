"""The sweep's bound step: ``test.bound`` added to a finished record from its model's workdir.

Nothing is trained or attacked: the step restores the model's checkpoint
(``<workroot>/<dataset>/<arch>/e<epochs>/<name>/checkpoints``, the
workdir :func:`.evaluate.workdir_of` names), reads the worst-case UAP of every
suite budget (``suite/<attack>_linf_eps<eps>_seed<seed>.npy``, the attack and
seed of the record's ``test.worst_case``), and runs :func:`.bound.uap_bound`
on the record's metric inputs: the first ``test.metrics.num_inputs`` test
inputs, the set ``test.metrics`` (``sigma_max(J_X)`` among them) was computed on
(:func:`jacuap.evaluation.run_attacks`' metrics: the first ``num_metrics``
evaluation inputs, which are the first ``num_eval`` test inputs).

``test.bound`` is :func:`.bound.uap_bound`'s dict plus ``"sigma_max_record"``
(the record's own ``stacked_spectral_norm``, a cross-check) and, per budget,
``"attack"``, ``"seed"``, ``"file"`` and ``"fooling_rate_record"`` (the
record's ``changed`` bits on the same inputs).  A record that has it is left
alone (the step is idempotent); each is written atomically
(:func:`.records.save_record`) as soon as it is measured, so an interrupted
step resumes at the next record.  A record whose workdir is absent, or holds
another model (its parameters' fingerprint differs), is left alone too.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Dict, List, Sequence

import numpy as np

from benchmarks.reproduction import plan as plans, records

__all__ = ["MEASURED", "PENDING", "MISSING", "OTHER", "workdir_of_record", "holds_the_record_model", "bound_status", "plan_lines", "measure_bound",
           "add_bounds"]

MEASURED, PENDING, MISSING = "measured", "to measure", "not measured (workdir missing)"
OTHER = "not measured (workdir holds another model)"


_FIELDS = ("id", "dataset", "arch", "method", "strength", "seed", "test")


def _check_record(record: Any) -> None:
    """ValueError naming ``record`` unless it is a record dict with the fields the step reads."""
    if not isinstance(record, dict) or any(k not in record for k in _FIELDS) or not isinstance(record["test"], dict):
        raise ValueError(f"record must be a model record (a dict with {', '.join(_FIELDS)}), got "
                         f"{sorted(record) if isinstance(record, dict) else type(record).__name__}")
    if not (record.get("config") or {}).get("num_epochs") and not (record.get("train") or {}).get("num_epochs"):
        raise ValueError(f"record {record['id']} names no num_epochs (config or train): its workdir is unknown")


def workdir_of_record(workroot: str, record: Dict[str, Any]) -> str:
    """Where the sweep trained ``record``'s model: :func:`.evaluate.workdir_of` of its spec.

    >>> workdir_of_record("/w", {"id": "d/mlp/jr_0.1_s2", "dataset": "d", "arch": "mlp", "method": "jr",
    ...                          "strength": 0.1, "seed": 2, "test": {}, "config": {"num_epochs": 4}})
    '/w/d/mlp/e4/jr_0.1_s2'
    """
    from benchmarks.reproduction import evaluate

    _check_record(record)
    epochs = int((record.get("config") or {}).get("num_epochs") or record["train"]["num_epochs"])
    arch = plans.Arch(record["arch"], epochs, epochs)
    spec = plans.ModelSpec(record["dataset"], arch, record["method"], float(record["strength"]),
                           int(record["seed"]), epochs)
    return evaluate.workdir_of(workroot, spec)


def _uap_path(workdir: str, entry: Dict[str, Any]) -> str:
    """``<workdir>/suite/<attack>_linf_eps<eps>_seed<seed>.npy``: the suite's file of a worst-case entry."""
    from jacuap.evaluation import store

    return os.path.join(workdir, "suite", store.stem(entry["attack"], "linf", entry["eps"], entry["seed"]) + ".npy")


def bound_status(workroot: str, record: Dict[str, Any]) -> str:
    """:data:`MEASURED` (the record has ``test.bound``), :data:`PENDING` (its checkpoint and UAPs are there),
    or :data:`MISSING`."""
    if record["test"].get("bound"):
        return MEASURED
    workdir = workdir_of_record(workroot, record)
    have = os.path.isdir(os.path.join(workdir, "checkpoints")) and all(
        os.path.isfile(_uap_path(workdir, w)) for w in record["test"]["worst_case"])
    if have and not holds_the_record_model(workdir, record):
        return OTHER
    return PENDING if have else MISSING


def holds_the_record_model(workdir: str, record: Dict[str, Any]) -> bool:
    """False when ``workdir``'s suite run names another model than ``record``'s (its request's fingerprint),
    e.g. the same config retrained on another CPU; True when it names the record's or names none."""
    try:
        with open(os.path.join(workdir, "suite", "request.json")) as f:
            found = json.load(f).get("model_fingerprint")
    except (OSError, ValueError):
        return True
    return not found or found == record.get("params_fingerprint")


def plan_lines(workroot: str, found: Sequence[Dict[str, Any]]) -> List[str]:
    """``--plan``'s lines: the count per :func:`bound_status`, then each record not yet measured and why.

    >>> plan_lines("/nowhere", [])
    ['  bound (test.bound): 0 measured, 0 to measure, 0 not measured (workdir missing)']
    """
    status = {r["id"]: bound_status(workroot, r) for r in found}
    counts = ", ".join(f"{sum(v == s for v in status.values())} {s}" for s in (MEASURED, PENDING, MISSING, OTHER)
                       if s != OTHER or s in status.values())
    return [f"  bound (test.bound): {counts}"] + [f"    {rid}: bound: {s}" for rid, s in status.items()
                                                  if s != MEASURED]


def measure_bound(workroot: str, record: Dict[str, Any], reps: int = 2000, seed: int = 0) -> Dict[str, Any]:
    """``record``'s ``test.bound`` (see the module docstring), from its workdir; ``record`` is not changed.

    Raises:
      ValueError: the workdir holds another model than the record's (fingerprints differ), or the
        record has no metric inputs (``test.metrics.num_inputs``).
    """
    from jacuap import evaluation
    from jacuap.evaluation import restore

    from benchmarks.reproduction import bound

    workdir = workdir_of_record(workroot, record)
    test = record["test"]
    n = int((test.get("metrics") or {}).get("num_inputs") or 0)
    if n < 1:
        raise ValueError(f"{record['id']}: the record has no metric inputs (test.metrics.num_inputs)")
    _, dataset, apply_fn, params = restore(workdir)
    found = evaluation.store.model_fingerprint(params)
    if found != record.get("params_fingerprint"):
        raise ValueError(f"{record['id']}: {workdir} holds another model (fingerprint {found}, the record's "
                         f"{record.get('params_fingerprint')})")
    x = np.asarray(dataset.test_images[:n])
    worst = sorted(test["worst_case"], key=lambda w: float(w["eps"]))
    uaps = [(float(w["eps"]), evaluation.load_uap_file(_uap_path(workdir, w), x.shape[1:], "linf", float(w["eps"])))
            for w in worst]
    out = bound.uap_bound(apply_fn, params, x, uaps, "linf", reps=reps, seed=seed)
    out["sigma_max_record"] = (test.get("metrics") or {}).get("stacked_spectral_norm")
    num_eval = int(test["num_eval"])
    for row, w in zip(out["budgets"], worst):
        changed = records.unpack_bits(w["changed"], num_eval)[:n]
        row.update(attack=w["attack"], seed=int(w["seed"]), file=os.path.basename(_uap_path(workdir, w)),
                   fooling_rate_record=float(np.mean(changed)))
    return out


def _g(v: Any) -> str:
    """A number in 3 significant digits, "-" for None."""
    return "-" if v is None else f"{v:.3g}"


def add_bounds(results_dir: str, workroot: str, found: Sequence[Dict[str, Any]], reps: int = 2000,
               log: Callable[[str], None] = print) -> List[str]:
    """Adds ``test.bound`` to every record of ``found`` whose status is :data:`PENDING`; returns their ids.

    Each record is saved (atomically) as soon as its bound is measured; a model that cannot be
    measured (another model in its workdir, a UAP file that fails its checks) is logged and skipped.
    """
    done = []
    for record in found:
        if bound_status(workroot, record) != PENDING:
            continue
        try:
            value = measure_bound(workroot, record, reps=reps)
        except ValueError as exc:  # jacuap's UserErrors (a bad checkpoint or UAP file) are ValueErrors
            log(f"  {record['id']}: bound not measured ({exc})")
            continue
        record["test"]["bound"] = value
        records.save_record(results_dir, record)
        log(f"  {record['id']}: bound {'holds' if value['holds'] else 'VIOLATED'}; per eps tightness, "
            f"observed/first-order: " + ", ".join(
                f"{b['eps']:g}: {_g(b['tightness']['estimate'])}, {_g(b['observed_over_first_order']['estimate'])}"
                for b in value["budgets"]))
        done.append(record["id"])
    return done
