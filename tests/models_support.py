"""Random float64 parameters for the model tests, without compiling an initialiser.

``init_params`` runs each initialiser's PRNG (threefry, truncated normal): for
``resnet_tiny`` that is 5-8 s of XLA compilation per process, which tests that
only compare two forms of the same model on the same parameters do not need.
"""

import jax
import jax.numpy as jnp
import numpy as np

from jacuap import models


def random_params(model, image_shape, seed=0, dtype=np.float64):
    """Parameters shaped like ``init_params(model, key, image_shape)``, drawn from numpy.

    Each leaf is normal with std ``1/sqrt(fan_in)`` (``fan_in``: the product
    of all but the last axis; 1 for vectors), so activations stay O(1).
    """
    key = jax.ShapeDtypeStruct((2,), jnp.uint32)
    shapes = jax.eval_shape(lambda k: models.init_params(model, k, tuple(image_shape)), key)
    rng = np.random.RandomState(seed)

    def draw(leaf):
        fan_in = int(np.prod(leaf.shape[:-1])) if len(leaf.shape) > 1 else 1
        return jnp.asarray(rng.normal(0.0, fan_in**-0.5, leaf.shape).astype(dtype))

    return jax.tree_util.tree_map(draw, shapes)
