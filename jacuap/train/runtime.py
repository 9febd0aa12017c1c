"""What keeps a long training run safe: stop signals, resume checks, divergence, progress.

* :func:`claim_workdir`: one run per workdir (an exclusive ``flock``,
  :func:`jacuap.io.exclusive_lock`); a workdir that is a file or cannot be
  written is refused before anything is written.
* :class:`StopSignals` turns SIGTERM/SIGINT into a flag the loop checks
  between steps; the loop then saves a checkpoint and raises
  :class:`Preempted` (:func:`preempted`), and rerunning the same command
  resumes.
* :func:`config_fingerprint` / :func:`check_resumable`: a workdir's
  checkpoint is resumed only by a run with the same settings: every config
  field but the few of :data:`NOT_FINGERPRINTED`, which cannot change what
  the run computes.
* :func:`check_finite` raises :class:`TrainingDiverged` on a non-finite
  running loss, before that state is saved, so the last good checkpoint
  is kept.
* :func:`progress_bar` and :class:`StepTimer`: the epoch's bar, and the
  time per step, both leaving out the epoch's first step (on a fresh process,
  the one that compiles).
* :func:`tensorboard`: the run's event file (``workdir/tensorboard``), which
  shows each epoch once across resumes.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import signal
import time
from typing import Any, Dict, Iterator, Mapping, Optional, Sequence

import jax
import ml_collections

from jacuap import configs, io, summaries
from jacuap.errors import CheckpointError, ConfigError
from jacuap.train import checkpoints

__all__ = [
    "TrainingDiverged",
    "Preempted",
    "StopSignals",
    "check_workdir",
    "claim_workdir",
    "NOT_FINGERPRINTED",
    "plain",
    "config_fingerprint",
    "check_resumable",
    "check_finite",
    "preempted",
    "progress_bar",
    "count_untimed",
    "StepTimer",
    "SUMMARY_SCALARS",
    "epoch_scalars",
    "tensorboard",
]


class TrainingDiverged(RuntimeError):
    """The loss became non-finite; the last good checkpoint was kept."""


class Preempted(Exception):
    """SIGTERM/SIGINT arrived; a checkpoint was saved and the run can resume."""


class StopSignals:
    """A context in which SIGTERM/SIGINT set ``received`` (the signal number) instead of killing.

    The loop checks ``received`` and stops with a checkpoint.  A signal the loop
    never saw (it came after the last step) is re-raised on a normal exit, to
    the handler that was there before, so that no stop request is lost.
    Outside the main thread signals cannot be caught; they are left alone.
    """

    def __init__(self):
        self.received: Optional[int] = None
        self._old = {}

    def __enter__(self) -> "StopSignals":
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame):
        self.received = signum

    def __exit__(self, exc_type, *exc) -> bool:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        if self.received is not None and exc_type is None:
            # The signal came after the loop's last check (say while the final metrics ran): the
            # run finished, but the stop was asked for all the same.  Deliver it to the handler
            # it was meant for, so that a caller going on to more work (a sweep) stops too.
            signal.raise_signal(self.received)
        return False


#: The config fields left out of a run's fingerprint, and why leaving each out is safe: none of
#: them changes a parameter, an optimizer state or a metrics.jsonl line (the bitwise resume
#: guarantee holds across a change of any of them).  Every other field of
#: ``configs.FIELDS`` is in the fingerprint, including fields added later: a field is
#: resume-neutral only once it is listed here.
NOT_FINGERPRINTED = {
    "data_dir": "where the dataset's files are read from, not which dataset (that is `dataset`, "
                "and the split depends only on `seed`): moving the files or resuming on another machine is fine",
    "progress": "whether a progress bar is drawn",
    "checkpoint_every_steps": "when mid-epoch checkpoints are written; a mid-epoch checkpoint keeps the "
                              "epoch's exact float32 running sums, so resuming from any step is bitwise equal",
    "max_to_keep": "how many checkpoints stay on disk",
    "eval_num_inputs": "only the final summary.json (recomputed by every run that finishes, and "
                       "recorded there as jacobian_num_inputs); training never reads it",
    "num_epochs": "with lr_schedule='constant' only (a run may then be extended: data order and "
                  "randomness depend on the step alone); with 'cosine' it sets every step's "
                  "learning rate, so it is fingerprinted",
}


#: Fields added after checkpoints were first written, with the value every run before them had:
#: an older checkpoint's fingerprint lacks the field, and is compared as if it held this value
#: (a checkpoint written before ``jr_mode`` existed is a frobenius run, with no ``jr_vec`` in
#: its state, and resumes only as one).
LEGACY_VALUES = {"jr_mode": "frobenius", "num_validation": 0}


def plain(value: Any) -> Any:
    """A config value as JSON would hold it: a nested ConfigDict (``model_kwargs``) as a plain dict.

    >>> plain(ml_collections.ConfigDict({"width": 8})), plain(3)
    ({'width': 8}, 3)
    """
    return value.to_dict() if isinstance(value, ml_collections.ConfigDict) else value


def config_fingerprint(config: ml_collections.ConfigDict) -> Dict[str, Any]:
    """``{field: value}`` of every config field that changes the computation (stored in each checkpoint's meta).

    All of ``configs.FIELDS`` but :data:`NOT_FINGERPRINTED`; ``num_epochs``
    too unless ``lr_schedule`` is ``"constant"``.
    """
    keep = lambda k: k not in NOT_FINGERPRINTED or (k == "num_epochs" and config.lr_schedule != "constant")
    # As the checkpoint's JSON metadata will hold it (tuples as lists), so that a run with
    # model_kwargs={"hidden": (16,)} can resume itself.
    return json.loads(json.dumps({k: plain(config[k]) for k in configs.FIELDS if keep(k)}))


def check_resumable(workdir: str, old_meta: Mapping[str, Any], fingerprint: Mapping[str, Any],
                    step: Optional[int] = None, total_steps: Optional[int] = None) -> None:
    """Raises CheckpointError naming each differing field, with both values, unless the checkpoint fits.

    Compared: the fields both fingerprints have.  A checkpoint written before
    a field was fingerprinted (earlier versions stored fewer fields) is
    checked on the fields it has (and on :data:`LEGACY_VALUES`); a field left out of this run's fingerprint
    (:data:`NOT_FINGERPRINTED`) is not compared.  ``step`` (the checkpoint's)
    beyond ``total_steps`` (this run's) is refused too: a run cannot be shortened.
    """
    old = {**LEGACY_VALUES, **(old_meta.get("fingerprint") or {})}
    diff = {k: (old[k], v) for k, v in fingerprint.items() if k in old and old[k] != v}
    if diff:
        raise CheckpointError(f"workdir {workdir!r} holds a run with another config {diff} (the checkpoint's "
                              f"value, this run's); rerun with the checkpoint's values or use a fresh --workdir")
    if step is not None and total_steps is not None and step > total_steps:
        done = len(old_meta.get("history") or [])
        raise CheckpointError(f"workdir {workdir!r} holds a run already at step {step} ({done} epochs), past this "
                              f"run's {total_steps} steps; raise num_epochs or use a fresh --workdir")


def check_workdir(workdir: str) -> None:
    """Raises ConfigError if ``workdir`` (or a folder above it) is an existing file; looks only."""
    path = io.existing_ancestor(workdir)
    if os.path.exists(path) and not os.path.isdir(path):
        what = "is a file" if path == os.path.abspath(workdir) else f"is inside {path!r}, a file"
        raise ConfigError(f"workdir {workdir!r} {what}, not a directory; choose another --workdir")


def _unwritable(workdir: str, code: int) -> OSError:
    """The OSError (errno ``code``, filename ``workdir``) that jacuap.cli reports as "W is not writable"."""
    return OSError(code, os.strerror(code), workdir)


def _access_errno(workdir: str) -> Optional[int]:
    """EROFS or EACCES if this process cannot create files in ``workdir``, else None."""
    if os.access(workdir, os.W_OK | os.X_OK):
        return None
    try:
        read_only = bool(os.statvfs(workdir).f_flag & os.ST_RDONLY)
    except OSError:
        read_only = False
    return errno.EROFS if read_only else errno.EACCES


@contextlib.contextmanager
def claim_workdir(workdir: str) -> Iterator[None]:
    """Creates ``workdir`` if needed and holds it exclusively (``workdir/.lock``) for the ``with`` block.

    Raises (before the block runs, having written nothing but the folder and its lock):
      ConfigError: ``workdir`` is a file.
      BusyError: another live process holds it (a lock from a killed process is taken over).
      OSError: it cannot be created or written (``errno`` EACCES, EPERM or EROFS,
        ``filename`` the workdir; PermissionError for the first two).
    """
    check_workdir(workdir)
    unwritable = (errno.EACCES, errno.EPERM, errno.EROFS)
    try:
        os.makedirs(workdir, exist_ok=True)
    except OSError as exc:
        if exc.errno in unwritable:
            raise _unwritable(workdir, exc.errno) from None
        raise
    code = _access_errno(workdir)
    if code is not None:
        raise _unwritable(workdir, code)
    stack = contextlib.ExitStack()
    try:
        stack.enter_context(io.exclusive_lock(workdir))
    except OSError as exc:
        if exc.errno in unwritable:
            raise _unwritable(workdir, exc.errno) from None
        raise
    with stack:
        yield


def check_finite(sums: Mapping[str, float], workdir: str, epoch: int, step: int) -> None:
    """Raises TrainingDiverged unless every running sum is finite (the state is then not saved)."""
    if all(math.isfinite(v) for v in sums.values()):
        return
    last = checkpoints.latest_step(workdir)
    kept = f"the last good checkpoint (step {last}) is kept" if last is not None else "no checkpoint was written"
    raise TrainingDiverged(f"training diverged (non-finite loss) in epoch {epoch + 1} before step {step}; "
                           f"{kept}; lower learning_rate or jr_lambda")


def preempted(received: Optional[int], step: int, workdir: str) -> Preempted:
    """The Preempted error after a stop signal (``received``: its number, None if it reached another host)."""
    return Preempted(f"stopped by signal {received or 'on another host'} at step {step}; "
                     f"rerun the same command to resume from {workdir}")


def progress_bar(config: ml_collections.ConfigDict, epoch: int, offset: int, total: int, primary: bool = True,
                 compiling: bool = False):
    """A tqdm bar over an epoch's steps, shown only when ``config.progress`` and on process 0.

    With ``compiling`` it reads "compiling" until the first step returns.
    Count its steps with :class:`StepTimer`, which starts the bar's clock
    after the first one: its rate and ETA leave out compilation.
    """
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=offset, desc=f"epoch {epoch + 1}/{config.num_epochs}",
                disable=not (config.progress and primary), leave=False, dynamic_ncols=True,
                postfix="compiling" if compiling else None)


def count_untimed(bar, n: int = 1) -> None:
    """Counts ``n`` steps on a tqdm ``bar`` without timing them, and clears its postfix.

    tqdm's ``unpause`` moves the bar's clock past the time since its last
    print, and the count becomes the bar's ``initial``, so that its rate and
    ETA count only the steps from now.  For an epoch's first step nothing was
    printed since the bar was made: its clock then starts when the step ends.

    >>> from tqdm import tqdm
    >>> bar = tqdm(total=10, initial=2, disable=True)
    >>> count_untimed(bar); (bar.n, bar.initial, bar.total)
    (3, 3, 10)
    """
    bar.unpause()
    bar.n += n
    bar.initial = bar.last_print_n = bar.n
    bar.set_postfix_str("")  # and redraws


class StepTimer:
    """Counts an epoch's steps on its bar, and times those after the first.

    The first step is waited for (``jax.block_until_ready`` on its outputs)
    and counted untimed (:func:`count_untimed`): the bar's clock starts then.  On
    a fresh process that step is the one that compiles (minutes for a large
    model): counted, it would make the rate, the ETA and the time per step
    about compilation.  :meth:`paused` leaves a block out (a mid-epoch
    checkpoint save).  :meth:`seconds_per_step`: wall seconds from the end of
    the first step to now, less the pauses, per later step, so call it once
    the last step's results were fetched (before, it would time dispatch only).
    """

    def __init__(self, bar):
        self.bar = bar
        self.start: Optional[float] = None
        self.timed = 0
        self.paused_seconds = 0.0

    def step(self, outputs: Any) -> None:
        """Counts one step whose ``outputs`` (arrays) may still be being computed."""
        if self.start is None:
            jax.block_until_ready(outputs)
            count_untimed(self.bar)
            self.start = time.perf_counter()
        else:
            self.bar.update(1)
            self.timed += 1

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        begin = time.perf_counter()
        try:
            yield
        finally:
            self.paused_seconds += time.perf_counter() - begin

    def seconds_per_step(self) -> Optional[float]:
        """Mean wall seconds of the steps after the first (None if there were none)."""
        if not self.timed:
            return None
        return (time.perf_counter() - self.start - self.paused_seconds) / self.timed


#: The summary.json values logged to TensorBoard too, at the run's last step, as ``summary/<name>``.
SUMMARY_SCALARS = ("mean_jacobian_frobenius_sq", "stacked_spectral_norm")


def epoch_scalars(line: Mapping[str, Any]) -> Dict[str, float]:
    """The TensorBoard scalars of a metrics.jsonl ``line``: its numbers but ``epoch`` and ``step``, same keys.

    >>> epoch_scalars({"epoch": 1, "step": 5, "loss": 0.5, "penalty": None, "train_seconds": 2.0})
    {'loss': 0.5, 'train_seconds': 2.0}
    """
    return {k: v for k, v in line.items() if k not in ("epoch", "step")
            and isinstance(v, (int, float)) and not isinstance(v, bool)}


@contextlib.contextmanager
def tensorboard(workdir: str, step: int, history: Sequence[Mapping[str, Any]]) -> Iterator[summaries.Writer]:
    """The run's event writer, in ``workdir/tensorboard``, for a run resumed at global ``step``.

    Each epoch is logged at its last global step, before its checkpoint is
    saved.  The new event file starts with a restart marker at ``step``,
    which hides what earlier files hold at steps ``>= step`` (what a killed
    run logged after its last checkpoint), and the epochs of ``history``
    ending at or after ``step`` are logged again.  A folder without event
    files (a workdir trained before this logging, or the folder deleted) gets
    every epoch of ``history``.  So TensorBoard shows each epoch once, with
    metrics.jsonl's values.
    """
    logdir = summaries.logdir(workdir)
    first = step if summaries.event_files(logdir) else 0
    with summaries.Writer(logdir, purge_step=first) as writer:
        for line in history:
            if line["step"] >= first:
                writer.scalars(line["step"], epoch_scalars(line))
        yield writer
