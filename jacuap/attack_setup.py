"""What an attack run stands on: the model of a workdir, the crafting and evaluation sets, one crafted UAP.

Split from :mod:`jacuap.attack_run` (which re-exports :func:`craft_and_eval_sets`
and :func:`craft`): :func:`restore` rebuilds a workdir's newest checkpoint on
every local device, :func:`craft_and_eval_sets` draws the disjoint sets,
:func:`craft` runs one universal attack with the settings of a request or of a
suite member (:mod:`jacuap.suite`).
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from jacuap import attacks, data, metrics, parallel
from jacuap.errors import AttackError, CheckpointError, ConfigError, one_line
from jacuap.train import checkpoints

__all__ = ["craft_and_eval_sets", "craft", "per_input_predictions", "restore"]

# Per-input attacks run on the evaluation set in batches of this many inputs.
_PER_INPUT_BATCH = 500


def craft_and_eval_sets(dataset: data.Dataset, request: Any):
    """``(x_craft, y_craft, x_eval, y_eval)``: disjoint, fixed by ``request.seed``.

    The evaluation set is the first ``num_eval`` test inputs (validation
    inputs with ``eval_split="validation"``); the crafting set ``num_craft``
    random training inputs, or (``craft_split="test"``) random test inputs
    after the evaluation ones (which then take at most half the test split).
    The training split of a model trained with ``num_validation`` lacks the
    held-out inputs: a UAP is never crafted on the inputs it is chosen by.
    """
    rng = np.random.default_rng(request.seed)
    n_test = len(dataset.test_images)
    if getattr(request, "eval_split", "test") == "validation":
        if dataset.validation_images is None:
            raise AttackError("eval_split=validation needs a model trained with a validation split "
                              "(--config.num_validation > 0)")
        idx = rng.permutation(len(dataset.train_images))[: request.num_craft]
        n = min(request.num_eval, len(dataset.validation_images))
        return (dataset.train_images[idx], dataset.train_labels[idx],
                dataset.validation_images[:n], dataset.validation_labels[:n])
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


def craft(name: str, apply_fn, params, x, y, eps: float, request: Any, key,
          progress: Optional[Callable[[str], None]] = None,
          cache: Optional[Dict[str, Any]] = None, settings: Optional[Mapping[str, Any]] = None,
          layers: Optional[attacks.Layers] = None) -> Tuple[np.ndarray, Dict[str, Any], Dict[str, Any]]:
    """``(v, report, settings)``: universal attack ``name`` crafted on ``(x, y)``, by registry lookup.

    The attack's settings are its spec's defaults, then the request's fields
    (``request.sgd_epochs`` fills ``num_epochs``, ``request.layer`` the
    layer, ...), then ``settings`` (a suite member's); they come back as run.
    ``key`` seeds the attack's randomness; ``progress(message)`` receives a
    short status after each epoch, restart or pass; ``cache`` (a dict kept
    across the budgets of one crafting set) holds what does not depend on
    ``eps`` (SV-UAP's singular vector); ``layers`` names the model's hidden
    layers for the attacks that read them.  ``report`` holds the spec's extra
    numbers (FG-UAP's feature dominance).
    """
    spec = attacks.ATTACKS[name]
    if not spec.universal:
        raise AttackError(f"{name} is not a universal attack; choose from {', '.join(attacks.universal_names())}")
    resolved = spec.resolve(settings or {}, request)
    crafting = attacks.Crafting(apply_fn, params, x, y, eps, request.norm, key, resolved, progress,
                                {} if cache is None else cache, layers)
    v = np.asarray(attacks.craft(name, crafting).v)
    report = spec.report(crafting, v) if spec.report is not None else {}
    if spec.layers:
        report.setdefault("layer", ",".join(crafting.layer_names(name, "penultimate" if spec.layers == "one"
                                                                 else "hidden")))
    return v, report, resolved


def per_input_predictions(name, apply_fn, params, x, y, eps, norm, key) -> np.ndarray:
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


def restore(workdir: str):
    """``(restored, dataset, apply_fn, params)``: the newest checkpoint of ``workdir`` on every local device.

    ``config.json`` must agree with the settings the checkpoint was trained
    with (ConfigError naming the first that differ): the model is rebuilt from it.
    """
    _check_config(workdir)
    try:
        restored = checkpoints.restore_model(workdir)
    except (AttributeError, KeyError, TypeError) as exc:
        raise ConfigError(f"{os.path.join(workdir, 'config.json')} cannot rebuild the checkpoint's "
                          f"model ({type(exc).__name__}: {one_line(exc, limit=120)}); restore it from the run") from None
    config = restored.config
    trained = restored.meta.get("fingerprint") or {}
    dataset = data.load_dataset(trained.get("dataset", config.dataset), config.get("data_dir") or None,
                                seed=trained.get("seed", config.get("seed", 0)),
                                num_validation=int(trained.get("num_validation", 0) or 0))
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
