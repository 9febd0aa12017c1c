"""``train_and_evaluate(config, workdir)``: the whole training job, in the shape of Flax's examples.

It validates the config and loads the data before writing anything, resumes
from the newest checkpoint in ``workdir`` (same data order and RNG stream:
both are pure functions of the seed and the global step), saves a checkpoint
every epoch (and every ``checkpoint_every_steps`` steps, and on
SIGTERM/SIGINT), stops on a non-finite loss keeping the last good
checkpoint, and writes ``metrics.jsonl`` (one line per epoch), TensorBoard
event files (``workdir/tensorboard``: each line's numbers, then the summary's
Jacobian norms; :func:`jacuap.train.runtime.tensorboard`) and
``summary.json``.

Time: ``train_seconds`` (metrics.jsonl, summary.json) is the wall time of
training so far, compilation and checkpoint saves included;
``step_seconds`` (metrics.jsonl) is the epoch's mean wall time per step
after its first one (that one compiles on a fresh process), mid-epoch
checkpoint saves left out (:class:`jacuap.train.runtime.StepTimer`); the
progress bar's rate and ETA leave out the first step too.

Scale (:mod:`jacuap.parallel`): training uses every device of a ``Mesh``
(default: all devices of all processes).  Each global batch is split over
the devices on its leading axis, the state is replicated, and XLA turns the
batch means into all-reduces, so the run computes the same function of the
same batches whatever the device count (equal up to float summation order).
On several hosts (after ``parallel.initialize_multihost()``) every process
builds only its own rows of each batch, all processes join each orbax save,
and only process 0 writes ``config.json``, ``metrics.jsonl``,
``summary.json``, the event files and progress output.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import sys
import time
from typing import Any, Callable, Dict, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jacuap import backend, configs, data, io, jacobian, metrics, models, parallel, summaries
from jacuap.batching import round_up
from jacuap.errors import ConfigError, ParallelError
from jacuap.train import checkpoints, runtime
from jacuap.train.adversarial import Adversary, make_adversary
from jacuap.train.state import TrainState, create_train_state, make_optimizer
from jacuap.train.step import STATIC_ARGNAMES, step_key, train_step

__all__ = ["train_and_evaluate", "epoch_permutation"]

SUM_KEYS = ("loss", "ce", "penalty", "correct")


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """The training order of ``epoch``: a pure function of (seed, epoch).

    Resuming mid-epoch recomputes the same order and skips the batches done.

    >>> epoch_permutation(0, 1, 5).tolist() == epoch_permutation(0, 1, 5).tolist()
    True
    """
    return np.random.default_rng([seed, epoch]).permutation(n)


@dataclasses.dataclass
class _Job:
    """One run's fixed settings and its mutable ``state`` and ``meta`` (what a checkpoint holds)."""

    config: ml_collections.ConfigDict
    workdir: str
    dataset: data.Dataset
    mesh: jax.sharding.Mesh
    batch_size: int
    steps_per_epoch: int
    state: TrainState
    meta: Dict[str, Any]
    adversary: Adversary
    input_std: Optional[tuple]
    jr_num_proj: Optional[int]
    tensorboard: Optional[summaries.Writer] = None  # while the run trains (runtime.tensorboard)

    @property
    def total_steps(self) -> int:
        return self.config.num_epochs * self.steps_per_epoch


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       mesh: Optional[jax.sharding.Mesh] = None) -> Dict[str, Any]:
    """Trains ``config`` in ``workdir`` (resuming if it holds a checkpoint); returns the summary.

    Writes ``workdir/config.json``, ``workdir/checkpoints/``,
    ``workdir/metrics.jsonl``, ``workdir/tensorboard/`` and
    ``workdir/summary.json`` (process 0 only).
    ``mesh``: the devices to train on (default ``parallel.make_mesh()``, every
    device); ``batch_size`` must be a multiple of their number.

    One run at a time per workdir: the run holds ``workdir/.lock``
    (:func:`jacuap.io.exclusive_lock`) from before it reads the checkpoint to
    its return; a second one raises BusyError.  Rerunning a finished run
    trains nothing: it rewrites ``metrics.jsonl`` from the history kept in the
    checkpoint and recomputes ``summary.json`` (repairing either).

    Stop signals: SIGTERM/SIGINT during training save a checkpoint and raise
    Preempted.  Once the last step is done they no longer stop the run: the
    final evaluation finishes and ``summary.json`` is written (seconds), so
    the run always ends with a complete workdir and no traceback.

    Raises:
      ConfigError, DataError, CheckpointError, BusyError: user mistakes, raised
        before anything is written (a workdir that holds a run keeps it as it was).
      OSError: the workdir cannot be created or written (errno EACCES, EPERM or EROFS).
      TrainingDiverged: a non-finite loss; the last good checkpoint is kept.
      Preempted: SIGTERM/SIGINT; a checkpoint of the current step was saved.
    """
    configs.validate(config)
    config = configs.override(config.copy_and_resolve_references(), dataset=data.canonical_name(config.dataset))
    runtime.check_workdir(workdir)
    with contextlib.ExitStack() as stack:
        # An existing workdir is claimed at once (a run there now is reported before any data
        # loads); a new one only once the data loaded, so that a user mistake leaves no folder.
        claimed = os.path.isdir(workdir)
        if claimed:
            stack.enter_context(runtime.claim_workdir(workdir))
        job = _prepare(config, workdir, parallel.make_mesh() if mesh is None else mesh)
        if not claimed:
            stack.enter_context(runtime.claim_workdir(workdir))
        with runtime.StopSignals() as stop:
            return _run(job, stop)


def _run(job: _Job, stop: runtime.StopSignals) -> Dict[str, Any]:
    """Resumes, trains and evaluates ``job`` in its claimed workdir."""
    config, workdir = job.config, job.workdir
    _resume(job)
    io.write_text_atomic(os.path.join(workdir, "config.json"), config.to_json_best_effort(indent=2))
    if job.meta["history"]:  # repairs a metrics.jsonl cut short or deleted
        _write_metrics(job)
    step_fn = jax.jit(train_step, static_argnames=STATIC_ARGNAMES, donate_argnums=0,
                      out_shardings=parallel.replicated_sharding(job.mesh))
    start = step = int(job.state.step)
    with runtime.tensorboard(workdir, step, job.meta["history"]) as job.tensorboard:
        with checkpoints.manager(workdir, max_to_keep=config.max_to_keep) as mngr:
            while step < job.total_steps:
                step = _train_epoch(job, step_fn, mngr, stop, step, compiling=step == start)
                if parallel.any_process(stop.received is not None) and step < job.total_steps:
                    raise runtime.preempted(stop.received, step, workdir)
        summary = _summary(job)
        job.tensorboard.scalars(summary["steps"], {f"summary/{k}": summary[k] for k in runtime.SUMMARY_SCALARS})
    io.write_json_atomic(os.path.join(workdir, "summary.json"), summary)
    return summary


def _prepare(config: ml_collections.ConfigDict, workdir: str, mesh: jax.sharding.Mesh) -> _Job:
    """Loads the data, builds the fresh state (``config`` is valid); reads and writes nothing in ``workdir``."""
    dataset = data.load_dataset(config.dataset, config.data_dir or None, seed=config.seed,
                                num_validation=config.num_validation)
    model_kwargs = runtime.plain(config.model_kwargs)
    model = models.create_model(config.model, dataset.num_classes, dataset.mean, dataset.std, model_kwargs,
                                config.seed)
    if models.is_import_path(config.model):
        models.check_classifier(model, config.model, dataset.num_classes, tuple(dataset.image_shape))
    n_train = len(dataset.train_images)
    batch_size = min(config.batch_size, n_train)
    steps_per_epoch = n_train // batch_size
    try:
        parallel.check_divisible(batch_size, mesh)
    except ParallelError as exc:
        clipped = f" (batch_size {config.batch_size} capped at the {n_train} training examples)" \
            if batch_size != config.batch_size else ""
        raise ConfigError(f"{exc}{clipped}") from None
    if batch_size != config.batch_size and io.is_primary():
        print(f"note: batch_size {config.batch_size} capped at the {n_train} training examples",
              file=sys.stderr, flush=True)
    tx = make_optimizer(config, steps_per_epoch)
    state = create_train_state(model, jax.random.PRNGKey(config.seed), dataset.image_shape, tx, config.jr_mode,
                               dataset.num_classes if config.adv_training == "cw_uat" else 0)
    state = parallel.replicate(state, mesh)
    model_spec = {"name": config.model, "num_classes": dataset.num_classes, "mean": list(dataset.mean),
                  "std": list(dataset.std), "image_shape": list(dataset.image_shape), "kwargs": model_kwargs,
                  "seed": int(config.seed)}
    if models.is_import_path(config.model):  # restored from any folder: attack.py searches there last
        model_spec["source_root"] = models.model_source_root(config.model)
    meta: Dict[str, Any] = {"model_spec": model_spec, "steps_per_epoch": steps_per_epoch,
                            "history": [], "epoch_sums": None, "train_seconds": 0.0,
                            "fingerprint": runtime.config_fingerprint(config)}
    return _Job(config, workdir, dataset, mesh, batch_size, steps_per_epoch, state, meta,
                adversary=make_adversary(config),
                input_std=tuple(dataset.std) if config.jr_space == "normalized" else None,
                jr_num_proj=None if config.jr_num_proj is None else int(config.jr_num_proj))


def _resume(job: _Job) -> None:
    """Restores the newest checkpoint into ``job`` if there is one and it belongs to this run's config.

    The restored meta takes this run's fingerprint (a superset, for a
    checkpoint of an earlier version that stored fewer fields).
    """
    step = checkpoints.latest_step(job.workdir)
    if step is None:
        return
    _, old_meta = checkpoints.restore_meta(job.workdir, step)
    fingerprint = job.meta["fingerprint"]
    runtime.check_resumable(job.workdir, old_meta, fingerprint, step, job.total_steps)
    _, job.state, job.meta = checkpoints.restore(job.workdir, job.state, step)
    job.meta["fingerprint"] = fingerprint


def _write_metrics(job: _Job) -> None:
    """``metrics.jsonl``: the checkpoint's history, one JSON line per epoch, written whole."""
    io.write_text_atomic(os.path.join(job.workdir, "metrics.jsonl"),
                         "".join(json.dumps(h) + "\n" for h in job.meta["history"]))


def _train_epoch(job: _Job, step_fn: Callable, mngr, stop: runtime.StopSignals, step: int,
                 compiling: bool = False) -> int:
    """Trains from global ``step`` to the end of its epoch, then evaluates and saves; returns the step.

    Mid-epoch checkpoints (every ``checkpoint_every_steps``, or on a stop
    signal) store the epoch's running sums, so a resumed epoch reports what
    an uninterrupted one would.  ``compiling``: the first step compiles (the
    progress bar says so).
    """
    config, spe = job.config, job.steps_per_epoch
    epoch, offset = divmod(step, spe)
    perm = epoch_permutation(config.seed, epoch, len(job.dataset.train_images))
    rows = parallel.process_rows(job.batch_size, job.mesh)  # this process's rows of every global batch
    # The epoch's running sums stay float32 on the devices, and a resumed run
    # continues from the exact float32 values saved: same additions, same bits.
    saved = (job.meta["epoch_sums"] if offset else None) or {}
    acc = parallel.replicate({k: np.asarray(saved.get(k, 0.0), np.float32) for k in SUM_KEYS}, job.mesh)
    clock = [time.time()]
    with runtime.progress_bar(config, epoch, offset, spe, io.is_primary(), compiling) as bar:
        timer = runtime.StepTimer(bar)
        for i in range(offset, spe):
            idx = np.sort(perm[i * job.batch_size : (i + 1) * job.batch_size])[rows]
            images, labels = parallel.shard_batch(
                (job.dataset.train_images[idx], job.dataset.train_labels[idx]), job.mesh, job.batch_size)
            key = parallel.replicate(np.asarray(step_key(config.seed, step)), job.mesh)
            job.state, aux = step_fn(job.state, images, labels, key, float(config.jr_lambda), job.jr_num_proj,
                                     job.input_std, job.adversary, config.jr_mode, int(config.jr_power_iters),
                                     float(config.trades_beta) if job.adversary.kind == "trades" else 0.0)
            # A sharded step, then a replicated sum: the pattern that deadlocks XLA:CPU's collectives
            # in the chunk loops (backend.pace); not seen here, paced the same way all the same.
            acc = backend.pace(_add_sums(acc, {k: aux[k] for k in acc}))
            step += 1
            timer.step(aux)
            # A signal may reach one host only: every process must agree to stop.
            stopping = parallel.any_process(stop.received is not None)
            at_interval = config.checkpoint_every_steps and step % config.checkpoint_every_steps == 0
            if (at_interval or stopping) and i + 1 < spe:
                job.meta["epoch_sums"] = _book(job, epoch, step, acc, clock)
                with timer.paused():
                    checkpoints.save(mngr, step, job.state, job.meta)
                if stopping:
                    raise runtime.preempted(stop.received, step, job.workdir)
    sums = _book(job, epoch, step, acc, clock)  # fetches the sums: every step is done
    _end_epoch(job, mngr, epoch, step, sums, timer.seconds_per_step())
    return step


def _book(job: _Job, epoch: int, step: int, acc: Dict[str, jax.Array], clock: list) -> Dict[str, float]:
    """The running sums on the host, checked finite, with the training time since ``clock`` booked.

    Raises TrainingDiverged before anything of a non-finite state is saved.
    """
    sums = _host_sums(acc)
    runtime.check_finite(sums, job.workdir, epoch, step)
    now = time.time()
    job.meta["train_seconds"] += now - clock[0]
    clock[0] = now
    return sums


def _end_epoch(job: _Job, mngr, epoch: int, step: int, sums: Dict[str, float],
               step_seconds: Optional[float] = None) -> None:
    """Evaluates, appends the epoch's line to the history, logs it, saves, rewrites ``metrics.jsonl``, reports.

    The event file is flushed before the checkpoint is saved: a resume from
    an earlier checkpoint then hides (purges) this epoch's events.
    """
    config, spe = job.config, job.steps_per_epoch
    line = {
        "epoch": epoch + 1,
        "step": step,
        "loss": sums["loss"] / spe,
        "ce": sums["ce"] / spe,
        "penalty": sums["penalty"] / spe if float(config.jr_lambda) > 0 else None,
        "train_accuracy": sums["correct"] / (spe * job.batch_size),
        "test_accuracy": _accuracy(job),
        "validation_accuracy": _accuracy(job, "validation") if config.num_validation else None,
        "train_seconds": job.meta["train_seconds"],
        "step_seconds": step_seconds,
    }
    job.meta["history"].append(line)
    job.meta["epoch_sums"] = None
    if job.tensorboard is not None:
        job.tensorboard.scalars(step, runtime.epoch_scalars(line))
        job.tensorboard.flush()
    checkpoints.save(mngr, step, job.state, job.meta)
    _write_metrics(job)
    if config.progress and io.is_primary():
        print(f"epoch {epoch + 1}/{config.num_epochs}: loss {line['loss']:.4f} "
              f"ce {line['ce']:.4f} test_accuracy {line['test_accuracy']:.4f}", flush=True)


def _host_sums(acc: Dict[str, jax.Array]) -> Dict[str, float]:
    """The running sums as Python floats (float32 values, exact: they round-trip)."""
    return {k: float(v) for k, v in acc.items()}


_add_sums = jax.jit(lambda a, b: jax.tree_util.tree_map(jnp.add, a, b))


@functools.lru_cache(maxsize=16)  # one entry per model of the recent runs
def _gathered_apply(apply_fn: Callable, mesh: jax.sharding.Mesh) -> Callable:
    """``apply_fn`` computed batch-split over ``mesh`` whose outputs (and input gradients) are replicated.

    This is what lets the host-side metrics (:func:`jacuap.metrics.accuracy`,
    :func:`jacuap.metrics.mean_frobenius_sq`) measure the model on any mesh,
    including one spanning several processes: every value they fetch is then
    whole on every process.  Cached, so the metrics' jitted steps (keyed on
    ``apply_fn``) compile once per run.
    """
    sharded = parallel.batch_sharded_apply(apply_fn, mesh)
    if mesh.size == 1:
        return sharded
    replicated = parallel.replicated_sharding(mesh)

    def gathered(params, x):
        x = jax.lax.with_sharding_constraint(x, replicated)  # its transpose replicates d/dx too
        return jax.lax.with_sharding_constraint(sharded(params, x), replicated)

    gathered.mesh = mesh  # parallel.batch_multiple: batches are rounded up to split evenly
    return gathered


def _accuracy(job: _Job, split: str = "test") -> float:
    """Accuracy on ``split``: :func:`jacuap.metrics.accuracy` (the one definition), on the run's mesh."""
    return metrics.accuracy(_gathered_apply(job.state.apply_fn, job.mesh), job.state.params,
                            getattr(job.dataset, f"{split}_images"), getattr(job.dataset, f"{split}_labels"))


# Traced (lax.scan over chunks): inputs spanning several processes stay on the devices.
_stacked_spectral_norm = jax.jit(jacobian.stacked_spectral_norm,
                                 static_argnames=("apply_fn", "num_iters", "batch_size", "method"))


def _summary(job: _Job) -> Dict[str, Any]:
    """Final test accuracy and the Jacobian bounds on the first ``eval_num_inputs`` test inputs (pixel units)."""
    config, state, dataset, meta, mesh = job.config, job.state, job.dataset, job.meta, job.mesh
    n = min(config.eval_num_inputs, len(dataset.test_images))
    x = np.asarray(dataset.test_images[:n])
    chunk = round_up(250, mesh.size)
    fro = metrics.mean_frobenius_sq(_gathered_apply(state.apply_fn, mesh), state.params, x, batch_size=chunk)
    key = parallel.replicate(np.asarray(jax.random.PRNGKey(config.seed)), mesh)
    sigma, _ = _stacked_spectral_norm(parallel.batch_sharded_apply(state.apply_fn, mesh), state.params,
                                      parallel.replicate(x, mesh), key, num_iters=100, batch_size=chunk, method="auto")
    return {
        "dataset": config.dataset,
        "model": config.model,
        "jr_lambda": float(config.jr_lambda),
        "jr_num_proj": config.jr_num_proj,
        "jr_space": config.jr_space,
        "jr_mode": config.jr_mode,
        "adv_training": config.adv_training,
        "adv_eps": float(config.adv_eps) if config.adv_training != "none" else None,
        "num_epochs": config.num_epochs,
        "steps": int(state.step),
        "seed": config.seed,
        "test_accuracy": _accuracy(job),
        "num_test": len(dataset.test_images),
        "num_validation": int(config.num_validation),
        "validation_accuracy": _accuracy(job, "validation") if config.num_validation else None,
        "train_accuracy_last_epoch": meta["history"][-1]["train_accuracy"] if meta["history"] else None,
        "mean_jacobian_frobenius_sq": float(fro),
        "stacked_spectral_norm": float(sigma),
        "jacobian_num_inputs": n,
        "batch_size": job.batch_size,
        "train_seconds": meta["train_seconds"],
        "data_source": dataset.source,
    }
