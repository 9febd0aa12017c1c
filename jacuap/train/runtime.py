"""What keeps a long training run safe: stop signals, resume checks, divergence, progress.

* :class:`StopSignals` turns SIGTERM/SIGINT into a flag the loop checks
  between steps; the loop then saves a checkpoint and raises
  :class:`Preempted` (:func:`preempted`), and rerunning the same command
  resumes.
* :func:`config_fingerprint` / :func:`check_resumable`: a workdir's
  checkpoint is resumed only by a run with the same settings.
* :func:`check_finite` raises :class:`TrainingDiverged` on a non-finite
  running loss, before that state is saved, so the last good checkpoint
  is kept.
"""

from __future__ import annotations

import math
import signal
from typing import Any, Dict, Mapping, Optional

import ml_collections

from jacuap.train import checkpoints
from jacuap.errors import CheckpointError

__all__ = [
    "TrainingDiverged",
    "Preempted",
    "StopSignals",
    "FINGERPRINT_KEYS",
    "config_fingerprint",
    "check_resumable",
    "check_finite",
    "preempted",
    "progress_bar",
]


class TrainingDiverged(RuntimeError):
    """The loss became non-finite; the last good checkpoint was kept."""


class Preempted(Exception):
    """SIGTERM/SIGINT arrived; a checkpoint was saved and the run can resume."""


class StopSignals:
    """A context in which SIGTERM/SIGINT set ``received`` (the signal number) instead of killing.

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

    def __exit__(self, *exc) -> bool:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False


#: The settings a resumed run must share with the run that wrote the checkpoint.
FINGERPRINT_KEYS = ("dataset", "model", "jr_lambda", "jr_num_proj", "jr_space", "num_epochs", "batch_size",
                    "learning_rate", "optimizer", "lr_schedule", "seed", "adv_training", "adv_eps", "adv_steps",
                    "adv_step_size")


def config_fingerprint(config: ml_collections.ConfigDict) -> Dict[str, Any]:
    """``{key: config[key]}`` for :data:`FINGERPRINT_KEYS` (stored in every checkpoint's meta)."""
    return {k: config[k] for k in FINGERPRINT_KEYS}


def check_resumable(workdir: str, old_meta: Mapping[str, Any], fingerprint: Mapping[str, Any]) -> None:
    """Raises CheckpointError naming the differing settings unless the checkpoint has ``fingerprint``."""
    old = old_meta.get("fingerprint") or {}
    if old_meta.get("fingerprint") != fingerprint:
        diff = {k: (old.get(k), v) for k, v in fingerprint.items() if old.get(k) != v}
        raise CheckpointError(f"workdir {workdir!r} holds a run with another config {diff}; use a fresh --workdir")


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


def progress_bar(config: ml_collections.ConfigDict, epoch: int, offset: int, total: int, primary: bool = True):
    """A tqdm bar over an epoch's steps, shown only when ``config.progress`` and on process 0."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=offset, desc=f"epoch {epoch + 1}/{config.num_epochs}",
                disable=not (config.progress and primary), leave=False, dynamic_ncols=True)
