"""Intermediate activations of a Flax model (Linen or NNX), as a pure function of ``(params, x)``.

Used by the attacks on hidden layers (layer maximisation, FG-UAP, GD-UAP):
:func:`layer_names` lists a model's submodules in the order their calls
finish (the classifier last), :func:`layer_features_fn` and
:func:`layers_features_fn` give one or several of their outputs.  Linen
models are read through ``capture_intermediates``; NNX models (an
:class:`~jacuap.models.adapter.NNXClassifier`, what the programs build for
an NNX class) by tapping the ``__call__`` of the submodules of a freshly
merged module, so that nothing in the user's class has to ``sow``.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import flax.linen as nn
import jax

from jacuap.models.adapter import NNXClassifier

__all__ = ["FeaturesFn", "layer_names", "layer_features_fn", "layers_features_fn"]

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
    if isinstance(model, NNXClassifier):
        many = layers_features_fn(model, [layer_name])
        return lambda params, x: many(params, x)[0]

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


def _nnx_tapped_call(model: NNXClassifier, params: Any, x: jax.Array, wanted: Optional[set]) -> Dict[str, Any]:
    """Runs the NNX model on ``x``; returns the first output of each submodule (of ``wanted``, or all), in
    the order their calls finished (a dict keeps it)."""
    module = model.merge(params)
    outputs: Dict[str, Any] = {}
    for path, sub in _nnx_iter_modules(module):
        name = "/".join(map(str, path))
        if not path or (wanted is not None and name not in wanted):
            continue
        cls = type(sub)

        def call(self, *args, _name=name, _cls=cls, **kwargs):
            out = _cls.__call__(self, *args, **kwargs)
            outputs.setdefault(_name, out)
            return out

        # The fresh module is thrown away after this call: retyping its submodules is invisible outside.
        sub.__class__ = type(cls.__name__, (cls,), {"__call__": call})
    module(x)
    return outputs


def _nnx_iter_modules(module: Any):
    from flax import nnx

    return nnx.iter_modules(module) if hasattr(nnx, "iter_modules") else module.iter_modules()


def layer_names(model: Any, params: Any, x: jax.Array) -> List[str]:
    """The ``/``-separated names of ``model``'s submodules, in the order their calls finish (the classifier last).

    ``model`` is a Linen module or an NNXClassifier; ``x`` an example batch
    (keep it to one input: the model runs on it once).

    >>> import jax, jax.numpy as jnp
    >>> from jacuap.models import MLP
    >>> model = MLP(num_classes=3, hidden=(5,))
    >>> params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 4, 4, 1)))["params"]
    >>> layer_names(model, params, jnp.zeros((1, 4, 4, 1)))
    ['Normalize_0', 'dense0', 'logits']
    """
    if isinstance(model, NNXClassifier):
        order: List[str] = []  # filled while tracing (a dict output would come back with sorted keys)
        jax.eval_shape(lambda p, x: order.extend(_nnx_tapped_call(model, p, x, None)), params, x)
        return order
    # Applied for real on the example (not eval_shape, whose dict outputs come back with sorted keys).
    _, state = model.apply({"params": params}, x, capture_intermediates=True, mutable=["intermediates"])
    names: List[str] = []

    def walk(node: Mapping[str, Any], path: Tuple[str, ...]) -> None:
        for key, value in node.items():
            if key == "__call__":
                if path:
                    names.append("/".join(path))
            elif isinstance(value, Mapping):
                walk(value, path + (key,))

    walk(state.get("intermediates", {}), ())
    return names


def layers_features_fn(model: nn.Module, layer_names: Sequence[str]) -> FeaturesFn:
    """``features_fn(params, x)``: the tuple of several named submodules' outputs, in the order given.

    One forward pass captures them all (the filter keeps only those
    submodules).  Used by GD-UAP, which ascends the sum of the layers' log
    norms.  Raises KeyError when called if a name is not a submodule.

    >>> import jax, jax.numpy as jnp
    >>> from jacuap.models import MLP
    >>> model = MLP(num_classes=3, hidden=(5, 4))
    >>> params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 4, 4, 1)))["params"]
    >>> [a.shape for a in layers_features_fn(model, ["dense0", "dense1"])(params, jnp.zeros((2, 4, 4, 1)))]
    [(2, 5), (2, 4)]
    """
    paths = [tuple(p for p in name.split("/") if p) for name in layer_names]
    if not paths:
        raise ValueError("layers_features_fn: give at least one layer name")
    wanted = set(paths)
    if isinstance(model, NNXClassifier):
        names = ["/".join(p) for p in paths]

        def nnx_features_fn(params: Any, x: jax.Array) -> Tuple[jax.Array, ...]:
            outputs = _nnx_tapped_call(model, params, x, set(names))
            missing = [n for n in names if n not in outputs]
            if missing:
                raise KeyError(f"layers_features_fn: no layer {missing[0]!r} in the model")
            return tuple(outputs[n] for n in names)

        return nnx_features_fn

    def keep(module: nn.Module, method_name: str) -> bool:
        return method_name == "__call__" and tuple(module.path) in wanted

    def features_fn(params: Any, x: jax.Array) -> Tuple[jax.Array, ...]:
        _, state = model.apply({"params": params}, x, capture_intermediates=keep, mutable=["intermediates"])
        out = []
        for name, path in zip(layer_names, paths):
            node = state.get("intermediates", {})
            for part in path:
                if part not in node:
                    raise KeyError(f"layers_features_fn: no layer {name!r} in the model (at {part!r}; found {sorted(node)})")
                node = node[part]
            out.append(node["__call__"][0])
        return tuple(out)

    return features_fn
