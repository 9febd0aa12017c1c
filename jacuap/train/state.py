"""The train state and its optimizer: Flax's ``TrainState`` plus a universal perturbation.

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

__all__ = ["TrainState", "create_train_state", "make_optimizer"]


class TrainState(train_state.TrainState):
    """Flax's TrainState (step, params, opt_state) plus ``uap``.

    ``uap`` (shape of one input) is the universal perturbation that universal
    adversarial training (``adv_training="uat"``) maintains across steps; it
    stays zero otherwise.  ``apply_fn`` is :func:`jacuap.models.make_apply_fn`'s.
    The fields are the checkpoint's tree: renaming one breaks restoring old
    checkpoints.
    """

    uap: jax.Array = None


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
    model, key: jax.Array, image_shape: Tuple[int, ...], tx: optax.GradientTransformation
) -> TrainState:
    """Fresh parameters (drawn with ``key``) and optimizer state for ``model``; ``uap`` zero."""
    params = models.init_params(model, key, image_shape)
    return TrainState.create(apply_fn=models.make_apply_fn(model), params=params, tx=tx,
                             uap=jnp.zeros(image_shape, jnp.float32))
