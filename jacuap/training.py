"""Jacobian-regularized training, in the shape of Flax's examples.

    loss(params) = mean_b CE(f(x_b), y_b) + jr_lambda * (1/2) * mean_b ||J(z_b)||_F^2

with ``||J||_F^2`` exact (``jr_num_proj=None``, K VJPs) or estimated with
``jr_num_proj`` random projections (Hoffman, Roberts & Yaida 2019), both from
``jacuap.jacobian.logits_and_frobenius_sq`` so the logits and the penalty
share one forward pass.

The convention is Hoffman et al.'s ``JacobianReg`` exactly, so that a
``jr_lambda`` means what ``lambda_JR`` means in the PyTorch code researchers
know: the factor 1/2, and (``jr_space="normalized"``, the default) the
Jacobian with respect to the normalised input ``z = (x - mean) / std``, which
is what that code differentiates when normalisation is a data transform.
Since ``J(z) = J(x) diag(std)``, this is the pixel-space penalty with each
channel weighted by ``std_c^2``; ``jr_space="pixels"`` penalises ``J(x)``
itself (the units of the UAP bounds, SPEC §2).  Reported Jacobian metrics
(``summary.json``, ``jacuap.metrics``) are always in pixel units.

``train_and_evaluate(config, workdir)`` runs the whole job: it validates the
config and loads the data before writing anything, resumes from the newest
checkpoint in ``workdir`` (same data order and RNG stream: both are pure
functions of the seed and the global step), saves a checkpoint every epoch
(and every ``checkpoint_every_steps`` steps, and on SIGTERM/SIGINT), stops on
a non-finite loss keeping the last good checkpoint, and writes
``metrics.jsonl`` (one line per epoch) and ``summary.json``.

Scale (``jacuap.parallel``): training uses every device of a ``Mesh``
(default: all devices of all processes).  Each global batch is split over
the devices on its leading axis, the state is replicated, and XLA turns the
batch means into all-reduces, so the run computes the same function of the
same batches whatever the device count (equal up to float summation order).
On several hosts (after ``parallel.initialize_multihost()``) every process
builds only its own rows of each batch, all processes join each orbax save,
and only process 0 writes ``config.json``, ``metrics.jsonl``,
``summary.json`` and progress output.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import time
from typing import Any, Callable, Dict, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax.training import train_state

from jacuap import attacks, checkpoints, data, jacobian, models, parallel

__all__ = [
    "ConfigError",
    "TrainingDiverged",
    "Preempted",
    "TrainState",
    "validate_config",
    "create_train_state",
    "make_optimizer",
    "loss_fn",
    "train_step",
    "eval_step",
    "evaluate",
    "epoch_permutation",
    "train_and_evaluate",
    "restore_model",
    "RestoredModel",
]

OPTIMIZERS = ("adam", "sgd")
JR_SPACES = ("normalized", "pixels")
ADV_TRAINING = ("none", "pgd", "uat")
LR_SCHEDULES = ("constant", "cosine")


class ConfigError(ValueError):
    """A configuration value is invalid (a user mistake: one-line message)."""


class TrainingDiverged(RuntimeError):
    """The loss became non-finite; the last good checkpoint was kept."""


class Preempted(Exception):
    """SIGTERM/SIGINT arrived; a checkpoint was saved and the run can resume."""


class TrainState(train_state.TrainState):
    """Flax's TrainState (step, params, opt_state) plus ``uap``.

    ``uap`` (shape of one input) is the universal perturbation that universal
    adversarial training (``adv_training="uat"``) maintains across steps; it
    stays zero otherwise.  ``apply_fn`` is our pure one.
    """

    uap: jax.Array = None


class Adversary(NamedTuple):
    """Static settings of the adversarial-training baselines (hashable, for jit).

    ``kind``: ``"none"``; ``"pgd"`` (Madry et al. 2018: train on per-input
    l_inf PGD examples, ``steps`` steps of ``step_size``); ``"uat"`` (Shafahi
    et al. 2020, FGSM-UAT: one shared ``delta`` ascends the loss by
    ``delta <- P_eps(delta + step_size * sign(grad_delta L))`` at every step
    while the model trains on ``clip(x + delta)``).
    """

    kind: str = "none"
    eps: float = 0.0
    steps: int = 0
    step_size: float = 0.0


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError on any value a run cannot use; touches nothing on disk."""

    def need(ok: bool, message: str) -> None:
        if not ok:
            raise ConfigError(message)

    need(config.dataset in data.DATASETS,
         f"unknown dataset {config.dataset!r}; choose one of {', '.join(data.DATASETS)}")
    need(config.model in models.MODELS,
         f"unknown model {config.model!r}; choose one of {', '.join(sorted(models.MODELS))}")
    need(_is_number(config.jr_lambda) and config.jr_lambda >= 0 and math.isfinite(config.jr_lambda),
         f"jr_lambda must be a finite number >= 0, got {config.jr_lambda!r}")
    need(config.jr_num_proj is None or (_is_int(config.jr_num_proj) and config.jr_num_proj >= 1),
         f"jr_num_proj must be None (exact) or an integer >= 1, got {config.jr_num_proj!r}")
    need(config.jr_space in JR_SPACES,
         f"unknown jr_space {config.jr_space!r}; choose one of {', '.join(JR_SPACES)}")
    need(_is_int(config.num_epochs) and config.num_epochs > 0,
         f"num_epochs must be a positive integer, got {config.num_epochs!r}")
    need(_is_int(config.batch_size) and config.batch_size > 0,
         f"batch_size must be a positive integer, got {config.batch_size!r}")
    need(_is_number(config.learning_rate) and config.learning_rate > 0,
         f"learning_rate must be > 0, got {config.learning_rate!r}")
    need(config.optimizer in OPTIMIZERS,
         f"unknown optimizer {config.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
    need(config.lr_schedule in LR_SCHEDULES,
         f"unknown lr_schedule {config.lr_schedule!r}; choose one of {', '.join(LR_SCHEDULES)}")
    need(config.adv_training in ADV_TRAINING,
         f"unknown adv_training {config.adv_training!r}; choose one of {', '.join(ADV_TRAINING)}")
    need(_is_number(config.adv_eps) and 0 <= config.adv_eps <= 1,
         f"adv_eps must be in [0, 1] (pixel units), got {config.adv_eps!r}")
    need(_is_int(config.adv_steps) and config.adv_steps >= 1,
         f"adv_steps must be a positive integer, got {config.adv_steps!r}")
    need(_is_number(config.adv_step_size) and config.adv_step_size >= 0,
         f"adv_step_size must be >= 0 (0 = default), got {config.adv_step_size!r}")
    need(_is_int(config.checkpoint_every_steps) and config.checkpoint_every_steps >= 0,
         f"checkpoint_every_steps must be an integer >= 0, got {config.checkpoint_every_steps!r}")
    if config.data_dir:
        need(os.path.isdir(config.data_dir) and os.access(config.data_dir, os.R_OK | os.X_OK),
             f"data_dir {config.data_dir!r} is not a readable directory")


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def make_optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.GradientTransformation:
    """Adam or SGD with momentum, with a constant or cosine-decayed learning rate."""
    total = config.num_epochs * steps_per_epoch
    if config.lr_schedule == "cosine":
        lr = optax.cosine_decay_schedule(config.learning_rate, max(total, 1))
    else:
        lr = config.learning_rate
    if config.optimizer == "adam":
        return optax.adam(lr)
    return optax.sgd(lr, momentum=config.momentum, nesterov=True)


def create_train_state(
    model, key: jax.Array, image_shape: Tuple[int, ...], tx: optax.GradientTransformation
) -> TrainState:
    """Fresh parameters and optimizer state for ``model``."""
    params = models.init_params(model, key, image_shape)
    return TrainState.create(apply_fn=models.make_apply_fn(model), params=params, tx=tx,
                             uap=jnp.zeros(image_shape, jnp.float32))


def make_adversary(config: ml_collections.ConfigDict) -> Adversary:
    """The ``Adversary`` of a config; default step sizes where ``adv_step_size == 0``.

    PGD: ``2.5 * eps / steps`` (Madry et al.).  UAT: ``eps / 4``, so the shared
    ``delta`` can cross the ball in a few steps yet does not flip at every one.
    """
    if config.adv_training == "none":
        return Adversary()
    eps = float(config.adv_eps)
    step = float(config.adv_step_size)
    if not step:
        step = 2.5 * eps / config.adv_steps if config.adv_training == "pgd" else eps / 4
    return Adversary(config.adv_training, eps, int(config.adv_steps), step)


def loss_fn(
    params: Any,
    apply_fn: Callable,
    images: jax.Array,
    labels: jax.Array,
    jr_lambda: float,
    key: Optional[jax.Array],
    jr_num_proj: Optional[int],
    input_std: Optional[Tuple[float, ...]] = None,
) -> Tuple[jax.Array, Dict[str, jax.Array]]:
    """``CE + jr_lambda * (1/2) * mean ||J||_F^2`` and its parts.

    ``input_std``: per-channel std of the model's input normalisation; when
    given, the Jacobian is taken with respect to the normalised input
    ``z = (x - mean) / std`` (``jr_space="normalized"``), computed by the same
    kernel on ``z -> f(x + std * (z - z_b))`` at ``z = z_b``, whose Jacobian
    is ``J(x) diag(std)``.  With ``jr_lambda == 0`` (a Python number) the
    penalty is not computed at all, so the plain model trains at plain speed.
    """
    if jr_lambda == 0:
        logits = apply_fn(params, images)
        penalty = jnp.zeros((), logits.dtype)
    else:
        if input_std is None:
            jr_apply, jr_inputs = apply_fn, images
        else:
            std = jnp.asarray(input_std, images.dtype)
            # Shift so that the kernel is evaluated at the same point x; the
            # offset cancels and only the chain-rule factor std remains.
            jr_apply = lambda p, z: apply_fn(p, images + std * (z - images / std))
            jr_inputs = images / std
        logits, fro = jacobian.logits_and_frobenius_sq(jr_apply, params, jr_inputs, key, jr_num_proj)
        penalty = 0.5 * jnp.mean(fro)
    ce = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))
    loss = ce + jr_lambda * penalty
    correct = jnp.sum(jnp.argmax(logits, -1) == labels)
    return loss, {"loss": loss, "ce": ce, "penalty": penalty, "correct": correct}


def train_step(
    state: TrainState,
    images: jax.Array,
    labels: jax.Array,
    key: jax.Array,
    jr_lambda: float,
    jr_num_proj: Optional[int],
    input_std: Optional[Tuple[float, ...]] = None,
    adversary: Adversary = Adversary(),
) -> Tuple[TrainState, Dict[str, jax.Array]]:
    """One optimizer step on a batch ``images (B, *S)``, ``labels (B,)``.

    Jit with ``static_argnames=("jr_lambda", "jr_num_proj", "input_std",
    "adversary")`` and donate the state.  ``key`` is the step's own key
    (see ``_step_key``): it draws the random projections and PGD's start.
    """
    jr_key, adv_key = jax.random.split(key)
    if adversary.kind == "pgd":
        images = jax.lax.stop_gradient(attacks.pgd(
            state.apply_fn, state.params, images, labels, eps=adversary.eps, norm="linf",
            step_size=adversary.step_size, num_steps=adversary.steps, key=adv_key))

    def objective(params, uap):
        inputs = jnp.clip(images + uap, 0.0, 1.0) if adversary.kind == "uat" else images
        return loss_fn(params, state.apply_fn, inputs, labels, jr_lambda, jr_key, jr_num_proj, input_std)

    argnums = (0, 1) if adversary.kind == "uat" else 0
    (_, aux), grads = jax.value_and_grad(objective, argnums=argnums, has_aux=True)(state.params, state.uap)
    uap = state.uap
    if adversary.kind == "uat":
        grads, uap_grad = grads
        uap = attacks.project(uap + adversary.step_size * jnp.sign(uap_grad), "linf", adversary.eps)
    return state.apply_gradients(grads=grads, uap=uap), aux


def eval_step(params: Any, apply_fn: Callable, images: jax.Array, labels: jax.Array, mask: jax.Array):
    """Number of correct predictions among the unmasked examples of a batch."""
    pred = jnp.argmax(apply_fn(params, images), -1)
    return jnp.sum((pred == labels) * mask)


_eval_step = jax.jit(eval_step, static_argnums=1)


def evaluate(apply_fn: Callable, params: Any, images: np.ndarray, labels: np.ndarray, batch_size: int = 1000,
             mesh: Optional[jax.sharding.Mesh] = None) -> float:
    """Accuracy over a whole set, in fixed-size padded batches (one compilation).

    With ``mesh`` (and ``params`` replicated on it), each batch (its size
    rounded up to a multiple of the device count) is split over the devices;
    on several hosts each process builds only its own rows.
    """
    n = len(images)
    batch_size = min(batch_size, n)
    if mesh is not None:
        batch_size = parallel.round_up(batch_size, mesh.size)
        rows = parallel.process_rows(batch_size, mesh)
    correct = 0
    for start in range(0, n, batch_size):
        xb, yb = images[start : start + batch_size], labels[start : start + batch_size]
        pad = batch_size - len(xb)
        mask = np.concatenate([np.ones(len(xb), np.float32), np.zeros(pad, np.float32)])
        if pad:
            xb = np.concatenate([xb, np.zeros((pad,) + xb.shape[1:], xb.dtype)])
            yb = np.concatenate([yb, np.zeros(pad, yb.dtype)])
        if mesh is not None:
            xb, yb, mask = parallel.shard_batch((xb[rows], yb[rows], mask[rows]), mesh, batch_size)
        correct += float(_eval_step(params, apply_fn, xb, yb, mask))
    return float(correct) / n


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """The training order of ``epoch``: a pure function of (seed, epoch).

    Resuming mid-epoch recomputes the same order and skips the batches done.
    """
    return np.random.default_rng([seed, epoch]).permutation(n)


def _step_key(seed: int, step) -> jax.Array:
    """The PRNG key of global step ``step`` (for the random projections)."""
    return jax.random.fold_in(jax.random.PRNGKey(seed), step)


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
    if not os.path.isdir(workdir):
        raise checkpoints.CheckpointError(f"workdir {workdir!r} does not exist")
    config_path = os.path.join(workdir, "config.json")
    try:
        with open(config_path) as f:
            config = ml_collections.ConfigDict(json.load(f))
    except (OSError, ValueError) as exc:
        raise checkpoints.CheckpointError(
            f"{config_path} is missing or unreadable ({type(exc).__name__}); is {workdir!r} a train.py workdir?"
        ) from None
    _, meta = checkpoints.restore_meta(workdir)
    spec = meta["model_spec"]
    model = models.create_model(spec["name"], spec["num_classes"], spec["mean"], spec["std"])
    tx = make_optimizer(config, meta["steps_per_epoch"])
    template = create_train_state(model, jax.random.PRNGKey(0), tuple(spec["image_shape"]), tx)
    step, state, meta = checkpoints.restore(workdir, template)
    return RestoredModel(config, model, models.make_apply_fn(model), state.params, step, meta)


def _write_atomic(path: str, text: str) -> None:
    """Process 0 writes ``text`` to ``path`` through a temporary file, fsync and a rename."""
    parallel.write_text_atomic(path, text)


class _StopSignals:
    """Turns SIGTERM/SIGINT into a flag checked between steps."""

    def __init__(self):
        self.received: Optional[int] = None
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, frame):
        self.received = signum

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False


def _config_fingerprint(config: ml_collections.ConfigDict) -> Dict[str, Any]:
    """The settings a resumed run must share with the run that wrote the checkpoint."""
    keys = ("dataset", "model", "jr_lambda", "jr_num_proj", "jr_space", "num_epochs", "batch_size", "learning_rate",
            "optimizer", "lr_schedule", "seed", "adv_training", "adv_eps", "adv_steps", "adv_step_size")
    return {k: config[k] for k in keys}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       mesh: Optional[jax.sharding.Mesh] = None) -> Dict[str, Any]:
    """Trains ``config`` in ``workdir`` (resuming if it holds a checkpoint); returns the summary.

    Writes ``workdir/config.json``, ``workdir/checkpoints/``,
    ``workdir/metrics.jsonl`` and ``workdir/summary.json`` (process 0 only).
    ``mesh``: the devices to train on (default ``parallel.make_mesh()``, every
    device); ``batch_size`` must be a multiple of their number.

    Raises:
      ConfigError, data.DataError, checkpoints.CheckpointError: user mistakes,
        raised before anything is written.
      TrainingDiverged: a non-finite loss; the last good checkpoint is kept.
      Preempted: SIGTERM/SIGINT; a checkpoint of the current step was saved.
    """
    validate_config(config)
    dataset = data.load_dataset(config.dataset, config.data_dir or None, seed=config.seed)
    model = models.create_model(config.model, dataset.num_classes, dataset.mean, dataset.std)
    n_train = len(dataset.train_images)
    batch_size = min(config.batch_size, n_train)
    steps_per_epoch = n_train // batch_size
    mesh = parallel.make_mesh() if mesh is None else mesh
    try:
        parallel.check_divisible(batch_size, mesh)
    except parallel.ParallelError as exc:
        clipped = f" (batch_size {config.batch_size} capped at the {n_train} training examples)" \
            if batch_size != config.batch_size else ""
        raise ConfigError(f"{exc}{clipped}") from None
    primary = parallel.is_primary()
    tx = make_optimizer(config, steps_per_epoch)
    state = create_train_state(model, jax.random.PRNGKey(config.seed), dataset.image_shape, tx)
    state = parallel.replicate(state, mesh)
    model_spec = {
        "name": config.model,
        "num_classes": dataset.num_classes,
        "mean": list(dataset.mean),
        "std": list(dataset.std),
        "image_shape": list(dataset.image_shape),
    }
    meta: Dict[str, Any] = {"model_spec": model_spec, "steps_per_epoch": steps_per_epoch,
                            "history": [], "epoch_sums": None, "train_seconds": 0.0,
                            "fingerprint": _config_fingerprint(config)}

    # Resume (validates the checkpoint before we write anything).
    if checkpoints.latest_step(workdir) is not None:
        _, old_meta = checkpoints.restore_meta(workdir)
        if old_meta.get("fingerprint") != meta["fingerprint"]:
            diff = {k: (old_meta.get("fingerprint", {}).get(k), v)
                    for k, v in meta["fingerprint"].items()
                    if old_meta.get("fingerprint", {}).get(k) != v}
            raise checkpoints.CheckpointError(
                f"workdir {workdir!r} holds a run with another config {diff}; use a fresh --workdir")
        _, state, meta = checkpoints.restore(workdir, state)
    os.makedirs(workdir, exist_ok=True)
    _write_atomic(os.path.join(workdir, "config.json"), config.to_json_best_effort(indent=2))

    replicated = parallel.replicated_sharding(mesh)
    step_fn = jax.jit(train_step, static_argnames=("jr_lambda", "jr_num_proj", "input_std", "adversary"),
                      donate_argnums=0, out_shardings=replicated)
    rows = parallel.process_rows(batch_size, mesh)  # this process's rows of every global batch
    adversary = make_adversary(config)
    input_std = tuple(dataset.std) if config.jr_space == "normalized" else None
    total_steps = config.num_epochs * steps_per_epoch
    start_step = int(state.step)
    jr_lambda = float(config.jr_lambda)
    jr_num_proj = None if config.jr_num_proj is None else int(config.jr_num_proj)

    with checkpoints.manager(workdir, max_to_keep=config.max_to_keep) as mngr, _StopSignals() as stop:

        def save(step, sums):
            meta["epoch_sums"] = sums
            checkpoints.save(mngr, step, state, meta)

        step = start_step
        while step < total_steps:
            epoch, offset = divmod(step, steps_per_epoch)
            perm = epoch_permutation(config.seed, epoch, n_train)
            # The epoch's running sums stay float32 on the devices, and a resumed run
            # continues from the exact float32 values saved: same additions, same bits.
            sums = meta["epoch_sums"] if offset else None
            acc = parallel.replicate({k: np.asarray((sums or {}).get(k, 0.0), np.float32)
                                      for k in ("loss", "ce", "penalty", "correct")}, mesh)
            epoch_start = time.time()
            bar = _progress(config, epoch, offset, steps_per_epoch, primary)
            for i in range(offset, steps_per_epoch):
                idx = np.sort(perm[i * batch_size : (i + 1) * batch_size])[rows]
                images, labels = parallel.shard_batch(
                    (dataset.train_images[idx], dataset.train_labels[idx]), mesh, batch_size)
                key = parallel.replicate(np.asarray(_step_key(config.seed, step)), mesh)
                state, aux = step_fn(state, images, labels, key, jr_lambda, jr_num_proj, input_std, adversary)
                acc = _add_sums(acc, {k: aux[k] for k in acc})
                step += 1
                bar.update(1)
                # A signal may reach one host only: every process must agree to stop.
                stopping = parallel.any_process(stop.received is not None)
                at_interval = config.checkpoint_every_steps and step % config.checkpoint_every_steps == 0
                if (at_interval or stopping) and i + 1 < steps_per_epoch:
                    sums_now = _host_sums(acc)
                    if not all(math.isfinite(v) for v in sums_now.values()):
                        bar.close()
                        raise TrainingDiverged(_diverged_message(workdir, epoch, step))
                    meta["train_seconds"] += time.time() - epoch_start
                    epoch_start = time.time()
                    save(step, sums_now)
                    if stopping:
                        bar.close()
                        raise Preempted(f"stopped by signal {stop.received or 'on another host'} at step {step}; "
                                        f"rerun the same command to resume from {workdir}")
            bar.close()
            sums = _host_sums(acc)
            if not all(math.isfinite(v) for v in sums.values()):
                raise TrainingDiverged(_diverged_message(workdir, epoch, step))
            meta["train_seconds"] += time.time() - epoch_start
            test_accuracy = evaluate(state.apply_fn, state.params, dataset.test_images, dataset.test_labels,
                                     mesh=mesh)
            line = {
                "epoch": epoch + 1,
                "step": step,
                "loss": sums["loss"] / steps_per_epoch,
                "ce": sums["ce"] / steps_per_epoch,
                "penalty": sums["penalty"] / steps_per_epoch if jr_lambda > 0 else None,
                "train_accuracy": sums["correct"] / (steps_per_epoch * batch_size),
                "test_accuracy": test_accuracy,
                "train_seconds": meta["train_seconds"],
            }
            meta["history"].append(line)
            save(step, None)
            _write_atomic(os.path.join(workdir, "metrics.jsonl"),
                          "".join(json.dumps(h) + "\n" for h in meta["history"]))
            if config.progress and primary:
                print(f"epoch {epoch + 1}/{config.num_epochs}: loss {line['loss']:.4f} "
                      f"ce {line['ce']:.4f} test_accuracy {test_accuracy:.4f}", flush=True)
            if parallel.any_process(stop.received is not None) and step < total_steps:
                raise Preempted(f"stopped by signal {stop.received or 'on another host'} at step {step}; "
                                f"rerun the same command to resume from {workdir}")

    summary = _summary(config, state, dataset, meta, mesh)
    _write_atomic(os.path.join(workdir, "summary.json"), json.dumps(summary, indent=2) + "\n")
    return summary


def _host_sums(acc: Dict[str, jax.Array]) -> Dict[str, float]:
    """The running sums as Python floats (float32 values, exact: they round-trip)."""
    return {k: float(v) for k, v in acc.items()}


def _diverged_message(workdir: str, epoch: int, step: int) -> str:
    last = checkpoints.latest_step(workdir)
    kept = f"the last good checkpoint (step {last}) is kept" if last is not None else "no checkpoint was written"
    return (f"training diverged (non-finite loss) in epoch {epoch + 1} before step {step}; "
            f"{kept}; lower learning_rate or jr_lambda")


_add_sums = jax.jit(lambda a, b: jax.tree_util.tree_map(jnp.add, a, b))


def _progress(config, epoch: int, offset: int, total: int, primary: bool = True):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=offset, desc=f"epoch {epoch + 1}/{config.num_epochs}",
                disable=not (config.progress and primary), leave=False, dynamic_ncols=True)


def _summary(config, state: TrainState, dataset: data.Dataset, meta: Dict[str, Any],
             mesh: Optional[jax.sharding.Mesh] = None) -> Dict[str, Any]:
    """Final test accuracy and the Jacobian bounds on the first ``eval_num_inputs`` test inputs.

    With ``mesh``, the Jacobian kernels see ``parallel.batch_sharded_apply``:
    each chunk of inputs is split over the devices.
    """
    mesh = parallel.make_mesh(jax.devices()[:1]) if mesh is None else mesh
    n = min(config.eval_num_inputs, len(dataset.test_images))
    x = parallel.replicate(np.asarray(dataset.test_images[:n]), mesh)
    apply_fn = parallel.batch_sharded_apply(state.apply_fn, mesh)
    chunk = parallel.round_up(250, mesh.size)
    key = parallel.replicate(np.asarray(jax.random.PRNGKey(config.seed)), mesh)
    fro = jax.jit(_mean_frobenius_sq, static_argnums=(0, 3))(apply_fn, state.params, x, chunk)
    sigma, _ = jax.jit(jacobian.stacked_spectral_norm, static_argnames=("apply_fn", "num_iters", "batch_size", "method"))(
        apply_fn, state.params, x, key, num_iters=100, batch_size=chunk, method="auto")
    return {
        "dataset": config.dataset,
        "model": config.model,
        "jr_lambda": float(config.jr_lambda),
        "jr_num_proj": config.jr_num_proj,
        "jr_space": config.jr_space,
        "adv_training": config.adv_training,
        "adv_eps": float(config.adv_eps) if config.adv_training != "none" else None,
        "num_epochs": config.num_epochs,
        "steps": int(state.step),
        "seed": config.seed,
        "test_accuracy": evaluate(state.apply_fn, state.params, dataset.test_images, dataset.test_labels,
                                  mesh=mesh),
        "train_accuracy_last_epoch": meta["history"][-1]["train_accuracy"] if meta["history"] else None,
        "mean_jacobian_frobenius_sq": float(fro),
        "stacked_spectral_norm": float(sigma),
        "jacobian_num_inputs": n,
        "train_seconds": meta["train_seconds"],
        "data_source": dataset.source,
    }


def _mean_frobenius_sq(apply_fn, params, x, batch_size):
    """Exact mean ``||J||_F^2`` over ``x``, chunk by chunk (memory O(batch_size)).

    One jitted reduction rather than ``metrics.mean_frobenius_sq``: that one
    gathers each chunk's values on the host, which a multi-process run cannot
    do with arrays that span processes; this returns a replicated scalar.
    """
    chunks, mask = jacobian._chunks(x, batch_size)

    def step(total, inputs):
        xc, mc = inputs
        return total + jnp.sum(jacobian.frobenius_sq(apply_fn, params, xc) * mc), None

    total, _ = jax.lax.scan(step, jnp.zeros((), x.dtype), (chunks, mask))
    return total / x.shape[0]
