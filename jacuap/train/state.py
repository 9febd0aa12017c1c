"""The train state and its optimizer: Flax's ``TrainState`` plus a universal perturbation (and a singular vector).

>>> import jax, optax
>>> from jacuap import models
>>> model = models.create_model("mlp", 10, (0.5,), (0.25,))
>>> state = create_train_state(model, jax.random.PRNGKey(0), (8, 8, 1), optax.adam(1e-3))
>>> int(state.step), state.uap.shape
(0, (8, 8, 1))
"""

from __future__ import annotations

from typing import Tuple

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax.training import train_state

from jacuap import models
from jacuap.train.regularizers import init_spectral_vector

__all__ = ["TrainState", "SpectralTrainState", "create_train_state", "make_optimizer"]


class TrainState(train_state.TrainState):
    """Flax's TrainState (step, params, opt_state) plus ``uap``.

    ``uap`` (shape of one input) is the universal perturbation that universal
    adversarial training (``adv_training="uat"``) maintains across steps, or
    (``(K, *S)``) class-wise UAT's one per class (``"cw_uat"``); it stays
    zero otherwise.  ``apply_fn`` is :func:`jacuap.models.make_apply_fn`'s.
    The fields are the checkpoint's tree: renaming one breaks restoring old
    checkpoints.
    """

    uap: jax.Array = None


class SpectralTrainState(TrainState):
    """:class:`TrainState` plus ``jr_vec``: the state of ``jr_mode="stacked_spectral"`` runs.

    ``jr_vec`` (shape of one input, unit l2 norm) is the stacked-spectral
    penalty's right singular vector estimate, carried from step to step (the
    power iterations' warm start) and checkpointed with the rest.  A subclass
    rather than an optional field, so that every other run's state, and its
    checkpoint's tree, stay exactly what earlier versions wrote.
    """

    jr_vec: jax.Array = None


def make_optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.GradientTransformation:
    """Adam or SGD with Nesterov momentum, at a constant or cosine-decayed learning rate.

    Cosine: ``lr_t = learning_rate * (1 + cos(pi * t / T)) / 2`` over the
    run's ``T = num_epochs * steps_per_epoch`` steps.
    """
    total = config.num_epochs * steps_per_epoch
    if config.lr_schedule == "cosine":
        lr = optax.cosine_decay_schedule(config.learning_rate, max(total, 1))
    else:
        lr = config.learning_rate
    if config.optimizer == "adam":
        return optax.adam(lr)
    return optax.sgd(lr, momentum=config.momentum, nesterov=True)


def create_train_state(
    model, key: jax.Array, image_shape: Tuple[int, ...], tx: optax.GradientTransformation,
    jr_mode: str = "frobenius",
    class_wise_uaps: int = 0,
) -> TrainState:
    """Fresh parameters (drawn with ``key``) and optimizer state for ``model``; ``uap`` zero.

    ``uap`` has the shape of one input, or ``(class_wise_uaps, *S)`` when
    ``class_wise_uaps`` (the number of classes of a class-wise UAT run) is
    positive.  With ``jr_mode="stacked_spectral"``, a
    :class:`SpectralTrainState` whose ``jr_vec`` is a random unit vector
    drawn with ``fold_in(key, 1)``.
    """
    params = models.init_params(model, key, image_shape)
    uap_shape = ((int(class_wise_uaps),) if class_wise_uaps else ()) + tuple(image_shape)
    kwargs = dict(apply_fn=models.make_apply_fn(model), params=params, tx=tx, uap=jnp.zeros(uap_shape, jnp.float32))
    if jr_mode == "stacked_spectral":
        state = SpectralTrainState.create(
            jr_vec=init_spectral_vector(jax.random.fold_in(key, 1), tuple(image_shape)), **kwargs)
    else:
        state = TrainState.create(**kwargs)
    # Flax starts `step` as the Python int 0, a weakly typed scalar under jit; a restored checkpoint's is a
    # strong int32, so a resumed run would compile its step a second time.  Start strong.
    return state.replace(step=jnp.asarray(0, jnp.int32))
