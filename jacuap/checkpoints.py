"""Orbax checkpoints: save, restore, resume, and clear errors for bad ones.

A checkpoint is one orbax step directory holding two items:
``state`` (the train state pytree: step, params, optimizer state) and
``meta`` (JSON: the model's spec, the epoch history, anything small the run
needs to resume exactly).  Orbax writes each step into a temporary directory
and renames it when complete, so a write cut short is never taken for a
checkpoint; ``restore`` additionally turns any unreadable or mismatching
checkpoint into a one-line ``CheckpointError``.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional, Tuple

import jax
import orbax.checkpoint as ocp

__all__ = ["CheckpointError", "manager", "latest_step", "save", "restore", "restore_meta"]

CHECKPOINT_SUBDIR = "checkpoints"


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, or does not fit the model."""


def _directory(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), CHECKPOINT_SUBDIR)


def manager(workdir: str, max_to_keep: int = 2, create: bool = True) -> ocp.CheckpointManager:
    """A synchronous orbax manager for ``workdir/checkpoints``.

    Synchronous: a save has returned only once the step is on disk, so a
    SIGTERM handler that saves and exits loses nothing.  ``create=False``
    for readers: nothing is created or cleaned up.
    """
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep,
        create=create,
        enable_async_checkpointing=False,
        cleanup_tmp_directories=create,
    )
    return ocp.CheckpointManager(_directory(workdir), options=options, item_names=("state", "meta"))


def latest_step(workdir: str) -> Optional[int]:
    """The newest complete checkpoint step in ``workdir``, or None.

    Orbax writes a step under a temporary name and renames it to the bare
    step number when complete, so only all-digit names count.
    """
    directory = _directory(workdir)
    if not os.path.isdir(directory):
        return None
    steps = [int(name) for name in os.listdir(directory)
             if name.isdigit() and os.path.isdir(os.path.join(directory, name))]
    return max(steps) if steps else None


def save(mngr: ocp.CheckpointManager, step: int, state: Any, meta: Dict[str, Any]) -> None:
    """Writes ``state`` and the JSON ``meta`` as checkpoint ``step`` (blocking)."""
    mngr.save(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
        force=True,
    )
    mngr.wait_until_finished()


def restore_meta(workdir: str, step: Optional[int] = None) -> Tuple[int, Dict[str, Any]]:
    """``(step, meta)`` of checkpoint ``step`` (newest by default), without the arrays."""
    step = latest_step(workdir) if step is None else step
    if step is None:
        raise CheckpointError(f"no checkpoint in {_directory(workdir)}")
    try:
        with manager(workdir, create=False) as mngr:
            out = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return step, dict(out["meta"])
    except Exception as exc:  # orbax raises many types; the user needs one line
        raise CheckpointError(
            f"checkpoint {step} in {_directory(workdir)} is unreadable: {_one_line(exc)}"
        ) from None


def restore(workdir: str, target: Any, step: Optional[int] = None) -> Tuple[int, Any, Dict[str, Any]]:
    """Restores ``(step, state, meta)``; ``target`` gives the expected structure.

    Raises:
      CheckpointError: no checkpoint, an unreadable one, or one whose arrays do
        not match ``target`` (e.g. a different model or dataset shape).
    """
    step = latest_step(workdir) if step is None else step
    if step is None:
        raise CheckpointError(f"no checkpoint in {_directory(workdir)}")
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, target)
    try:
        with manager(workdir, create=False) as mngr:
            out = mngr.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
                ),
            )
    except Exception as exc:
        raise CheckpointError(
            f"checkpoint {step} in {_directory(workdir)} cannot be restored: {_one_line(exc)}"
        ) from None
    state = out["state"]
    mismatched = [
        jax.tree_util.keystr(path)
        for (path, a), b in zip(
            jax.tree_util.tree_leaves_with_path(state), jax.tree_util.tree_leaves(target)
        )
        if getattr(a, "shape", None) != getattr(b, "shape", None)
    ]
    if mismatched or jax.tree_util.tree_structure(state) != jax.tree_util.tree_structure(target):
        raise CheckpointError(
            f"checkpoint {step} in {_directory(workdir)} does not fit this model "
            f"(mismatched: {', '.join(mismatched[:3]) or 'structure'})"
        )
    return step, state, dict(out["meta"])


def _one_line(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
