"""The model an attack run stands on: a workdir's newest checkpoint, rebuilt on every local device."""

from __future__ import annotations

import json
import os
from typing import Any, Callable, NamedTuple

import jax

from jacuap import attacks, data, models, parallel
from jacuap.errors import AttackError, CheckpointError, ConfigError, ModelError, one_line
from jacuap.train import checkpoints

__all__ = ["AttackedModel", "restore", "restore_torch"]


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
        if module is None:  # a PyTorch model: its logits only
            return attacks.Layers(_no_layers, lambda names: _no_layers())
        return attacks.Layers(lambda: models.layer_names(module, params, example),
                              lambda names: models.layers_features_fn(module, names))


def _no_layers():
    raise AttackError("the layer attacks (layer_max, fg_uap, gd_uap) read a Flax model's hidden layers; a "
                      "--torch_model exposes its logits only: choose other attacks")


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


def restore_torch(spec: Any) -> AttackedModel:
    """The :class:`AttackedModel` of a PyTorch model (a :class:`jacuap.evaluation.request.TorchModel`).

    Built by its factory, its weights loaded (never unpickled:
    :func:`jacuap.models.torch_bridge.load_torch_weights`), run through
    :func:`jacuap.from_torch` on inputs of ``spec.dataset``'s shape; its
    ``restored`` stands in for a checkpoint: step 0, the state dict as the
    parameters the fingerprint hashes, no training config.  The layer
    attacks need a Flax model: they end in one line.
    """
    import ml_collections
    import numpy as np

    from jacuap.models import torch_bridge  # torch: only for a PyTorch model

    dataset = data.load_dataset(spec.dataset, spec.data_dir or None)
    module = torch_bridge.torch_factory(spec.factory)
    if spec.weights:
        module = torch_bridge.load_torch_weights(module, spec.weights)
    module.eval()  # attacked as deployed: BatchNorm's running statistics, no dropout
    apply_fn, params = torch_bridge.from_torch(module, tuple(dataset.image_shape), mechanism=spec.mechanism,
                                               torch_layout=spec.layout, mean=spec.mean or None, std=spec.std or None)
    logits = apply_fn(params, np.asarray(dataset.test_images[:2]))
    if tuple(logits.shape) != (2, dataset.num_classes):
        raise ModelError(f"--torch_model {spec.factory} maps {dataset.name} inputs {tuple(dataset.image_shape)} to "
                         f"logits of shape {tuple(logits.shape[1:])}, not ({dataset.num_classes},)")
    state = {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}
    name = f"torch:{spec.factory}"
    restored = checkpoints.RestoredModel(
        config=ml_collections.ConfigDict({"dataset": dataset.name, "jr_lambda": None}), model=None,
        apply_fn=apply_fn, params=state, step=0,
        meta={"model_spec": {"name": name, "num_classes": dataset.num_classes,
                             "image_shape": list(dataset.image_shape)},
              "fingerprint": {"dataset": spec.dataset, "torch": spec.record()}})
    mesh = parallel.make_mesh(jax.local_devices())
    return AttackedModel(restored, dataset, parallel.batch_sharded_apply(apply_fn, mesh), parallel.replicate(params, mesh))


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
