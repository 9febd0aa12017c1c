"""jacuap.models.features: one named layer's output as a function of (params, x)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jacuap import models
from models_support import random_params


def test_dense_layer_is_its_pre_activation():
    model = models.MLP(num_classes=3, hidden=(6, 4), mean=(0.5,), std=(0.25,))
    with jax.enable_x64(True):
        params = random_params(model, (3, 3, 1))
        x = jnp.asarray(np.random.RandomState(0).uniform(size=(2, 3, 3, 1)))
        h = models.layer_features_fn(model, "dense0")(params, x)
        expected = ((x - 0.5) / 0.25).reshape(2, -1) @ params["dense0"]["kernel"] + params["dense0"]["bias"]
        np.testing.assert_allclose(h, expected, rtol=1e-12)


def test_nested_layer_paths():
    model = models.create_model("resnet_tiny", 4, (0.5,) * 3, (0.5,) * 3)
    params = jax.eval_shape(lambda k: models.init_params(model, k, (8, 8, 3)), jax.ShapeDtypeStruct((2,), jnp.uint32))
    x = jax.ShapeDtypeStruct((2, 8, 8, 3), jnp.float32)
    shape = lambda layer: jax.eval_shape(models.layer_features_fn(model, layer), params, x).shape
    assert shape("stem") == (2, 8, 8, 8)
    assert shape("ResidualBlock_0/Conv_0") == (2, 8, 8, 8)  # a 3x3 convolution of the first stage
    assert shape("ResidualBlock_1/Conv_0") == (2, 4, 4, 16)  # the strided 1x1 shortcut of the second


def test_unknown_layer_names_the_layers_found():
    model = models.MLP(num_classes=3, hidden=(4,))
    params = models.init_params(model, jax.random.PRNGKey(0), (2, 2, 1))
    features_fn = models.layer_features_fn(model, "dense7")  # built lazily: the error comes on the call
    with pytest.raises(KeyError, match=r"no layer 'dense7'.*found \[\]"):
        features_fn(params, jnp.zeros((1, 2, 2, 1)))
