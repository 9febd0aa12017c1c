"""Jacobian-regularized training, in the shape of Flax's examples.

    loss(params) = mean_b CE(f(x_b), y_b) + jr_lambda * 0.5 * mean_b ||J(z_b)||_F^2

(:mod:`.loss`; ``z`` the normalised input, Hoffman et al.'s convention).

* :mod:`.state`: :class:`TrainState` (Flax's, plus the UAT perturbation;
  :class:`SpectralTrainState` adds the stacked-spectral penalty's vector),
  :func:`create_train_state`, :func:`make_optimizer`.
* :mod:`.loss`: :func:`loss_fn`.
* :mod:`.regularizers`: the ``jr_mode`` penalties beyond the Frobenius norm.
* :mod:`.step`: :func:`train_step`, :func:`eval_step`, :func:`step_key`.
* :mod:`.adversarial`: the PGD, UAT and TRADES adversarial-training baselines.
* :mod:`.checkpoints`: orbax save/restore of the train state and its
  metadata, :func:`restore_model` for a finished workdir.
* :mod:`.runtime`: the workdir's lock, stop signals, resume checks,
  divergence (:class:`Preempted`, :class:`TrainingDiverged`).
* :mod:`.loop`: :func:`train_and_evaluate` (the job train.py runs),
  :func:`epoch_permutation`.

Reported Jacobian metrics (``summary.json``) are always in pixel units.
:func:`restore_model` (from :mod:`.checkpoints`: orbax save/restore,
resume checks) rebuilds a trained
workdir's model::

    from jacuap import configs, train
    config = configs.override(configs.get_config("digits"), num_epochs=1, progress=False)
    summary = train.train_and_evaluate(config, "runs/digits")
    trained = train.restore_model("runs/digits")
"""

from jacuap.errors import ConfigError
from jacuap.train.adversarial import Adversary, make_adversary
from jacuap.train.checkpoints import RestoredModel, restore_model
from jacuap.train.loop import epoch_permutation, train_and_evaluate
from jacuap.train.loss import loss_fn
from jacuap.train.population import (POPULATION_STATIC_ARGNAMES, create_population, population_keys, population_size,
                                     population_train_step, stack_states, train_population, unstack_state)
from jacuap.train.runtime import Preempted, TrainingDiverged
from jacuap.train.state import SpectralTrainState, TrainState, create_train_state, make_optimizer
from jacuap.train.step import STATIC_ARGNAMES, eval_step, step_key, train_step

__all__ = [
    "train_and_evaluate",
    "train_step",
    "eval_step",
    "loss_fn",
    "create_train_state",
    "make_optimizer",
    "TrainState",
    "SpectralTrainState",
    "Adversary",
    "make_adversary",
    "STATIC_ARGNAMES",
    "TrainingDiverged",
    "Preempted",
    "ConfigError",
    "restore_model",
    "RestoredModel",
    "epoch_permutation",
    "step_key",
    "train_population",
    "population_train_step",
    "create_population",
    "stack_states",
    "unstack_state",
    "population_size",
    "population_keys",
    "POPULATION_STATIC_ARGNAMES",
]

