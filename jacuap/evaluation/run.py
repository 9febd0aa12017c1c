"""The attack job of ``attack.py``: craft perturbations on one split, evaluate them on another, record.

What ``attack.py``, ``benchmarks/reproduce.py`` and the notebook share.  For
each attack and budget of an :class:`AttackRequest`, a perturbation is
crafted on ``num_craft`` inputs of the crafting split and evaluated on
``num_eval`` test inputs, disjoint from them:

* universal attacks (``spec.universal`` in :data:`jacuap.attacks.ATTACKS`: ``sgd_uap``,
  ``sv_uap``, ``deepfool_uap``) give ONE ``v``; ``uer`` is the universal
  evasion rate ``P[argmax f(clip(x + v, 0, 1)) != y]`` and ``fooling_rate``
  ``P[argmax f(clip(x + v, 0, 1)) != argmax f(x)]``;
* per-input attacks (``pgd``, ``fgsm``) perturb each evaluation input on its
  own; ``uer`` is then their evasion rate, the per-input reference.

The run is resumable and all-or-nothing (:mod:`jacuap.evaluation.store`): each
row, and its UAP, is written through :mod:`jacuap.io` as soon as it is
finished, under a name unique per (attack, norm, eps, seed); ``results.json``
last, ``"complete": true``.  A rerun of the same request reuses the finished
rows; another request in the same folder is refused unless ``overwrite``.  One
process at a time uses a folder (:func:`jacuap.io.exclusive_lock`).  Every
local device is used: the model is :func:`jacuap.parallel.batch_sharded_apply`-wrapped
and its parameters replicated, so each batch of every attack and metric is
split over the devices.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from typing import Any, Callable, Dict, List, Optional

import jax
import numpy as np

from jacuap import attacks, io, metrics, parallel
from jacuap.errors import AttackError
from jacuap.evaluation import outputs, store, suite, targeted, tensorboard
from jacuap.evaluation.crafting import craft, load_uap_file, per_input_predictions
from jacuap.evaluation.request import AttackRequest
from jacuap.evaluation.restoring import AttackedModel, restore, restore_torch
from jacuap.evaluation.sets import Sets, craft_and_eval_sets

__all__ = ["run_attacks"]


def run_attacks(request: AttackRequest, log: Optional[Callable[[str], None]] = None) -> Dict[str, Any]:
    """Runs every (attack, eps) of ``request``, resuming a killed run; writes ``request.out``; returns the results.

    The dict (also ``out/results.json``, written last) has ``complete``
    (true), ``config`` (what was run: the model as the checkpoint describes
    it, the set sizes actually used next to the requested ones), ``results``
    (one row per (attack, eps): ``uer``, ``fooling_rate``,
    ``clean_accuracy``, ``perturbation_norm``, ``seconds``, the ``.npy``
    ``file`` of a UAP) and ``metrics`` (:func:`jacuap.metrics.jacobian_metrics`
    on the first ``num_metrics`` evaluation inputs).  A value that is not a
    number (NaN) is written as null with a ``<key>_note`` saying why.

    The output folder's layout and the resume rule are :mod:`jacuap.evaluation.store`'s.
    ``log`` (default: a line on stderr) hears that a set size was capped and
    how many finished rows are reused.  Raises AttackError, CheckpointError or
    ConfigError (one line) before writing anything for a bad request, output
    folder or workdir; BusyError when another process uses ``out``; OSError
    for a failed write (:func:`output_failure` words it).
    """
    log = log or _stderr_line
    store.check_out_path(request.out)
    model = restore_torch(request.torch) if request.torch else restore(request.workdir)  # the model evaluated
    crafter = model  # the model the UAPs are crafted on: another one for transfer
    if request.source_workdir:
        crafter = restore(request.source_workdir)
        if tuple(crafter.dataset.image_shape) != tuple(model.dataset.image_shape):
            raise AttackError(f"--source_workdir {request.source_workdir} takes inputs "
                              f"{list(crafter.dataset.image_shape)}, --workdir {request.workdir or request.model_source()} "
                              f"{list(model.dataset.image_shape)}; transfer needs one shape")
    restored, dataset = model.restored, model.dataset
    sets = Sets(*craft_and_eval_sets(crafter.dataset, request)[:2], *craft_and_eval_sets(dataset, request)[2:])
    x_craft, y_craft, x_eval, y_eval = sets
    given = None
    layers = crafter.layers(x_craft[:1])
    _check_layers(request, crafter, sets, layers)
    if request.uap_file:
        given = load_uap_file(request.uap_file, dataset.image_shape, request.norm, request.eps[0])
    capped = [f"{name} {asked} capped at {got}" for name, asked, got in (
        ("num_craft", request.num_craft, len(x_craft)), ("num_eval", request.num_eval, len(x_eval))) if got < asked]
    if capped:
        log(f"note: {'; '.join(capped)}, what the {dataset.name} splits hold (craft_split={request.craft_split})")
    fingerprint = store.model_fingerprint(restored.params)
    spec = restored.meta["model_spec"]
    record = store.request_record(request, restored.step, fingerprint, dataset.name)
    source = {"source_workdir": os.path.abspath(request.source_workdir) if request.source_workdir
              else request.model_source(),
              "source_model_fingerprint": store.model_fingerprint(crafter.restored.params)}
    if given is not None:
        record["uap_file_sha256"] = hashlib.sha256(given.tobytes()).hexdigest()[:16]
    if request.source_workdir:
        record["source_model_fingerprint"] = source["source_model_fingerprint"]
    class_names = list(getattr(dataset, "class_names", None) or range(int(spec.get("num_classes", 0) or 0)))
    os.makedirs(request.out, exist_ok=True)
    with io.exclusive_lock(request.out):
        store.claim(request.out, record, request.overwrite)
        key = jax.random.PRNGKey(request.seed)
        rows, uaps, computed = _attack_rows(request, model, crafter, sets, source, layers, given, log)
        targeted_epochs = suite.SUITES[request.suite].targeted_epochs if request.suite else 0
        matrices = []
        if request.targeted or targeted_epochs:
            matrices = targeted.targeted_rows(request, model, crafter, sets, class_names,
                                              targeted_epochs or request.sgd_epochs, source)
        metric_values = _metrics(request, model, sets, key)
        figure = os.path.join(request.out, store.FIGURE_NAME)
        if uaps and parallel.any_process(computed or not os.path.exists(figure)):
            pool = min(len(x_eval), 256)  # the inputs each row's fooled examples are picked from
            outputs.plot_uaps(uaps, model.apply_fn, model.params, x_eval[:pool], figure, y=y_eval[:pool],
                              class_names=class_names,
                              note=f"inputs: fooled ones first among the first {pool} {request.eval_split} inputs")
        stems = [r["file"][:-4] for r in rows if r.get("file")]
        if parallel.any_process(computed or any(not os.path.exists(os.path.join(request.out, f"{t}.png"))
                                                for t in stems)):
            outputs.save_uap_images({t: np.load(os.path.join(request.out, f"{t}.npy")) for t in stems}, request.out)
        extra = {}
        if request.suite:
            extra["suite"] = suite.suite_record(request.suite, len(x_craft), len(class_names))
        if request.targeted or targeted_epochs:
            extra["targeted"] = matrices
        results = store.finite_or_null({
            "complete": True,
            "config": _config(request, model, sets, fingerprint, source, class_names),
            "results": rows,
            **{key: suite.worst_case(rows, request.eps, by) for by, key in suite.WORST_CASE_BY.items()},
            **extra,
            "metrics": metric_values,
        })
        store.write_results(request.out, results)
        tensorboard.log_attack_results(results, request.out, uaps)  # out/tensorboard: scalars, table, UAPs
    return results


def _metrics(request: AttackRequest, model: AttackedModel, sets: Sets, key: jax.Array) -> Dict[str, Any]:
    """The Jacobian metrics on the first ``num_metrics`` evaluation inputs: computed once, then read back."""
    values = store.load_metrics(request.out)
    if parallel.any_process(values is None):
        values = {}
        if request.num_metrics:
            n = min(request.num_metrics, len(sets.x_eval))
            values = metrics.jacobian_metrics(model.apply_fn, model.params, sets.x_eval[:n], sets.y_eval[:n], key,
                                              num_pairs_inputs=min(200, n))
            values["num_inputs"] = n
        values = store.save_metrics(request.out, values)
    return values


def _config(request: AttackRequest, model: AttackedModel, sets: Sets, fingerprint: str, source: Dict[str, Any],
            class_names: List[Any]) -> Dict[str, Any]:
    """``results.json["config"]``: what was run, the model as its checkpoint describes it, the set sizes used."""
    restored, trained = model.restored, model.restored.meta.get("fingerprint") or {}
    return {
        "workdir": request.model_source(),
        "dataset": trained.get("dataset", model.dataset.name),
        "model": restored.meta["model_spec"]["name"],
        "jr_lambda": _jr_lambda(trained.get("jr_lambda", restored.config.get("jr_lambda", 0.0))),
        "checkpoint_step": restored.step,
        "model_fingerprint": fingerprint,
        "attacks": list(request.attacks),
        "norm": request.norm,
        "eps": list(request.eps),
        "num_craft": len(sets.x_craft),
        "num_eval": len(sets.x_eval),
        "num_craft_requested": request.num_craft,
        "num_eval_requested": request.num_eval,
        "craft_split": request.craft_split,
        "eval_split": request.eval_split,
        # Only the request's settings that some attack read (a suite fixes its members': see each row's "settings").
        **{f: getattr(request, f) if f in _request_fields_read(request) else None
           for f in ("sgd_epochs", "deepfool_passes")},
        "seed": request.seed,
        "suite": request.suite or None,
        "layer": request.layer or None,
        "loss": request.loss or None,
        "prior": request.prior or None,
        "uap_file": os.path.abspath(request.uap_file) if request.uap_file else None,
        **source,
        "class_names": [str(c) for c in class_names],
    }


def _jr_lambda(value: Any) -> Optional[float]:
    return None if value is None else float(value)  # None: a PyTorch model, trained elsewhere


def _request_fields_read(request: AttackRequest) -> set:
    """The request fields (``sgd_epochs``, ...) that the attacks it ran read through their ``request_settings``."""
    if request.suite:
        return set()
    return {field for name in request.attacks for field in attacks.ATTACKS[name].request_settings.values()}


def _check_layers(request: AttackRequest, crafter: AttackedModel, sets: Sets, layers: attacks.Layers) -> None:
    """AttackError (one line), before any work, unless every layer attack of the request finds its layers."""
    for name, _, _, settings in _tasks(request):
        attack = settings.get("attack", name)
        spec = attacks.ATTACKS.get(attack)
        if spec is None or not spec.layers:
            continue
        member = {k: v for k, v in settings.items() if k != "attack"}
        probe = attacks.Crafting(crafter.apply_fn, crafter.params, sets.x_craft[:1], None, request.eps[0],
                                 request.norm, jax.random.PRNGKey(0), spec.resolve(member, request), layers=layers)
        try:
            layers.features(probe.layer_names(attack, "penultimate" if spec.layers == "one" else "hidden"))
        except attacks.LayerError as exc:
            raise AttackError(str(exc)) from None


def _stderr_line(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _tasks(request) -> List[tuple]:
    """``(attack, eps, row seed, settings)`` of every row, attack-major (a suite's members, or ``attacks``)."""
    if request.uap_file:
        return [("uap_file", request.eps[0], request.seed, {})]
    if request.suite:
        return [(a, e, s, st) for a, s, st in suite.suite_tasks(request.suite, request.seed) for e in request.eps]
    return [(a, e, request.seed, {}) for a in request.attacks for e in request.eps]


def _attack_rows(request: AttackRequest, model: AttackedModel, crafter: AttackedModel, sets: Sets,
                 source: Dict[str, Any], layers: attacks.Layers, given: Optional[np.ndarray], log):
    """``(rows, uaps, computed)``: one row per task, reused when finished, else computed and saved.

    ``model`` is evaluated, ``crafter`` crafts (the same one unless
    transfer); ``layers`` are the crafter's; ``given`` is ``--uap_file``'s.  Task ``i`` with row
    seed ``s`` is keyed by ``fold_in(PRNGKey(s), i)``; SV-UAP's singular
    vector (shared by its budgets) by its first task's key, so a resumed run
    computes what an uninterrupted one does.  A universal row is finished
    when it has its crafting-split UER (``craft_uer``).
    """
    from tqdm.auto import tqdm

    apply_fn, params = model.apply_fn, model.params
    x_craft, y_craft, x_eval, y_eval = sets
    tasks = _tasks(request)
    names = [store.stem(a, request.norm, e, s) for a, e, s, _ in tasks]
    done = {}
    for (name, eps, seed, _), stem in zip(tasks, names):
        row = store.load_row(request.out, stem, {"attack": name, "norm": request.norm, "eps": eps,
                                                        "seed": seed})
        if row is not None and row.get("universal") and "craft_uer" not in row:
            row = None  # written before rows had their crafting-split UER
        if not parallel.any_process(row is None):  # every process reuses it, or every one computes it
            done[stem] = row
    if done:
        log(f"reusing {len(done)} finished rows of {len(tasks)} in {request.out}")
    if len(done) < len(tasks):
        store.remove_results(request.out)  # it would describe rows that are about to change
    clean_pred = metrics.predict(apply_fn, params, x_eval)
    clean_accuracy = float(np.mean(clean_pred == y_eval))
    rows: List[Dict[str, Any]] = []
    uaps: Dict[str, np.ndarray] = {}
    caches: Dict[Any, Dict[str, Any]] = {}
    craft_clean = None  # the crafting model's predictions on the crafting set, once a row needs them
    first = {}
    for i, (name, _, seed, _) in enumerate(tasks):
        first.setdefault((name, seed), i)
    bar = tqdm(list(zip(tasks, names)), desc="attacks", disable=not request.progress, dynamic_ncols=True)
    for i, ((name, eps, seed, settings), stem) in enumerate(bar):
        attack = settings.get("attack", name)  # a suite member may label a variant ("sgd_uap_margin")
        universal = name == "uap_file" or attacks.ATTACKS[attack].universal
        label = f"{name} eps={eps:g}" + (f" seed={seed}" if request.suite else "")
        row = done.get(stem)
        if row is not None:
            rows.append(row)
            if row.get("file"):
                uaps[label] = np.load(os.path.join(request.out, row["file"]))
            continue
        bar.set_postfix_str(label)
        task_key = jax.random.fold_in(jax.random.PRNGKey(seed), first[(name, seed)] if name == "sv_uap" else i)
        start = time.time()
        v, extra = None, {}
        if universal:
            progress = (lambda message: bar.set_postfix_str(f"{label} {message}")) if request.progress else None
            if name == "uap_file":
                v = given
                extra["uap_file"] = os.path.abspath(request.uap_file)
            else:
                member = {k: v for k, v in settings.items() if k != "attack"}
                v, report, used = craft(attack, crafter.apply_fn, crafter.params, x_craft, y_craft, eps, request,
                                        task_key, progress, caches.setdefault((attack, seed), {}), member, layers)
                extra.update(report)
            pred = metrics.predict(apply_fn, params, np.clip(x_eval + v, 0.0, 1.0))
            craft_pred = metrics.predict(crafter.apply_fn, crafter.params, np.clip(x_craft + v, 0.0, 1.0))
            uaps[label] = v
            norm_of_v = float(np.max(np.abs(v)) if request.norm == "linf" else np.linalg.norm(v))
            if craft_clean is None:
                craft_clean = metrics.predict(crafter.apply_fn, crafter.params, x_craft)
            extra.update({"craft_uer": float(np.mean(craft_pred != y_craft)),
                          "craft_fooling_rate": float(np.mean(craft_pred != craft_clean)), **source,
                          "num_craft": len(x_craft), "craft_split": request.craft_split})
            if name != "uap_file":
                extra["settings"] = {k: v for k, v in used.items() if v is not None}
                if attack != name:
                    extra["attack_variant_of"] = attack
        else:
            pred = per_input_predictions(name, apply_fn, params, x_eval, y_eval, eps, request.norm, task_key)
            norm_of_v = None
        row = {
            "attack": name,
            "norm": request.norm,
            "eps": eps,
            "seed": seed,
            "universal": universal,
            "uer": float(np.mean(pred != y_eval)),
            "fooling_rate": float(np.mean(pred != clean_pred)),
            "clean_accuracy": clean_accuracy,
            "perturbation_norm": norm_of_v,
            "seconds": time.time() - start,
            "file": f"{stem}.npy" if universal else None,
            **extra,
        }
        store.save_row(request.out, stem, row, v)
        rows.append(store.finite_or_null(row))
    bar.close()
    return rows, uaps, len(tasks) - len(done)
