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
import json
import math
import os
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from jacuap import attack_store, attacks, batching, data, io, jacobian, metrics, parallel
from jacuap.attack_store import output_failure, output_files, plot_uaps, print_results
from jacuap.errors import AttackError, CheckpointError, ConfigError, one_line
from jacuap.train import checkpoints

__all__ = ["AttackRequest", "craft_and_eval_sets", "craft", "run_attacks", "plot_uaps", "print_results",
           "output_files", "output_failure"]

# Per-input attacks run on the evaluation set in batches of this many inputs.
_PER_INPUT_BATCH = 500


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
    >>> AttackRequest(workdir="w", attacks=["carlini"], norm="linf", eps=[0.1], out="o")
    Traceback (most recent call last):
    jacuap.errors.AttackError: unknown attack carlini; choose from sgd_uap, sv_uap, deepfool_uap, sga_uap, sgd_uap_restarts, pgd, fgsm
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
    num_metrics: int = 500
    sgd_epochs: int = 5
    deepfool_passes: int = 5
    seed: int = 0
    progress: bool = True
    overwrite: bool = False

    def __post_init__(self):
        unknown = [a for a in self.attacks if a not in attacks.ATTACKS]
        if unknown or not self.attacks:
            raise AttackError(f"unknown attack {', '.join(unknown) or '(none)'}; "
                              f"choose from {', '.join(attacks.ATTACKS)}")
        if self.norm not in attacks.NORMS:
            raise AttackError(f"unknown norm {self.norm!r}; choose {' or '.join(attacks.NORMS)}")
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

    @classmethod
    def from_flags(cls, flags) -> "AttackRequest":
        """The request of ``attack.py``'s flags (``--eps`` a comma list of numbers)."""
        try:
            eps = [float(e) for e in flags.eps]
        except ValueError:
            raise AttackError(f"eps must be a comma list of numbers, got {','.join(flags.eps)!r}") from None
        return cls(
            workdir=flags.workdir,
            attacks=[a.strip() for a in flags.attack if a.strip()],
            norm=flags.norm,
            eps=eps,
            out=flags.out or os.path.join(flags.workdir, "attack"),
            num_craft=flags.num_craft,
            num_eval=flags.num_eval,
            craft_split=flags.craft_split,
            num_metrics=flags.num_metrics,
            sgd_epochs=flags.sgd_epochs,
            deepfool_passes=flags.deepfool_passes,
            seed=flags.seed,
            progress=flags.progress,
            overwrite=bool(getattr(flags, "overwrite", False)),
        )


def craft_and_eval_sets(dataset: data.Dataset, request: AttackRequest):
    """``(x_craft, y_craft, x_eval, y_eval)``: disjoint, fixed by ``request.seed``.

    The evaluation set is the first ``num_eval`` test inputs; the crafting
    set ``num_craft`` random training inputs, or (``craft_split="test"``)
    random test inputs after the evaluation ones (which then take at most
    half the test split).
    """
    rng = np.random.default_rng(request.seed)
    n_test = len(dataset.test_images)
    if request.craft_split == "train":
        idx = rng.permutation(len(dataset.train_images))[: request.num_craft]
        x_craft, y_craft = dataset.train_images[idx], dataset.train_labels[idx]
        eval_idx = np.arange(min(request.num_eval, n_test))
    else:
        if n_test < 2:
            raise AttackError("the test split is too small to hold disjoint craft and eval sets")
        num_eval = min(request.num_eval, n_test // 2)
        eval_idx = np.arange(num_eval)
        rest = num_eval + rng.permutation(n_test - num_eval)[: request.num_craft]
        x_craft, y_craft = dataset.test_images[rest], dataset.test_labels[rest]
    return x_craft, y_craft, dataset.test_images[eval_idx], dataset.test_labels[eval_idx]


def craft(name: str, apply_fn, params, x, y, eps: float, request: AttackRequest, key,
          progress: Optional[Callable[[int, float], None]] = None,
          cache: Optional[Dict[str, Any]] = None) -> np.ndarray:
    """The universal perturbation of attack ``name`` crafted on ``(x, y)``: shape of one input.

    ``key`` seeds the attack's randomness; ``progress(pass, fooling_rate)``
    is called by DeepFool-UAP.  ``cache`` (a dict kept across the budgets of
    one crafting set) holds the singular vector of ``sv_uap``, which depends
    on the model and the set but not on ``eps``.
    """
    if name == "sgd_uap":
        result = attacks.sgd_uap(apply_fn, params, x, y, eps=eps, norm=request.norm, key=key,
                                 num_epochs=request.sgd_epochs)
    elif name == "sv_uap":
        cache = {} if cache is None else cache
        if "sv_direction" not in cache:
            batch = batching.round_up(min(256, len(x)), parallel.batch_multiple(apply_fn))
            _, cache["sv_direction"] = jacobian.stacked_spectral_norm(
                apply_fn, params, jnp.asarray(x), key, batch_size=batch, method="auto", loop="host")
        result = attacks.singular_vector_uap(apply_fn, params, x, y, eps=eps, norm=request.norm,
                                             direction=cache["sv_direction"])
    elif name in ("sga_uap", "sgd_uap_restarts"):
        result = attacks.ATTACKS[name](apply_fn, params, x, y, eps=eps, norm=request.norm, key=key,
                                       num_epochs=request.sgd_epochs)
    elif name == "deepfool_uap":
        result = attacks.deepfool_uap(apply_fn, params, x, y, eps=eps, norm=request.norm, key=key,
                                      max_passes=request.deepfool_passes, progress=progress)
    else:
        raise AttackError(f"{name} is not a universal attack; choose from {', '.join(attacks.UNIVERSAL_ATTACKS)}")
    return np.asarray(result.v)


def _per_input_predictions(name, apply_fn, params, x, y, eps, norm, key) -> np.ndarray:
    """Predictions on per-input adversarial examples, batch by batch (pgd's key folded with the offset)."""
    preds = []
    for start in range(0, len(x), _PER_INPUT_BATCH):
        xb = jnp.asarray(x[start:start + _PER_INPUT_BATCH])
        yb = jnp.asarray(y[start:start + _PER_INPUT_BATCH])
        if name == "pgd":
            x_adv = attacks.pgd(apply_fn, params, xb, yb, eps=eps, norm=norm, key=jax.random.fold_in(key, start))
        else:
            x_adv = attacks.fgsm(apply_fn, params, xb, yb, eps=eps, norm=norm)
        preds.append(metrics.predict(apply_fn, params, x_adv))
    return np.concatenate(preds)


def _restore(request: AttackRequest):
    """The newest checkpoint of ``request.workdir`` on every local device, and its dataset.

    ``config.json`` must agree with the settings the checkpoint was trained
    with (ConfigError naming the first that differ): the model is rebuilt from it.
    """
    _check_config(request.workdir)
    try:
        restored = checkpoints.restore_model(request.workdir)
    except (AttributeError, KeyError, TypeError) as exc:
        raise ConfigError(f"{os.path.join(request.workdir, 'config.json')} cannot rebuild the checkpoint's "
                          f"model ({type(exc).__name__}: {one_line(exc, limit=120)}); restore it from the run") from None
    config = restored.config
    trained = restored.meta.get("fingerprint") or {}
    dataset = data.load_dataset(trained.get("dataset", config.dataset), config.get("data_dir") or None,
                                seed=trained.get("seed", config.get("seed", 0)))
    expected = restored.meta["model_spec"]["image_shape"]
    if tuple(dataset.image_shape) != tuple(expected):
        raise CheckpointError(f"the checkpoint expects inputs {expected}, "
                              f"the dataset gives {list(dataset.image_shape)}")
    mesh = parallel.make_mesh(jax.local_devices())
    apply_fn = parallel.batch_sharded_apply(restored.apply_fn, mesh)
    return restored, dataset, apply_fn, parallel.replicate(restored.params, mesh)


def _check_config(workdir: str) -> None:
    """ConfigError unless ``workdir/config.json`` holds the settings its newest checkpoint was trained with."""
    path = os.path.join(workdir, "config.json")
    if not os.path.isdir(workdir) or not os.path.isfile(path):
        return  # restore_model words these
    try:
        with open(path) as f:
            config = json.load(f)
    except (OSError, ValueError):
        return
    if not isinstance(config, dict):
        raise ConfigError(f"{path} is not a config (a JSON object); restore it from the run")
    step, meta = checkpoints.restore_meta(workdir)
    trained = dict(meta.get("fingerprint") or {})
    trained.setdefault("model", (meta.get("model_spec") or {}).get("name"))
    missing = [k for k in trained if k not in config]
    if missing:
        shown = ", ".join(sorted(missing)[:6]) + (f" and {len(missing) - 6} more" if len(missing) > 6 else "")
        raise ConfigError(f"{path} lacks {shown}, which checkpoint {step} was trained with; "
                          f"restore config.json from the run")
    differ = [f"{k}={config[k]!r} (checkpoint: {v!r})" for k, v in trained.items() if config[k] != v]
    if differ:
        raise ConfigError(f"{path} disagrees with checkpoint {step}: {', '.join(differ[:3])}; "
                          f"restore config.json from the run")


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
    restored, dataset, apply_fn, params = _restore(request)
    x_craft, y_craft, x_eval, y_eval = craft_and_eval_sets(dataset, request)
    capped = [f"{name} {asked} capped at {got}" for name, asked, got in (
        ("num_craft", request.num_craft, len(x_craft)), ("num_eval", request.num_eval, len(x_eval))) if got < asked]
    if capped:
        log(f"note: {'; '.join(capped)}, what the {dataset.name} splits hold (craft_split={request.craft_split})")
    fingerprint = attack_store.model_fingerprint(restored.params)
    spec, trained = restored.meta["model_spec"], restored.meta.get("fingerprint") or {}
    record = attack_store.request_record(request, restored.step, fingerprint, dataset.name)
    os.makedirs(request.out, exist_ok=True)
    with io.exclusive_lock(request.out):
        attack_store.claim(request.out, record, request.overwrite)
        key = jax.random.PRNGKey(request.seed)
        rows, uaps, computed = _attack_rows(request, apply_fn, params, x_craft, y_craft, x_eval, y_eval, key, log)
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
            attack_store.plot_uaps(uaps, apply_fn, params, x_eval[:4], figure)
        config = restored.config
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
                "sgd_epochs": request.sgd_epochs,
                "deepfool_passes": request.deepfool_passes,
                "seed": request.seed,
            },
            "results": rows,
            "metrics": metric_values,
        })
        attack_store.write_results(request.out, results)
    return results


def _stderr_line(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _attack_rows(request, apply_fn, params, x_craft, y_craft, x_eval, y_eval, key, log):
    """``(rows, uaps, computed)``: one row per (attack, eps), reused when finished, else computed and saved.

    Task ``i`` (in attack-major order) is keyed by ``fold_in(key, i)``; SV-UAP's
    singular vector (shared by its budgets) by its first task's key, so a
    resumed run computes what an uninterrupted one does.
    """
    from tqdm.auto import tqdm

    tasks = [(a, e) for a in request.attacks for e in request.eps]
    names = [attack_store.stem(a, request.norm, e, request.seed) for a, e in tasks]
    done = {}
    for (name, eps), stem in zip(tasks, names):
        row = attack_store.load_row(request.out, stem, {"attack": name, "norm": request.norm, "eps": eps,
                                                        "seed": request.seed})
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
    cache: Dict[str, Any] = {}
    first = {}
    for i, (name, _) in enumerate(tasks):
        first.setdefault(name, i)
    bar = tqdm(list(zip(tasks, names)), desc="attacks", disable=not request.progress, dynamic_ncols=True)
    for i, ((name, eps), stem) in enumerate(bar):
        universal = name in attacks.UNIVERSAL_ATTACKS
        row = done.get(stem)
        if row is not None:
            rows.append(row)
            if row.get("file"):
                uaps[f"{name} eps={eps:g}"] = np.load(os.path.join(request.out, row["file"]))
            continue
        bar.set_postfix_str(f"{name} eps={eps:g}")
        task_key = jax.random.fold_in(key, first[name] if name == "sv_uap" else i)
        start = time.time()
        v = None
        if universal:
            progress = (lambda p, rate: bar.set_postfix_str(
                f"{name} eps={eps:g} pass {p + 1} fooling {rate:.3f}"))
            v = craft(name, apply_fn, params, x_craft, y_craft, eps, request, task_key, progress, cache)
            pred = metrics.predict(apply_fn, params, np.clip(x_eval + v, 0.0, 1.0))
            uaps[f"{name} eps={eps:g}"] = v
            norm_of_v = float(np.max(np.abs(v)) if request.norm == "linf" else np.linalg.norm(v))
        else:
            pred = _per_input_predictions(name, apply_fn, params, x_eval, y_eval, eps, request.norm, task_key)
            norm_of_v = None
        row = {
            "attack": name,
            "norm": request.norm,
            "eps": eps,
            "seed": request.seed,
            "universal": universal,
            "uer": float(np.mean(pred != y_eval)),
            "fooling_rate": float(np.mean(pred != clean_pred)),
            "clean_accuracy": clean_accuracy,
            "perturbation_norm": norm_of_v,
            "seconds": time.time() - start,
            "file": f"{stem}.npy" if universal else None,
        }
        attack_store.save_row(request.out, stem, row, v)
        rows.append(attack_store.finite_or_null(row))
    bar.close()
    return rows, uaps, len(tasks) - len(done)
