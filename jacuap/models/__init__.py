"""The classifiers and their registry by name.

``MODELS`` maps a name (``"mlp"``, ``"cnn"``, ``"resnet"``,
``"resnet_tiny"``) to a Flax ``Module`` constructor.  Every model maps images
``x`` of shape ``(B, H, W, C)`` in pixel units ``[0, 1]`` to logits of shape
``(B, K)``, each example independently (no batch statistics), and normalises
its input itself with the dataset's per-channel ``mean`` and ``std``.

* :func:`create_model` builds a registered model for a dataset,
* :func:`init_params` gives its initial parameters,
* :func:`make_apply_fn` gives the pure ``apply_fn(params, x) -> logits``
  every Jacobian kernel and attack takes,
* :func:`layer_features_fn` gives one hidden layer's output instead,
* :func:`from_torch` makes a PyTorch classifier into ``(apply_fn, params)``
  (:mod:`jacuap.models.torch_bridge`).

The models live in :mod:`jacuap.models.nets`, their convolution in
:mod:`jacuap.models.conv`.

>>> import jax, jax.numpy as jnp
>>> model = create_model("mlp", num_classes=3, mean=(0.5,), std=(0.25,))
>>> params = init_params(model, jax.random.PRNGKey(0), (4, 4, 1))
>>> make_apply_fn(model)(params, jnp.zeros((2, 4, 4, 1))).shape
(2, 3)
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from jacuap.errors import ModelError
from jacuap.models import conv  # noqa: F401  (so that jacuap.models.conv is an attribute)
from jacuap.models.adapter import (NNXClassifier, as_apply_fn, check_classifier, import_model, is_import_path,
                                    model_source_root, nnx_with_params)
from jacuap.models.features import FeaturesFn, layer_features_fn, layer_names, layers_features_fn
from jacuap.models.nets import CNN, DEFAULT_CONV, MLP, ConvFn, Normalize, ResidualBlock, ResNet
from jacuap.models.torch_bridge import from_torch, load_torch_weights, torch_factory  # imports torch only when called

__all__ = [
    "MODELS",
    "create_model",
    "as_apply_fn",
    "nnx_with_params",
    "NNXClassifier",
    "import_model",
    "model_source_root",
    "is_import_path",
    "check_classifier",
    "make_apply_fn",
    "init_params",
    "layer_features_fn",
    "layers_features_fn",
    "layer_names",
    "ModelError",
    "FeaturesFn",
    "ConvFn",
    "DEFAULT_CONV",
    "Normalize",
    "MLP",
    "CNN",
    "ResidualBlock",
    "ResNet",
    "from_torch",
    "load_torch_weights",
    "torch_factory",
]


def _resnet_tiny(**kwargs: Any) -> ResNet:
    """A narrow, shallow ResNet (two stages of one block, width 8) for tests and CPU smoke runs."""
    return ResNet(stage_sizes=(1, 1), width=8, **kwargs)


MODELS: Dict[str, Callable[..., nn.Module]] = {
    "mlp": MLP,
    "cnn": CNN,
    "resnet": ResNet,
    "resnet_tiny": _resnet_tiny,
}


def create_model(
    name: str,
    num_classes: int,
    mean: Sequence[float],
    std: Sequence[float],
    kwargs: Optional[Mapping[str, Any]] = None,
    seed: int = 0,
    source_root: Optional[str] = None,
) -> Any:
    """The registered model ``name`` (or the class at import path ``name``) for a dataset.

    Args:
      name: a key of :data:`MODELS`, or ``"pkg.mod:Class"`` (a Linen or NNX
        module class, :func:`jacuap.models.adapter.import_model`; it
        normalises its input itself, so ``mean`` and ``std`` are not passed).
      num_classes: ``K``, the number of logits.
      mean, std: the dataset's per-channel pixel mean and std (one value per
        channel ``C``, or one value broadcast over the channels).
      kwargs: more keyword arguments of the constructor (``model_kwargs``).
      seed: the NNX ``Rngs`` seed of an NNX class (Linen models draw their
        parameters in :func:`init_params`).
      source_root: for an import path, a folder searched last when its module
        is not on ``sys.path`` (what a checkpoint records: :func:`model_source_root`).

    Raises:
      ModelError: ``name`` is not registered (the message lists the names).

    >>> create_model("cnn", 10, (0.5,), (0.5,)).features
    (32, 64)
    >>> create_model("vgg", 10, (0.5,), (0.5,))
    Traceback (most recent call last):
    ...
    jacuap.errors.ModelError: unknown model 'vgg'; choose one of cnn, mlp, resnet, resnet_tiny
    """
    kwargs = dict(kwargs or {})
    if is_import_path(name):
        return import_model(name, num_classes, seed, kwargs, source_root)
    if name not in MODELS:
        raise ModelError(f"unknown model {name!r}; choose one of {', '.join(sorted(MODELS))}")
    try:
        return MODELS[name](num_classes=num_classes, mean=tuple(mean), std=tuple(std), **kwargs)
    except TypeError as exc:
        raise ModelError(f"model {name!r} does not take model_kwargs {kwargs} ({exc})") from None


def make_apply_fn(model: nn.Module) -> Callable[[Any, jax.Array], jax.Array]:
    """``apply_fn(params, x) -> logits``, ``(B, *S) -> (B, K)``: the pure function the kernels take.

    >>> import jax, jax.numpy as jnp
    >>> model = MLP(num_classes=2, hidden=(3,))
    >>> params = init_params(model, jax.random.PRNGKey(0), (2, 2, 1))
    >>> make_apply_fn(model)(params, jnp.ones((5, 2, 2, 1))).shape
    (5, 2)
    """

    def apply_fn(params, x):
        return model.apply({"params": params}, x)

    return apply_fn


def init_params(model: nn.Module, key: jax.Array, image_shape: Tuple[int, ...]) -> Any:
    """Initial parameters for inputs of shape ``image_shape`` ``S = (H, W, C)`` (no batch axis).

    ``key`` is required: it is the only source of the initial weights.

    >>> import jax
    >>> params = init_params(MLP(num_classes=2, hidden=(3,)), jax.random.PRNGKey(0), (2, 2, 1))
    >>> jax.tree_util.tree_map(jax.numpy.shape, params)["dense0"]["kernel"]
    (4, 3)
    """
    if key is None:
        raise ValueError("init_params: key is required (a jax.random.PRNGKey)")
    return model.init(key, jnp.zeros((1,) + tuple(image_shape), jnp.float32))["params"]
