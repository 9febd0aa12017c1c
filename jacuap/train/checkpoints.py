"""Orbax checkpoints: save, restore, resume, and clear errors for bad ones.

A checkpoint is one orbax step directory holding two items:
``state`` (the train state pytree: step, params, optimizer state) and
``meta`` (JSON: the model's spec, the epoch history, anything small the run
needs to resume exactly).  Orbax writes each step into a temporary directory
and renames it when complete, so a write cut short is never taken for a
checkpoint; ``restore`` additionally turns any unreadable or mismatching
checkpoint into a one-line ``CheckpointError`` (naming the older checkpoint
to fall back to when the newest one is damaged).  ``save`` checks the free
space first and turns a full disk into an ``OSError`` with ``errno`` set.
On several processes (``jax.distributed``) every process calls ``save`` and
``restore``; orbax writes each array once and commits with a barrier.

:func:`restore_model` rebuilds a train.py workdir's model from its
``config.json`` and newest checkpoint (what attack.py and the notebook use).
The checkpoint's tree is :class:`jacuap.train.state.TrainState`'s fields
(``step``, ``params``, ``opt_state``, ``uap``; and ``jr_vec`` for
``jr_mode="stacked_spectral"`` runs only, :class:`jacuap.train.state.SpectralTrainState`, so
that every other run keeps the earlier layout) and its meta the keys
``model_spec``, ``steps_per_epoch``, ``history``, ``epoch_sums``,
``train_seconds``, ``fingerprint``: checkpoints written by earlier versions
restore as long as these stay the same.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import os
import shutil
import sys
from typing import Any, Callable, Dict, Optional, Tuple

import jax
import ml_collections
import orbax.checkpoint as ocp

from jacuap import io, models, parallel
from jacuap.errors import CheckpointError, one_line
from jacuap.train.state import create_train_state, make_optimizer

__all__ = ["CheckpointError", "manager", "latest_step", "save", "restore", "restore_meta", "disk_errno",
           "restore_model", "state_template", "RestoredModel"]

DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS)

CHECKPOINT_SUBDIR = "checkpoints"


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
    """Writes ``state`` and the JSON ``meta`` as checkpoint ``step`` (blocking).

    On several processes every one must call it (orbax writes each array
    once and commits with a barrier).

    Before writing, the free space of a local checkpoint directory is
    compared with the size of the newest checkpoint (or of ``state``'s arrays
    for the first): a disk too full to hold one more fails cleanly, before
    any byte is written.

    Raises:
      OSError: the disk is full, over quota or read-only (``errno`` set; a
        partial step directory is never taken for a checkpoint).  Orbax's own
        error logs are folded into this one exception.
    """
    directory = str(mngr.directory)
    need = _expected_size(directory, state)
    free = shutil.disk_usage(directory).free if os.path.isdir(directory) else None
    if parallel.any_process(free is not None and free < need):
        raise OSError(errno.ENOSPC, f"checkpoint {step} needs about {need // 1024} KiB in {directory}, "
                                    f"{(free or 0) // 1024} KiB free ({os.strerror(errno.ENOSPC)})")
    try:
        with _quiet_orbax_errors():
            mngr.save(
                step,
                args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
                force=True,
            )
            mngr.wait_until_finished()
    except Exception as exc:
        code = disk_errno(exc)
        if code is None:
            raise
        raise OSError(code, f"checkpoint {step} could not be written to {mngr.directory} "
                            f"({errno.errorcode.get(code, code)}: {os.strerror(code)})") from exc


def _expected_size(directory: str, state: Any) -> int:
    """Bytes the next checkpoint will take: the newest one's size, else the arrays' plus 10%."""
    steps = [n for n in os.listdir(directory) if n.isdigit()] if os.path.isdir(directory) else []
    if steps:
        newest = os.path.join(directory, max(steps, key=int))
        return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(newest) for f in files)
    arrays = sum(getattr(x, "nbytes", 0) for x in jax.tree_util.tree_leaves(state))
    return int(arrays * 1.1) + 65536


def disk_errno(exc: Optional[BaseException]) -> Optional[int]:
    """The errno of a disk-full / over-quota / read-only error in ``exc``'s chain, else None.

    Orbax (through TensorStore) reports these as ``ValueError``s whose text
    carries ``os_error_code``; plain writes raise ``OSError``.
    """
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in DISK_ERRNOS:
            return exc.errno
        text = str(exc)
        for code in DISK_ERRNOS:
            if f"os_error_code='{code}'" in text or f"[Errno {code}]" in text or os.strerror(code) in text:
                return code
        exc = exc.__cause__ or exc.__context__
    return None


class _DropOrbaxErrors(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno >= logging.ERROR and "orbax" in (record.pathname or ""))


class _DropOrbaxTaskErrors(logging.Filter):
    """asyncio's "Task exception was never retrieved" for orbax's sibling reads of a failed restore."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return not ("never retrieved" in text and "orbax" in text)


class _DropClosedLoopCallbacks:
    """A ``sys.unraisablehook`` that drops what orbax's stragglers raise after a failed restore.

    When one read of a restore fails, orbax closes its asyncio loop while
    TensorStore still completes the other reads on its own threads; each
    completion calls into the closed loop (``RuntimeError('Event loop is
    closed')``), and orbax's reading coroutines, closed mid-read, raise as
    they are collected; Python prints a traceback for each, at any time
    afterwards.  Everything else goes to the previous hook.
    """

    def __init__(self, previous: Callable):
        self.previous = previous

    def __call__(self, unraisable) -> None:
        exc = unraisable.exc_value
        if isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed":
            return
        code = getattr(unraisable.object, "cr_code", None)  # an orbax coroutine closed mid-read
        if code is not None and f"{os.sep}orbax{os.sep}" in code.co_filename:
            return
        self.previous(unraisable)


_TASK_ERRORS = _DropOrbaxTaskErrors()
_SILENCED = []  # non-empty once a failure silenced the stragglers for good


@contextlib.contextmanager
def _quiet_orbax_errors():
    """Orbax logs each failure (a traceback per writer or reader task) before raising; we report once.

    Inside, orbax's absl error logs, asyncio's "never retrieved" task errors
    and the closed-loop callbacks of TensorStore reads still in flight
    (:class:`_DropClosedLoopCallbacks`) are dropped.  After a failure the
    last two stay dropped for the rest of the process: those reads finish
    at any time afterwards.
    """
    logger, drop = logging.getLogger("absl"), _DropOrbaxErrors()
    asyncio_logger = logging.getLogger("asyncio")
    previous_hook = sys.unraisablehook
    installed = not isinstance(previous_hook, _DropClosedLoopCallbacks)
    if installed:
        sys.unraisablehook = _DropClosedLoopCallbacks(previous_hook)
    logger.addFilter(drop)
    asyncio_logger.addFilter(_TASK_ERRORS)
    failed = False
    try:
        yield
    except BaseException:
        failed = True
        _SILENCED.append(True)
        raise
    finally:
        logger.removeFilter(drop)
        if not (failed or _SILENCED):
            asyncio_logger.removeFilter(_TASK_ERRORS)
            if installed and isinstance(sys.unraisablehook, _DropClosedLoopCallbacks):
                sys.unraisablehook = previous_hook


def restore_meta(workdir: str, step: Optional[int] = None) -> Tuple[int, Dict[str, Any]]:
    """``(step, meta)`` of checkpoint ``step`` (newest by default), without the arrays."""
    step = latest_step(workdir) if step is None else step
    if step is None:
        raise CheckpointError(f"no checkpoint in {_directory(workdir)}")
    args = ocp.args.Composite(meta=ocp.args.JsonRestore())
    try:
        with _quiet_orbax_errors(), manager(workdir, create=False) as mngr:
            out = mngr.restore(step, args=args)
        return step, dict(out["meta"])
    except Exception as exc:  # orbax raises many types; the user needs one line
        raise CheckpointError(
            f"checkpoint {step} in {_directory(workdir)} is unreadable: {one_line(exc, limit=200)}"
            f"{_fallback(workdir, step, args)}"
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
    args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore())
    try:
        with _quiet_orbax_errors(), manager(workdir, create=False) as mngr:
            out = mngr.restore(step, args=args)
    except Exception as exc:
        raise CheckpointError(
            f"checkpoint {step} in {_directory(workdir)} cannot be restored: {one_line(exc, limit=200)}"
            f"{_fallback(workdir, step, args)}"
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


def _fallback(workdir: str, step: int, args) -> str:
    """How to fall back to the newest older checkpoint, if it restores with the same ``args``.

    It does when checkpoint ``step`` is damaged (a truncated file); it does not
    when the failure is a mismatch (another model), and then no advice is given.
    """
    directory = _directory(workdir)
    older = [int(n) for n in os.listdir(directory) if n.isdigit() and int(n) < step] if os.path.isdir(directory) else []
    if not older:
        return ""
    try:
        with _quiet_orbax_errors(), manager(workdir, create=False) as mngr:
            mngr.restore(max(older), args=args)
    except Exception:
        return ""
    return f"; to resume from checkpoint {max(older)} instead, remove {os.path.join(directory, str(step))}"


@dataclasses.dataclass
class RestoredModel:
    """What a trained workdir holds: enough to attack or measure the model."""

    config: ml_collections.ConfigDict
    model: Any
    apply_fn: Callable
    params: Any
    step: int
    meta: Dict[str, Any]


def restore_model(workdir: str) -> RestoredModel:
    """Rebuilds the model of a train.py ``workdir`` and loads its newest parameters.

    Raises:
      CheckpointError: the workdir has no (readable) checkpoint.
    """
    config = ml_collections.ConfigDict(io.read_workdir_config(workdir))
    _, meta = restore_meta(workdir)
    model, template = state_template(config, meta)
    step, state, meta = restore(workdir, template)
    return RestoredModel(config, model, models.make_apply_fn(model), state.params, step, meta)


def state_template(config: Any, meta: Dict[str, Any]) -> Tuple[Any, Any]:
    """``(model, train state)`` that a checkpoint of ``config`` (a workdir's config.json) and ``meta`` (its
    checkpoint's meta) restores into.  Only the state's structure, shapes and dtypes matter: a restore
    overwrites every value."""
    config = ml_collections.ConfigDict(dict(config))
    spec = meta["model_spec"]
    model = models.create_model(spec["name"], spec["num_classes"], spec["mean"], spec["std"], spec.get("kwargs"),
                                spec.get("seed", 0), spec.get("source_root"))
    tx = make_optimizer(config, meta["steps_per_epoch"])
    # A config.json written before jr_mode existed is a frobenius run (no jr_vec).
    return model, create_train_state(model, jax.random.PRNGKey(0), tuple(spec["image_shape"]), tx,
                                     config.get("jr_mode", "frobenius"),
                                     spec["num_classes"] if config.get("adv_training") == "cw_uat" else 0)
