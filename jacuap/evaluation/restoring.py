"""The model an attack run stands on: a workdir's newest checkpoint, rebuilt on every local device."""

from __future__ import annotations

import json
import os
from typing import Any, Callable, NamedTuple

import jax

from jacuap import attacks, data, models, parallel
from jacuap.errors import CheckpointError, ConfigError, one_line
from jacuap.train import checkpoints

__all__ = ["AttackedModel", "restore"]


class AttackedModel(NamedTuple):
    """A workdir's model as an attack run uses it (a NamedTuple: it also unpacks as the four fields).

    ``restored`` is the checkpoint (:func:`jacuap.train.checkpoints.restore_model`:
    ``model``, ``params``, ``config``, ``meta``, ``step``); ``apply_fn`` and
    ``params`` are its batch-sharded function and replicated parameters, what
    every attack and metric runs.
    """

    restored: Any
    dataset: data.Dataset
    apply_fn: Callable
    params: Any

    def layers(self, example: Any) -> attacks.Layers:
        """The model's hidden layers by name (``example``: one input batch), for the layer attacks."""
        module, params = self.restored.model, self.restored.params
        return attacks.Layers(lambda: models.layer_names(module, params, example),
                              lambda names: models.layers_features_fn(module, names))


def restore(workdir: str) -> AttackedModel:
    """``AttackedModel(restored, dataset, apply_fn, params)``: the newest checkpoint of ``workdir`` on every local device.

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
    return AttackedModel(restored, dataset, apply_fn, parallel.replicate(restored.params, mesh))


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
