"""jacuap.models.nets: the layouts, per-example independence and input normalisation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jacuap import models
from models_support import random_params


def _param_shapes(model, shape):
    """``{layer: {name: shape}}``, traced only."""
    key = jax.ShapeDtypeStruct((2,), jnp.uint32)
    variables = jax.eval_shape(lambda k: model.init(k, jnp.zeros((1,) + shape)), key)
    assert set(variables) == {"params"}  # no batch statistics, no mutable state
    return {layer: {name: leaf.shape for name, leaf in flat.items()}
            for layer, flat in _flatten_layers(variables["params"]).items()}


def _flatten_layers(tree, prefix=""):
    """Nested ``{module: {...}}`` -> ``{"a/b": {param: leaf}}`` for the modules holding parameters."""
    out, leaves = {}, {}
    for name, sub in tree.items():
        if isinstance(sub, jax.ShapeDtypeStruct):
            leaves[name] = sub
        else:
            out.update(_flatten_layers(sub, f"{prefix}{name}/"))
    if leaves:
        out[prefix.rstrip("/")] = leaves
    return out


def test_cnn_layout():
    p = _param_shapes(models.CNN(num_classes=10), (28, 28, 1))
    assert p["conv0"]["kernel"] == (3, 3, 1, 32) and p["conv1"]["kernel"] == (3, 3, 32, 64)
    assert p["dense"]["kernel"] == (7 * 7 * 64, 128)  # two 2x2 average poolings: 28 -> 7
    assert p["logits"]["kernel"] == (128, 10)


def test_resnet_is_resnet18_with_groupnorm():
    p = _param_shapes(models.ResNet(num_classes=10), (32, 32, 3))
    kernels = [leaves["kernel"] for leaves in p.values() if len(leaves.get("kernel", ())) == 4]
    assert sum(k[:2] == (3, 3) for k in kernels) == 17  # stem + 8 blocks x 2: ResNet-18 without its dense layer
    assert sum(k[:2] == (1, 1) for k in kernels) == 3  # the strided shortcuts of stages 2-4
    assert p["logits"]["kernel"] == (512, 10)
    norms = [layer for layer in p if "Norm" in layer.split("/")[-1]]
    assert norms and all(layer.split("/")[-1].startswith("GroupNorm") for layer in norms)


@pytest.mark.parametrize("name", ["mlp", "cnn", "resnet_tiny"])
def test_logits_of_one_example_do_not_depend_on_the_others(name):
    """The Jacobian kernels rely on d logits_b / d x_c = 0 for b != c (no batch statistics)."""
    shape = (8, 8, 3) if name == "resnet_tiny" else (8, 8, 1)
    model = models.create_model(name, 5, (0.4,) * shape[-1], (0.3,) * shape[-1])
    with jax.enable_x64(True):
        params = random_params(model, shape)
        rng = np.random.RandomState(0)
        x = rng.uniform(size=(3,) + shape)
        x2 = x.copy()
        x2[1:] = rng.uniform(size=(2,) + shape)
        apply_fn = jax.jit(models.make_apply_fn(model))
        np.testing.assert_array_equal(apply_fn(params, jnp.asarray(x))[0], apply_fn(params, jnp.asarray(x2))[0])
        np.testing.assert_allclose(apply_fn(params, jnp.asarray(x[:1]))[0], apply_fn(params, jnp.asarray(x))[0],
                                   rtol=1e-12)


def test_models_normalise_their_input_per_channel():
    """A model with (mean, std) on x is the same network with (0, 1) on (x - mean) / std."""
    mean, std = (0.2, 0.5, 0.7), (0.1, 0.3, 0.6)
    model = models.MLP(num_classes=4, hidden=(6,), mean=mean, std=std)
    unit = model.clone(mean=(0.0,) * 3, std=(1.0,) * 3)
    with jax.enable_x64(True):
        params = random_params(model, (2, 2, 3))
        x = jnp.asarray(np.random.RandomState(0).uniform(size=(2, 2, 2, 3)))
        np.testing.assert_allclose(model.apply({"params": params}, x),
                                   unit.apply({"params": params}, (x - jnp.asarray(mean)) / jnp.asarray(std)),
                                   rtol=1e-12)
