"""Many models of one method in one compiled program: ``vmap`` of :func:`~jacuap.train.step.train_step` over the state.

A population of ``P`` models of one architecture and config, differing in
their seed (initial parameters, step keys, data order) and/or ``jr_lambda``,
takes one optimizer step for every model at once::

    state_p, aux_p = train_step(state_p, x_p, y_p, step_key(seed_p, t), lambda_p)    p = 0 .. P-1

Every leaf of the population's state carries a leading axis ``P``
(:func:`stack_states`; :func:`unstack_state` takes model ``p`` back out).
The batch is shared (``images (B, *S)``, ``labels (B,)``: one data order) or
the model's own (``(P, B, *S)``, ``(P, B)``).  ``jr_lambdas`` is a traced
``(P,)`` array, so a population with other strengths reuses the compiled
step; a Python number instead is static and shared (``0.0``: the plain step,
penalty not computed).  The step is the ordinary one under ``jax.vmap``, not
a copy: model ``p`` computes what a separate run computes, bitwise in its
integer leaves and step keys, and to float32 rounding in its parameters
(XLA:CPU runs the batched matmuls and convolutions with other blockings than
one model's, so sums are reordered; Adam's ``m / (sqrt(v) + eps)`` can
magnify those ~1e-7 differences where a parameter's gradients nearly cancel).  Speed: benchmarks/population.py
(on XLA:CPU a CNN population is slower than separate runs: per-model kernels make grouped convolutions).

:func:`train_population` is :func:`~jacuap.train.loop.train_and_evaluate` for
``P`` workdirs at once: each ends up holding what a separate run writes
(checkpoints, ``config.json``, ``metrics.jsonl``, ``summary.json``), which
:func:`~jacuap.train.checkpoints.restore_model` reads and
``train_and_evaluate`` resumes on its own.

>>> import jax, jax.numpy as jnp, optax
>>> from jacuap import models
>>> model = models.create_model("mlp", 10, (0.5,), (0.25,), {"hidden": (8,)})
>>> pop = create_population(model, [0, 1, 2], (8, 8, 1), optax.sgd(0.1))
>>> population_size(pop), pop.params["dense0"]["kernel"].shape
(3, (3, 64, 8))
>>> x, y = jnp.ones((4, 8, 8, 1)), jnp.array([0, 1, 2, 3])
>>> keys = population_keys(jnp.array([0, 1, 2]), pop.step)
>>> pop, aux = jax.jit(population_train_step, static_argnames=POPULATION_STATIC_ARGNAMES)(
...     pop, x, y, keys, jnp.array([0.0, 0.1, 1.0]), 1)
>>> pop.step.tolist(), aux["loss"].shape, int(unstack_state(pop, 2).step)
([1, 1, 1], (3,), 1)
"""

from __future__ import annotations

import contextlib
import functools
import json
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jacuap import configs, data, io, models, parallel
from jacuap.errors import ConfigError
from jacuap.train import checkpoints, loop, runtime
from jacuap.train.adversarial import Adversary
from jacuap.train.state import TrainState, create_train_state, make_optimizer
from jacuap.train.step import STATIC_ARGNAMES, step_key, train_step

__all__ = ["POPULATION_STATIC_ARGNAMES", "stack_states", "unstack_state", "population_size", "create_population",
           "population_keys", "population_train_step", "train_population"]

#: The arguments of :func:`population_train_step` to mark static when jitting it (``jr_lambdas`` is traced).
POPULATION_STATIC_ARGNAMES = tuple(a for a in STATIC_ARGNAMES if a != "jr_lambda")

# What make_optimizer reads: the one config part the tx of two populations must share to share a program.
_OPTIMIZER_FIELDS = ("optimizer", "learning_rate", "lr_schedule", "momentum", "num_epochs")


def stack_states(states: Sequence[TrainState]) -> TrainState:
    """One population state from ``P`` states of one model: every array leaf ``(*s)`` becomes ``(P, *s)``.

    The first state's ``apply_fn`` and ``tx`` (static fields) serve every
    model; the states must hold arrays of the same tree and shapes.

    >>> import optax
    >>> from jacuap import models
    >>> model = models.create_model("mlp", 10, (0.5,), (0.25,), {"hidden": (8,)})
    >>> states = [create_train_state(model, jax.random.PRNGKey(s), (8, 8, 1), optax.sgd(0.1)) for s in (0, 1)]
    >>> stack_states(states).uap.shape
    (2, 8, 8, 1)
    """
    states = list(states)
    if not states:
        raise ValueError("stack_states: states is empty; a population holds at least one model")
    first = states[0]
    same = [s.replace(apply_fn=first.apply_fn, tx=first.tx) for s in states]
    try:
        # Strongly typed (a fresh state's step is weak, a restored one's is not): one jit cache entry for both.
        return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs).astype(jnp.result_type(*xs)), *same)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"stack_states: the states are not of one model and optimizer ({exc})") from None


def population_size(state: TrainState) -> int:
    """``P``, the number of models of a population state (the length of its ``step``)."""
    step = jnp.shape(state.step)
    if len(step) != 1:
        raise ValueError(f"population_size: not a population state (its step has shape {step}, not (P,))")
    return int(step[0])


def unstack_state(state: TrainState, index: int) -> TrainState:
    """Model ``index`` of a population state: what a separately trained model's state holds."""
    size = population_size(state)
    if not -size <= index < size:
        raise IndexError(f"unstack_state: index {index} out of range for a population of {size}")
    return jax.tree_util.tree_map(lambda x: x[index], state)


def create_population(model, seeds: Sequence[int], image_shape: Tuple[int, ...], tx: optax.GradientTransformation,
                      jr_mode: str = "frobenius", class_wise_uaps: int = 0) -> TrainState:
    """:func:`~jacuap.train.state.create_train_state` with ``PRNGKey(seed)`` for each seed, stacked.

    Model ``p`` starts where a separate run of seed ``seeds[p]`` starts.
    """
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("create_population: seeds is empty; a population holds at least one model")
    return stack_states([create_train_state(model, jax.random.PRNGKey(s), image_shape, tx, jr_mode, class_wise_uaps)
                         for s in seeds])


def population_keys(seeds: jax.Array, steps: jax.Array) -> jax.Array:
    """``(P, 2)`` keys, row ``p`` = :func:`~jacuap.train.step.step_key` ``(seeds[p], steps[p])``, bit for bit.

    >>> bool((population_keys(jnp.array([0, 7]), jnp.array([3, 3]))[1] == step_key(7, 3)).all())
    True
    """
    return jax.vmap(step_key)(jnp.asarray(seeds), jnp.asarray(steps))


def population_train_step(
    state: TrainState,
    images: jax.Array,
    labels: jax.Array,
    keys: jax.Array,
    jr_lambdas: Union[jax.Array, float],
    jr_num_proj: Optional[int],
    input_std: Optional[Tuple[float, ...]] = None,
    adversary: Adversary = Adversary(),
    jr_mode: str = "frobenius",
    jr_power_iters: int = 2,
    trades_beta: float = 0.0,
) -> Tuple[TrainState, Dict[str, jax.Array]]:
    """:func:`~jacuap.train.step.train_step` for each model of a population state, as one ``jax.vmap``.

    Args:
      state: a population state (:func:`stack_states`), leaves ``(P, ...)``.
      images, labels: one batch for all, ``(B, *S)`` and ``(B,)``; or each
        model's own, ``(P, B, *S)`` and ``(P, B)`` (told apart by ``labels.ndim``).
      keys: ``(P, 2)``, model ``p``'s step key (:func:`population_keys`).
      jr_lambdas: ``(P,)`` (or a scalar array, shared), traced; or a Python
        number, static and shared (``0`` skips the penalty as the plain step does).
      the rest: as :func:`~jacuap.train.step.train_step`, shared by all.

    Jit with ``static_argnames=POPULATION_STATIC_ARGNAMES`` (and
    ``"jr_lambdas"`` when it is a Python number).

    Returns:
      ``(new_state, aux)``, each of ``aux``'s values ``(P,)``.
    """
    size = keys.shape[0]
    if labels.ndim not in (1, 2) or (labels.ndim == 2 and labels.shape[0] != size):
        raise ValueError(f"population_train_step: labels has shape {labels.shape}; give (B,) for a batch shared "
                         f"by the {size} models or (P, B) = ({size}, B) for one batch each")
    data_axis = None if labels.ndim == 1 else 0
    static = isinstance(jr_lambdas, (int, float)) and not isinstance(jr_lambdas, bool)
    lambdas = jnp.float32(0.0) if static else jnp.asarray(jr_lambdas, jnp.float32)
    if lambdas.shape not in ((), (size,)):
        raise ValueError(f"population_train_step: jr_lambdas has shape {lambdas.shape}; give ({size},), one per "
                         f"model, or a scalar")

    def one(s, x, y, key, lam):
        weight = jr_lambdas if static else lam  # traced: the penalty is computed for every model (skips_penalty)
        return train_step(s, x, y, key, weight, jr_num_proj, input_std, adversary, jr_mode, jr_power_iters,
                          trades_beta)

    in_axes = (0, data_axis, data_axis, 0, 0 if lambdas.ndim else None)
    return jax.vmap(one, in_axes=in_axes)(state, images, labels, keys, lambdas)


def _keyed_step(state, images, labels, seeds, jr_lambdas, jr_num_proj, input_std, adversary, jr_mode,
                jr_power_iters, trades_beta):
    """The loop's step: each model's key drawn from its seed and its own step counter, in the same program."""
    return population_train_step(state, images, labels, population_keys(seeds, state.step), jr_lambdas,
                                 jr_num_proj, input_std, adversary, jr_mode, jr_power_iters, trades_beta)


# Module-level, so that a second population of the same shape (other lambdas, other seeds) finds its program.
_TRACED_STEP = jax.jit(_keyed_step, static_argnames=POPULATION_STATIC_ARGNAMES, donate_argnums=0)
_STATIC_STEP = jax.jit(_keyed_step, static_argnames=POPULATION_STATIC_ARGNAMES + ("jr_lambdas",), donate_argnums=0)


@functools.lru_cache(maxsize=8)
def _static_fields(model_key: str, optimizer_key: str, steps_per_epoch: int) -> Tuple[Callable, Any]:
    """The state's ``apply_fn`` and ``tx``, one object per model and optimizer.

    They are part of the state's pytree structure, which keys the jitted
    step's cache: fresh ones (each run makes its own) would recompile it.
    """
    spec = json.loads(model_key)
    model = models.create_model(spec["name"], spec["num_classes"], spec["mean"], spec["std"], spec["kwargs"])
    tx = make_optimizer(ml_collections.ConfigDict(json.loads(optimizer_key)), steps_per_epoch)
    return models.make_apply_fn(model), tx


def _members(config, workdirs, seeds, jr_lambdas) -> List[ml_collections.ConfigDict]:
    """Each model's config (checked, resolved as train_and_evaluate resolves it); ConfigError names the argument."""
    seeds, workdirs = list(seeds), list(workdirs)
    if isinstance(jr_lambdas, (int, float)) and not isinstance(jr_lambdas, bool):
        jr_lambdas = [jr_lambdas] * len(seeds)
    jr_lambdas = list(jr_lambdas)
    if not seeds:
        raise ConfigError("seeds: a population needs at least one model (P >= 1), got none")
    if len(jr_lambdas) != len(seeds):
        raise ConfigError(f"jr_lambdas: {len(jr_lambdas)} values for {len(seeds)} seeds; give one per model")
    if len(workdirs) != len(seeds):
        raise ConfigError(f"workdirs: {len(workdirs)} workdirs for {len(seeds)} seeds; give one per model")
    if len({str(w) for w in workdirs}) != len(workdirs):
        raise ConfigError(f"workdirs: each model needs its own workdir, got {workdirs}")
    if models.is_import_path(config.model):
        raise ConfigError(f"model: train_population trains the registered models ({', '.join(sorted(models.MODELS))}); "
                          f"train {config.model!r} with train_and_evaluate")
    out = []
    for p, (seed, lam) in enumerate(zip(seeds, jr_lambdas)):
        try:
            member = configs.override(config, seed=seed, jr_lambda=lam)
            configs.validate(member)
        except ConfigError as exc:
            raise ConfigError(f"model {p} (seeds[{p}]={seed!r}, jr_lambdas[{p}]={lam!r}): {exc}") from None
        out.append(configs.override(member.copy_and_resolve_references(), dataset=data.canonical_name(member.dataset)))
    return out


def _share_data(job, earlier) -> None:
    """``job`` holds the data of an ``earlier`` job when equal (any seed of a fixed split): one copy in memory."""
    fields = ("train_images", "train_labels", "test_images", "test_labels", "validation_images", "validation_labels")
    for other in earlier:
        if all(np.array_equal(getattr(other.dataset, f), getattr(job.dataset, f)) for f in fields):
            job.dataset = other.dataset
            return


def train_population(config: ml_collections.ConfigDict, workdirs: Sequence[str], seeds: Sequence[int],
                     jr_lambdas: Union[Sequence[float], float]) -> List[Dict[str, Any]]:
    """Trains ``P = len(seeds)`` models of ``config`` at once; model ``p`` is ``config`` with ``seed=seeds[p]``,
    ``jr_lambda=jr_lambdas[p]``, trained in ``workdirs[p]``; returns their ``summary.json`` dicts.

    Each workdir ends up as :func:`~jacuap.train.loop.train_and_evaluate`
    leaves it (its checkpoint format, the same data order, ``epoch_permutation(seed_p, epoch, n)``, and step keys;
    the final summary computed by ``train_and_evaluate`` itself).  Models of
    one seed (and one dataset) share each batch; others get their own. A
    population resumes when every workdir holds a checkpoint of the same
    step; a stop signal saves every model and raises
    :class:`~jacuap.train.runtime.Preempted`; an interrupted population can
    also be finished model by model with ``train_and_evaluate``.  Time fields
    (``train_seconds``, ``step_seconds``) are each model's share, the
    population's time over ``P``.  One device; registered models only.  With
    ``jr_mode="stacked_spectral"``, a ``lambda = 0`` model still updates its
    ``jr_vec`` (it weighs nothing: the parameters are the plain run's).

    Raises:
      ConfigError: empty ``seeds``; ``jr_lambdas`` or ``workdirs`` of another
        length; shared workdirs; a model's config invalid (named by index);
        seeds that split the data differently (``digits``); workdirs whose
        checkpoints are at different steps.
      the errors of ``train_and_evaluate`` (TrainingDiverged names the model).
    """
    members = _members(config, workdirs, seeds, jr_lambdas)
    workdirs = [str(w) for w in workdirs]
    if jax.process_count() > 1:
        raise ConfigError("train_population runs on one process; train multi-host runs with train_and_evaluate")
    for workdir in workdirs:
        runtime.check_workdir(workdir)
    mesh = parallel.make_mesh(jax.local_devices()[:1])
    # _prepare is train_and_evaluate's own: same data, model spec, meta and fingerprint.
    jobs = []
    for member, workdir in zip(members, workdirs):
        jobs.append(loop._prepare(configs.override(member, progress=False), workdir, mesh))
        _share_data(jobs[-1], jobs[:-1])
    specs = {json.dumps({k: v for k, v in j.meta["model_spec"].items() if k != "seed"}, sort_keys=True) for j in jobs}
    if len(specs) > 1:  # the split, and so the normalisation, follows the seed (digits, npz without a split)
        raise ConfigError(f"seeds: on {config.dataset} each seed has its own split and input normalisation, so these "
                          f"models differ beyond their weights; give one seed (a lambda sweep) or train them apart")
    with contextlib.ExitStack() as stack:
        for job in jobs:
            stack.enter_context(runtime.claim_workdir(job.workdir))
        for job in jobs:
            loop._resume(job)
        steps = {job.workdir: int(job.state.step) for job in jobs}
        if len(set(steps.values())) > 1:
            raise ConfigError(f"workdirs: their checkpoints are at different steps {steps}; finish each with "
                              f"train_and_evaluate, or use fresh workdirs")
        with runtime.StopSignals() as stop:
            _train(jobs, config, stop)
    return [loop.train_and_evaluate(m, w, mesh) for m, w in zip(members, workdirs)]


def _train(jobs, config, stop: runtime.StopSignals) -> None:
    """Trains every job from their common step to the end, saving each model as train_and_evaluate does."""
    first, size = jobs[0], len(jobs)
    spec = first.meta["model_spec"]
    model_key = json.dumps({k: spec[k] for k in ("name", "num_classes", "mean", "std", "kwargs")}, sort_keys=True)
    optimizer_key = json.dumps({k: first.config[k] for k in _OPTIMIZER_FIELDS})
    apply_fn, tx = _static_fields(model_key, optimizer_key, first.steps_per_epoch)
    state = stack_states([job.state.replace(apply_fn=apply_fn, tx=tx) for job in jobs])
    lambdas = [float(job.config.jr_lambda) for job in jobs]
    step_fn, weights = (_STATIC_STEP, 0.0) if not any(lambdas) else (_TRACED_STEP, jnp.asarray(lambdas, jnp.float32))
    seeds = jnp.asarray([job.config.seed for job in jobs], jnp.int32)
    shared = all(job.dataset is first.dataset and job.config.seed == first.config.seed for job in jobs)
    trades = float(first.config.trades_beta) if first.adversary.kind == "trades" else 0.0
    static = (first.jr_num_proj, first.input_std, first.adversary, first.config.jr_mode,
              int(first.config.jr_power_iters), trades)
    spe, batch, total = first.steps_per_epoch, first.batch_size, first.total_steps
    start = step = int(state.step[0])
    with contextlib.ExitStack() as stack:
        mngrs = [stack.enter_context(checkpoints.manager(j.workdir, max_to_keep=j.config.max_to_keep)) for j in jobs]
        while step < total:
            epoch, offset = divmod(step, spe)
            perms = [loop.epoch_permutation(job.config.seed, epoch, len(job.dataset.train_images))
                     for job in (jobs[:1] if shared else jobs)]
            saved = [(job.meta["epoch_sums"] if offset else None) or {} for job in jobs]
            acc = {k: jnp.asarray([s.get(k, 0.0) for s in saved], jnp.float32) for k in loop.SUM_KEYS}
            clock = [time.time()]
            with runtime.progress_bar(config, epoch, offset, spe, io.is_primary(), step == start) as bar:
                timer = runtime.StepTimer(bar)
                for i in range(offset, spe):
                    idx = [np.sort(perm[i * batch:(i + 1) * batch]) for perm in perms]
                    sources = [first.dataset] if shared else [job.dataset for job in jobs]
                    images = np.stack([d.train_images[j] for d, j in zip(sources, idx)])
                    labels = np.stack([d.train_labels[j] for d, j in zip(sources, idx)])
                    if shared:
                        images, labels = images[0], labels[0]
                    state, aux = step_fn(state, images, labels, seeds, weights, *static)
                    acc = loop._add_sums(acc, {k: aux[k] for k in acc})
                    step += 1
                    timer.step(aux)
                    stopping = stop.received is not None
                    every = first.config.checkpoint_every_steps
                    at_interval = every and step % every == 0
                    if (at_interval or stopping) and i + 1 < spe:
                        with timer.paused():
                            _save_all(jobs, mngrs, state, epoch, step, acc, clock)
                        if stopping:
                            raise runtime.preempted(stop.received, step, ", ".join(j.workdir for j in jobs))
            sums = _book(jobs, state, epoch, step, acc, clock)
            per_step = timer.seconds_per_step()
            for job, mngr, member_sums in zip(jobs, mngrs, sums):
                loop._end_epoch(job, mngr, epoch, step, member_sums, None if per_step is None else per_step / size)
            if config.progress and io.is_primary():
                accuracies = " ".join(f"{job.meta['history'][-1]['test_accuracy']:.4f}" for job in jobs)
                print(f"population epoch {epoch + 1}/{config.num_epochs}: test_accuracy {accuracies}", flush=True)
            if stop.received is not None and step < total:
                raise runtime.preempted(stop.received, step, ", ".join(j.workdir for j in jobs))


def _book(jobs, state, epoch: int, step: int, acc: Dict[str, jax.Array], clock: list) -> List[Dict[str, float]]:
    """Each model's running sums on the host, checked finite; its state unstacked into its job; its time booked."""
    host = {k: np.asarray(v) for k, v in acc.items()}
    now = time.time()
    sums = []
    for p, job in enumerate(jobs):
        member = {k: float(host[k][p]) for k in host}
        try:
            runtime.check_finite(member, job.workdir, epoch, step)
        except runtime.TrainingDiverged as exc:
            raise runtime.TrainingDiverged(f"model {p} (seed {job.config.seed}, jr_lambda {job.config.jr_lambda}, "
                                           f"{job.workdir}): {exc}") from None
        job.state = unstack_state(state, p)
        job.meta["train_seconds"] += (now - clock[0]) / len(jobs)
        sums.append(member)
    clock[0] = now
    return sums


def _save_all(jobs, mngrs, state, epoch: int, step: int, acc, clock) -> None:
    """A mid-epoch checkpoint of every model, with its epoch's running sums (as the loop's)."""
    for job, mngr, sums in zip(jobs, mngrs, _book(jobs, state, epoch, step, acc, clock)):
        job.meta["epoch_sums"] = sums
        checkpoints.save(mngr, step, job.state, job.meta)
