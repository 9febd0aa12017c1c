"""Intermediate activations of a Flax model, as a pure function of ``(params, x)``.

Used by the layer-maximisation variant of the SGD-UAP attack
(:func:`jacuap.attacks.sgd_uap` with ``features_fn=...``), which ascends the
norm of one hidden layer's output instead of the loss.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax

__all__ = ["FeaturesFn", "layer_features_fn"]

FeaturesFn = Callable[[Any, jax.Array], jax.Array]


def layer_features_fn(model: nn.Module, layer_name: str) -> FeaturesFn:
    """``features_fn(params, x)``: the output of one named submodule of ``model``.

    Read through Flax's ``capture_intermediates`` with a filter that keeps
    only that submodule's ``__call__`` output, so nothing else is stored.

    Args:
      model: the Flax ``Module`` behind ``apply_fn``.
      layer_name: the submodule's path, ``/``-separated for nested modules,
        e.g. ``"dense0"``, ``"conv1"`` or ``"ResidualBlock_0/Conv_0"`` (the
        keys of ``model.apply(..., capture_intermediates=True,
        mutable=["intermediates"])[1]["intermediates"]``).

    Returns:
      ``(params, x) -> activations`` of shape ``(B, ...)`` (the first call of
      the layer if it is called more than once).  Build it ONCE and reuse the
      object: it is a static argument of the compiled attack steps.

    Raises:
      KeyError: when called, if ``model`` has no submodule ``layer_name``.

    >>> import jax, jax.numpy as jnp
    >>> from jacuap.models import MLP
    >>> model = MLP(num_classes=3, hidden=(5,))
    >>> params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 4, 4, 1)))["params"]
    >>> layer_features_fn(model, "dense0")(params, jnp.zeros((2, 4, 4, 1))).shape
    (2, 5)
    """
    path = tuple(p for p in layer_name.split("/") if p)

    def keep(module: nn.Module, method_name: str) -> bool:
        return method_name == "__call__" and tuple(module.path) == path

    def features_fn(params: Any, x: jax.Array) -> jax.Array:
        _, state = model.apply(
            {"params": params}, x, capture_intermediates=keep, mutable=["intermediates"]
        )
        node = state.get("intermediates", {})  # absent when nothing matched
        for name in path:
            if name not in node:
                raise KeyError(
                    f"layer_features_fn: no layer {layer_name!r} in the model "
                    f"(at {name!r}; found {sorted(node)})"
                )
            node = node[name]
        return node["__call__"][0]

    return features_fn
