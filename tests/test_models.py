"""jacuap.models: the registry, create_model, init_params and make_apply_fn."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jacuap import errors, models

# Input shape S per registered model (the ResNets are built for RGB).
SHAPES = {"mlp": (8, 8, 1), "cnn": (8, 8, 1), "resnet": (32, 32, 3), "resnet_tiny": (8, 8, 3)}


def test_registry_names():
    assert sorted(models.MODELS) == ["cnn", "mlp", "resnet", "resnet_tiny"]


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_every_model_maps_images_to_logits(name):
    """(B, *S) pixels -> (B, K) logits, traced only (ResNet-18 would take seconds to compile)."""
    shape = SHAPES[name]
    model = models.create_model(name, 7, [0.4] * shape[-1], [0.3] * shape[-1])
    assert model.num_classes == 7 and model.mean == (0.4,) * shape[-1] and model.std == (0.3,) * shape[-1]
    key = jax.ShapeDtypeStruct((2,), jnp.uint32)
    params = jax.eval_shape(lambda k: models.init_params(model, k, shape), key)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(params))
    logits = jax.eval_shape(models.make_apply_fn(model), params, jax.ShapeDtypeStruct((3,) + shape, jnp.float32))
    assert (logits.shape, logits.dtype) == ((3, 7), jnp.float32)


def test_unknown_model_is_a_model_error():
    with pytest.raises(models.ModelError, match=r"unknown model 'vgg'; choose one of cnn, mlp, resnet, resnet_tiny"):
        models.create_model("vgg", 10, (0.5,), (0.5,))
    assert models.ModelError is errors.ModelError
    assert issubclass(models.ModelError, ValueError)


def test_init_params_is_a_function_of_the_key():
    model = models.create_model("mlp", 3, (0.5,), (0.5,))
    leaves = lambda seed: jax.tree_util.tree_leaves(models.init_params(model, jax.random.PRNGKey(seed), (2, 2, 1)))
    a, b, c = leaves(0), leaves(0), leaves(1)
    assert all(np.array_equal(u, v) for u, v in zip(a, b))
    assert not any(np.array_equal(u, w) for u, w in zip(a, c) if np.any(u))  # biases start at zero
    with pytest.raises(ValueError, match="key"):
        models.init_params(model, None, (2, 2, 1))


def test_apply_fn_is_the_module_apply():
    model = models.create_model("mlp", 4, (0.5,), (0.25,))
    params = models.init_params(model, jax.random.PRNGKey(0), (8, 8, 1))
    x = jnp.asarray(np.random.RandomState(0).uniform(size=(2, 8, 8, 1)), jnp.float32)
    logits = models.make_apply_fn(model)(params, x)
    np.testing.assert_array_equal(logits, model.apply({"params": params}, x))
    assert logits.shape == (2, 4) and np.all(np.isfinite(logits))
