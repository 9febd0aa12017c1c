"""Checkpoints: save/restore round trip, the on-disk layout earlier versions wrote, clear errors."""

import errno
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from jacuap import configs, models, train
from jacuap.train import checkpoints

MODEL_SPEC = {"name": "mlp", "num_classes": 10, "mean": [0.3], "std": [0.4], "image_shape": [8, 8, 1]}


def _state(seed=0):
    config = configs.get_config("digits")
    model = models.create_model(MODEL_SPEC["name"], MODEL_SPEC["num_classes"], MODEL_SPEC["mean"], MODEL_SPEC["std"])
    tx = train.make_optimizer(config, steps_per_epoch=11)
    return train.create_train_state(model, jax.random.PRNGKey(seed), tuple(MODEL_SPEC["image_shape"]), tx)


def _meta(step):
    # The meta keys train_and_evaluate has always stored.
    return {"model_spec": MODEL_SPEC, "steps_per_epoch": 11, "history": [{"epoch": 1, "step": step, "loss": 1.5}],
            "epoch_sums": None, "train_seconds": 2.0, "fingerprint": {"dataset": "digits", "seed": 0}}


def _tree_layout(workdir, step):
    """Each array path of checkpoint ``step``, with its key kinds and shape (orbax's on-disk tree metadata)."""
    with open(os.path.join(workdir, "checkpoints", str(step), "state", "_METADATA")) as f:
        tree = json.load(f)["tree_metadata"]
    return {path: (v["key_metadata"], v["value_metadata"]["value_type"], v["value_metadata"].get("write_shape"))
            for path, v in tree.items()}


def _save(workdir, step, state, meta):
    with checkpoints.manager(workdir) as mngr:
        checkpoints.save(mngr, step, state, meta)


def test_save_restore_round_trip(tmp_path):
    workdir = str(tmp_path)
    assert checkpoints.latest_step(workdir) is None
    with pytest.raises(checkpoints.CheckpointError, match="no checkpoint"):
        checkpoints.restore_meta(workdir)
    state = _state(seed=1).replace(step=7, uap=jnp.full((8, 8, 1), 0.25))
    _save(workdir, 7, state, _meta(7))
    assert checkpoints.latest_step(workdir) == 7
    assert checkpoints.restore_meta(workdir) == (7, _meta(7))
    step, restored, meta = checkpoints.restore(workdir, _state(seed=2))
    assert step == 7 and meta == _meta(7) and int(restored.step) == 7
    jax.tree_util.tree_map(np.testing.assert_array_equal, restored.params, state.params)
    jax.tree_util.tree_map(np.testing.assert_array_equal, restored.opt_state, state.opt_state)
    np.testing.assert_array_equal(restored.uap, 0.25)


def test_partial_writes_are_not_checkpoints(tmp_path):
    workdir = str(tmp_path)
    _save(workdir, 3, _state(), _meta(3))
    os.makedirs(os.path.join(workdir, "checkpoints", "9.orbax-checkpoint-tmp-1"))
    assert checkpoints.latest_step(workdir) == 3


def _write_legacy_checkpoint(workdir, step, params, config):
    """A checkpoint in the layout the pre-package ``jacuap.training`` wrote, built from plain dicts.

    Orbax ``state`` item: the TrainState's fields ``step``, ``params``,
    ``opt_state`` (Adam with a schedule: ``(ScaleByAdamState, ScaleByScheduleState)``,
    a sequence of two field dicts) and ``uap``; JSON ``meta`` item; ``config.json`` beside.
    """
    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    count = jnp.asarray(step, jnp.int32)
    tree = {"step": jnp.asarray(step, jnp.int32), "params": params,
            "opt_state": [{"count": count, "mu": zeros, "nu": zeros}, {"count": count}],
            "uap": jnp.zeros(MODEL_SPEC["image_shape"], jnp.float32)}
    options = ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=False)
    with ocp.CheckpointManager(os.path.join(workdir, "checkpoints"), options=options,
                               item_names=("state", "meta")) as mngr:
        mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(tree),
                                                meta=ocp.args.JsonSave(_meta(step))))
        mngr.wait_until_finished()
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json_best_effort(indent=2))


def test_checkpoint_in_the_earlier_layout_restores(tmp_path):
    legacy, current = str(tmp_path / "legacy"), str(tmp_path / "current")
    config = configs.get_config("digits")
    params = _state(seed=3).params
    _write_legacy_checkpoint(legacy, 5, params, config)
    restored = checkpoints.restore_model(legacy)
    assert isinstance(restored, checkpoints.RestoredModel) and restored.step == 5
    assert restored.meta == _meta(5) and restored.config.optimizer == "adam"
    jax.tree_util.tree_map(np.testing.assert_array_equal, restored.params, params)
    x = jnp.ones((2, 8, 8, 1))
    np.testing.assert_array_equal(restored.apply_fn(restored.params, x),
                                  models.make_apply_fn(restored.model)(params, x))
    # Today's writer produces exactly that layout.
    as_trained = jax.tree_util.tree_map(jnp.asarray, _state())  # the loop saves device arrays
    _save(current, 5, as_trained, _meta(5))
    assert _tree_layout(current, 5) == _tree_layout(legacy, 5)
    assert "('opt_state', '1', 'count')" in _tree_layout(current, 5)


def test_restore_model_errors_are_one_line(tmp_path):
    with pytest.raises(checkpoints.CheckpointError, match="does not exist"):
        checkpoints.restore_model(str(tmp_path / "nowhere"))
    with pytest.raises(checkpoints.CheckpointError, match="config.json is missing .* a train.py workdir"):
        checkpoints.restore_model(str(tmp_path))
    (tmp_path / "config.json").write_text(configs.get_config("digits").to_json_best_effort())
    with pytest.raises(checkpoints.CheckpointError, match="no checkpoint in") as info:
        checkpoints.restore_model(str(tmp_path))
    assert "\n" not in str(info.value)


def test_train_reexports_restore_model():
    assert train.restore_model is checkpoints.restore_model
    assert train.RestoredModel is checkpoints.RestoredModel


def test_disk_errno_finds_disk_errors_in_a_chain():
    assert checkpoints.disk_errno(OSError(errno.ENOSPC, "full")) == errno.ENOSPC
    assert checkpoints.disk_errno(ValueError("write failed: os_error_code='122'")) == errno.EDQUOT
    try:
        try:
            raise OSError(errno.EROFS, "read-only")
        except OSError as inner:
            raise RuntimeError("wrapped") from inner
    except RuntimeError as outer:
        assert checkpoints.disk_errno(outer) == errno.EROFS
    assert checkpoints.disk_errno(ValueError("other")) is None
    assert checkpoints.disk_errno(None) is None


def test_save_refuses_when_the_disk_cannot_hold_a_checkpoint(tmp_path, monkeypatch):
    workdir = str(tmp_path)
    _save(workdir, 1, _state(), _meta(1))
    monkeypatch.setattr(checkpoints.shutil, "disk_usage", lambda path: type("Usage", (), {"free": 1024})())
    with checkpoints.manager(workdir) as mngr:
        with pytest.raises(OSError) as info:
            checkpoints.save(mngr, 2, _state(), _meta(2))
    assert info.value.errno == errno.ENOSPC and "checkpoint 2 needs about" in str(info.value)
    assert checkpoints.latest_step(workdir) == 1
