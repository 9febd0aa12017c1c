"""The attack job of ``attack.py``: craft perturbations on one split, evaluate them on another, record.

What ``attack.py``, ``benchmarks/reproduce.py`` and the notebook share.  For
each attack and budget of an :class:`AttackRequest`, a perturbation is
crafted on ``num_craft`` inputs of the crafting split and evaluated on
``num_eval`` test inputs, disjoint from them:

* universal attacks (``jacuap.attacks.UNIVERSAL_ATTACKS``: ``sgd_uap``,
  ``sv_uap``, ``deepfool_uap``) give ONE ``v``; ``uer`` is the universal
  evasion rate ``P[argmax f(clip(x + v, 0, 1)) != y]`` and ``fooling_rate``
  ``P[argmax f(clip(x + v, 0, 1)) != argmax f(x)]``;
* per-input attacks (``pgd``, ``fgsm``) perturb each evaluation input on its
  own; ``uer`` is then their evasion rate, the per-input reference.

The run is resumable and all-or-nothing (:mod:`jacuap.attack_store`): each
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

import dataclasses
import hashlib
import math
import os
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import jax
import numpy as np

from jacuap import attack_store, attacks, io, metrics, models, parallel, suite
from jacuap.attack_setup import craft, craft_and_eval_sets, per_input_predictions, restore
from jacuap.attack_store import output_failure, output_files, plot_uaps, print_results
from jacuap.errors import AttackError

__all__ = ["AttackRequest", "craft_and_eval_sets", "craft", "run_attacks", "plot_uaps", "print_results",
           "output_files", "output_failure", "attack_names", "import_attack_modules"]


def attack_names() -> tuple:
    """What ``--attack`` accepts: every registered attack (:data:`jacuap.attacks.ATTACKS`), universal first."""
    return attacks.universal_names() + attacks.per_input_names()


def import_attack_modules(names: Sequence[str]) -> None:
    """Imports each module of ``names`` (``pkg.mod``), whose ``register(AttackSpec(...))`` lines add attacks.

    AttackError (one line) when a module cannot be imported; the folder a
    run starts in is searched first, as ``python -m`` does.
    """
    import importlib

    if names and "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    for name in (n.strip() for n in names if n.strip()):
        try:
            importlib.import_module(name)
        except Exception as exc:  # ImportError, or the module's own error (a bad AttackSpec) while importing
            raise AttackError(f"--attack_modules: cannot import {name!r} ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''})") from None


def _reads_layers(request) -> bool:
    names = [a for a, _, _ in suite.suite_tasks(request.suite, 0)] if request.suite else request.attacks
    return any(attacks.ATTACKS[a].layers for a in names if a in attacks.ATTACKS)


@dataclasses.dataclass(frozen=True)
class AttackRequest:
    """Everything one attack run needs; validated on construction (``AttackError``, one line).

    ``attacks`` are names of ``jacuap.attacks.ATTACKS``, ``norm`` one of
    ``jacuap.attacks.NORMS``, ``eps`` the budgets in pixel units (l_inf
    ``eps`` in ``[0, 1]``), rounded to 6 significant digits (two budgets equal
    then are refused); ``out`` is the output folder; ``overwrite`` lets a run
    replace the outputs of another request there.

    >>> AttackRequest(workdir="w", attacks=["sgd_uap"], norm="linf", eps=[0.1], out="o").num_craft
    5000
    >>> AttackRequest(workdir="w", attacks=["carlini"], norm="linf", eps=[0.1], out="o")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    jacuap.errors.AttackError: unknown attack carlini; choose from sgd_uap, sga_uap, sgd_uap_restarts, deepfool_uap, ...
    >>> AttackRequest(workdir="w", attacks=["sgd_uap"], norm="linf", eps=[0.1, 0.1000001], out="o")
    Traceback (most recent call last):
    jacuap.errors.AttackError: eps 0.1 is given twice (budgets are compared to 6 significant digits)
    """

    workdir: str
    attacks: Sequence[str]
    norm: str
    eps: Sequence[float]
    out: str
    num_craft: int = 5000
    num_eval: int = 10000
    craft_split: str = "train"
    eval_split: str = "test"  # "validation": the held-out training inputs of a model trained with num_validation
    num_metrics: int = 500
    sgd_epochs: int = 5
    deepfool_passes: int = 5
    seed: int = 0
    progress: bool = True
    overwrite: bool = False
    suite: str = ""  # a name of jacuap.suite.SUITES: its members replace `attacks` (which must be empty)
    targeted: bool = False  # also the K x K targeted matrix per budget (on with a suite that has one)
    layer: str = ""  # the submodule layer_max ascends
    source_workdir: str = ""  # craft on this workdir's model and crafting split (transfer); "" = workdir
    uap_file: str = ""  # evaluate this .npy perturbation (no attack)

    def __post_init__(self):
        unknown = [a for a in self.attacks if a not in attacks.ATTACKS]
        if unknown or not (self.attacks or self.suite or self.uap_file):
            raise AttackError(f"unknown attack {', '.join(unknown) or '(none)'}; "
                              f"choose from {', '.join(attack_names())}")
        if self.suite and self.suite not in suite.SUITES:
            raise AttackError(f"unknown suite {self.suite!r}; choose from {', '.join(suite.SUITES)}")
        if self.suite and self.attacks:
            raise AttackError("--suite and --attack are exclusive (a suite fixes its attacks); drop one")
        if self.uap_file and (self.attacks or self.suite or self.targeted):
            raise AttackError("--uap_file evaluates the given perturbation only; drop --attack/--suite/--targeted")
        if self.uap_file and len(self.eps) != 1:
            raise AttackError("--uap_file takes one --eps, the budget the perturbation is checked against")
        if self.layer and not _reads_layers(self):
            layered = [n for n, a in attacks.ATTACKS.items() if a.layers]
            raise AttackError(f"--layer is read by the attacks on hidden layers only ({', '.join(layered)}); "
                              f"drop it or add one of them")
        if self.norm not in attacks.NORMS:
            raise AttackError(f"unknown norm {self.norm!r}; choose {' or '.join(attacks.NORMS)}")
        for name in self.attacks:
            if self.norm not in attacks.ATTACKS[name].norms:
                raise AttackError(f"{name} supports {', '.join(attacks.ATTACKS[name].norms)}, not --norm={self.norm}")
        if not self.eps:
            raise AttackError("give at least one eps")
        for e in self.eps:
            if not math.isfinite(e) or e < 0:
                raise AttackError(f"eps must be a finite number >= 0, got {e}")
            if self.norm == "linf" and e > 1:
                raise AttackError(f"linf eps must be in [0, 1] (pixel units), got {e}")
        eps = [attack_store.canonical_eps(e) for e in self.eps]
        for twice in (e for i, e in enumerate(eps) if e in eps[:i]):
            raise AttackError(f"eps {twice:g} is given twice (budgets are compared to 6 significant digits)")
        for twice in (a for i, a in enumerate(self.attacks) if a in self.attacks[:i]):
            raise AttackError(f"attack {twice} is given twice")
        object.__setattr__(self, "eps", eps)
        object.__setattr__(self, "attacks", list(self.attacks))
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or not 0 <= self.seed < 2**63:
            raise AttackError(f"seed must be an integer >= 0, got {self.seed}")
        for name in ("num_craft", "num_eval", "sgd_epochs", "deepfool_passes"):
            if getattr(self, name) <= 0:
                raise AttackError(f"{name} must be positive, got {getattr(self, name)}")
        if self.num_metrics < 0:
            raise AttackError(f"num_metrics must be >= 0, got {self.num_metrics}")
        if self.craft_split not in ("train", "test"):
            raise AttackError(f"craft_split must be train or test, got {self.craft_split!r}")
        if self.eval_split not in ("test", "validation"):
            raise AttackError(f"eval_split must be test or validation, got {self.eval_split!r}")
        if self.eval_split == "validation" and self.craft_split != "train":
            raise AttackError("eval_split=validation crafts on the training split; drop craft_split=test")

    @classmethod
    def from_flags(cls, flags, attack_given: bool = True) -> "AttackRequest":
        """The request of ``attack.py``'s flags (``--eps`` a comma list of numbers).

        ``attack_given`` says ``--attack`` was on the command line: without it,
        ``--suite`` and ``--uap_file`` replace the default attacks.
        """
        extra = {k: getattr(flags, k, d) or d for k, d in (("suite", ""), ("targeted", False), ("layer", ""),
                                                            ("source_workdir", ""), ("uap_file", ""))}
        try:
            eps = [float(e) for e in flags.eps]
        except ValueError:
            raise AttackError(f"eps must be a comma list of numbers, got {','.join(flags.eps)!r}") from None
        return cls(
            workdir=flags.workdir,
            attacks=[a.strip() for a in flags.attack if a.strip()]
            if attack_given or not (extra["suite"] or extra["uap_file"]) else [],
            norm=flags.norm,
            eps=eps,
            out=flags.out or os.path.join(flags.workdir, "attack"),
            num_craft=flags.num_craft,
            num_eval=flags.num_eval,
            craft_split=flags.craft_split,
            eval_split=getattr(flags, "eval_split", "test") or "test",
            num_metrics=flags.num_metrics,
            sgd_epochs=flags.sgd_epochs,
            deepfool_passes=flags.deepfool_passes,
            seed=flags.seed,
            progress=flags.progress,
            overwrite=bool(getattr(flags, "overwrite", False)),
            **extra,
        )


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

    The output folder's layout and the resume rule are :mod:`jacuap.attack_store`'s.
    ``log`` (default: a line on stderr) hears that a set size was capped and
    how many finished rows are reused.  Raises AttackError, CheckpointError or
    ConfigError (one line) before writing anything for a bad request, output
    folder or workdir; BusyError when another process uses ``out``; OSError
    for a failed write (:func:`output_failure` words it).
    """
    log = log or _stderr_line
    attack_store.check_out_path(request.out)
    restored, dataset, apply_fn, params = restore(request.workdir)
    src = (restored, dataset, apply_fn, params)
    if request.source_workdir:
        src = restore(request.source_workdir)
        if tuple(src[1].image_shape) != tuple(dataset.image_shape):
            raise AttackError(f"--source_workdir {request.source_workdir} takes inputs {list(src[1].image_shape)}, "
                              f"--workdir {request.workdir} {list(dataset.image_shape)}; transfer needs one shape")
    x_craft, y_craft = craft_and_eval_sets(src[1], request)[:2]
    x_eval, y_eval = craft_and_eval_sets(dataset, request)[2:]
    given = None
    crafter_model, crafter_params = src[0].model, src[0].params
    layers = attacks.Layers(lambda: models.layer_names(crafter_model, crafter_params, x_craft[:1]),
                            lambda names: models.layers_features_fn(crafter_model, names))
    if request.layer:
        known = layers.names()
        for name in (n.strip().strip("/") for n in request.layer.split(",") if n.strip()):
            if name not in known:
                raise AttackError(f"no layer {name!r} in the model; choose from {', '.join(known)}")
    if request.uap_file:
        given = suite.load_uap_file(request.uap_file, dataset.image_shape, request.norm, request.eps[0])
    capped = [f"{name} {asked} capped at {got}" for name, asked, got in (
        ("num_craft", request.num_craft, len(x_craft)), ("num_eval", request.num_eval, len(x_eval))) if got < asked]
    if capped:
        log(f"note: {'; '.join(capped)}, what the {dataset.name} splits hold (craft_split={request.craft_split})")
    fingerprint = attack_store.model_fingerprint(restored.params)
    spec, trained = restored.meta["model_spec"], restored.meta.get("fingerprint") or {}
    record = attack_store.request_record(request, restored.step, fingerprint, dataset.name)
    source = {"source_workdir": os.path.abspath(request.source_workdir or request.workdir),
              "source_model_fingerprint": attack_store.model_fingerprint(src[0].params)}
    if given is not None:
        record["uap_file_sha256"] = hashlib.sha256(given.tobytes()).hexdigest()[:16]
    record.update({k: v for k, v in (("suite", request.suite), ("targeted", request.targeted), ("layer", request.layer),
                                     ("eval_split", request.eval_split != "test" and request.eval_split),
                                     ("source_model_fingerprint", request.source_workdir and
                                      source["source_model_fingerprint"])) if v})
    class_names = list(getattr(dataset, "class_names", None) or range(int(spec.get("num_classes", 0) or 0)))
    os.makedirs(request.out, exist_ok=True)
    with io.exclusive_lock(request.out):
        attack_store.claim(request.out, record, request.overwrite)
        key = jax.random.PRNGKey(request.seed)
        sets = (x_craft, y_craft, x_eval, y_eval)
        rows, uaps, computed = _attack_rows(request, (apply_fn, params), src[2:], sets, source,
                                            dict(layers=layers, given=given), log)
        targeted_epochs = suite.SUITES[request.suite].targeted_epochs if request.suite else 0
        targeted = []
        if request.targeted or targeted_epochs:
            targeted = suite.targeted_rows(request, (apply_fn, params), src[2:], sets, class_names,
                                           targeted_epochs or request.sgd_epochs, source)
        metric_values = attack_store.load_metrics(request.out)
        if parallel.any_process(metric_values is None):
            metric_values = {}
            if request.num_metrics:
                n = min(request.num_metrics, len(x_eval))
                metric_values = metrics.jacobian_metrics(apply_fn, params, x_eval[:n], y_eval[:n], key,
                                                         num_pairs_inputs=min(200, n))
                metric_values["num_inputs"] = n
            metric_values = attack_store.save_metrics(request.out, metric_values)
        figure = os.path.join(request.out, attack_store.FIGURE_NAME)
        if uaps and parallel.any_process(computed or not os.path.exists(figure)):
            attack_store.plot_uaps(uaps, apply_fn, params, x_eval[:4], figure, y=y_eval[:4], class_names=class_names)
        config = restored.config
        extra = {}
        if request.suite:
            extra["suite"] = suite.suite_record(request.suite, len(x_craft), len(class_names))
        if request.targeted or targeted_epochs:
            extra["targeted"] = targeted
        results = attack_store.finite_or_null({
            "complete": True,
            "config": {
                "workdir": os.path.abspath(request.workdir),
                "dataset": trained.get("dataset", dataset.name),
                "model": spec["name"],
                "jr_lambda": float(trained.get("jr_lambda", config.get("jr_lambda", 0.0))),
                "checkpoint_step": restored.step,
                "model_fingerprint": fingerprint,
                "attacks": list(request.attacks),
                "norm": request.norm,
                "eps": list(request.eps),
                "num_craft": len(x_craft),
                "num_eval": len(x_eval),
                "num_craft_requested": request.num_craft,
                "num_eval_requested": request.num_eval,
                "craft_split": request.craft_split,
                "eval_split": request.eval_split,
                "sgd_epochs": request.sgd_epochs,
                "deepfool_passes": request.deepfool_passes,
                "seed": request.seed,
                "suite": request.suite or None,
                "layer": request.layer or None,
                "uap_file": os.path.abspath(request.uap_file) if request.uap_file else None,
                **source,
                "class_names": [str(c) for c in class_names],
            },
            "results": rows,
            **{key: suite.worst_case(rows, request.eps, by) for by, key in suite.WORST_CASE_BY.items()},
            **extra,
            "metrics": metric_values,
        })
        attack_store.write_results(request.out, results)
    return results


def _stderr_line(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _tasks(request) -> List[tuple]:
    """``(attack, eps, row seed, settings)`` of every row, attack-major (a suite's members, or ``attacks``)."""
    if request.uap_file:
        return [("uap_file", request.eps[0], request.seed, {})]
    if request.suite:
        return [(a, e, s, st) for a, s, st in suite.suite_tasks(request.suite, request.seed) for e in request.eps]
    return [(a, e, request.seed, {}) for a in request.attacks for e in request.eps]


def _attack_rows(request, model, crafter, sets, source, special, log):
    """``(rows, uaps, computed)``: one row per task, reused when finished, else computed and saved.

    ``model`` and ``crafter`` are ``(apply_fn, params)`` of the evaluated and
    the crafting model (the same one unless transfer).  Task ``i`` with row
    seed ``s`` is keyed by ``fold_in(PRNGKey(s), i)``; SV-UAP's singular
    vector (shared by its budgets) by its first task's key, so a resumed run
    computes what an uninterrupted one does.  A universal row is finished
    when it has its crafting-split UER (``craft_uer``).
    """
    from tqdm.auto import tqdm

    apply_fn, params = model
    x_craft, y_craft, x_eval, y_eval = sets
    tasks = _tasks(request)
    names = [attack_store.stem(a, request.norm, e, s) for a, e, s, _ in tasks]
    done = {}
    for (name, eps, seed, _), stem in zip(tasks, names):
        row = attack_store.load_row(request.out, stem, {"attack": name, "norm": request.norm, "eps": eps,
                                                        "seed": seed})
        if row is not None and row.get("universal") and "craft_uer" not in row:
            row = None  # written before rows had their crafting-split UER
        if not parallel.any_process(row is None):  # every process reuses it, or every one computes it
            done[stem] = row
    if done:
        log(f"reusing {len(done)} finished rows of {len(tasks)} in {request.out}")
    if len(done) < len(tasks):
        attack_store.remove_results(request.out)  # it would describe rows that are about to change
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
                v = special["given"]
                extra["uap_file"] = os.path.abspath(request.uap_file)
            else:
                member = {k: v for k, v in settings.items() if k != "attack"}
                v, report, used = craft(attack, crafter[0], crafter[1], x_craft, y_craft, eps, request, task_key,
                                        progress, caches.setdefault((attack, seed), {}), member, special["layers"])
                extra.update(report)
            pred = metrics.predict(apply_fn, params, np.clip(x_eval + v, 0.0, 1.0))
            craft_pred = metrics.predict(crafter[0], crafter[1], np.clip(x_craft + v, 0.0, 1.0))
            uaps[label] = v
            norm_of_v = float(np.max(np.abs(v)) if request.norm == "linf" else np.linalg.norm(v))
            if craft_clean is None:
                craft_clean = metrics.predict(crafter[0], crafter[1], x_craft)
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
        attack_store.save_row(request.out, stem, row, v)
        rows.append(attack_store.finite_or_null(row))
    bar.close()
    return rows, uaps, len(tasks) - len(done)
