"""Your own classifier in jacuap: a Flax Linen module, a Flax NNX module, or a plain ``apply_fn`` and params.

Every kernel, attack and metric takes a pure ``apply_fn(params, x) -> logits``
(``(B, *S)`` images in ``[0, 1]`` to ``(B, K)`` logits) and a params pytree.
:func:`as_apply_fn` gives that pair for any of the three forms:

* Linen: ``apply_fn = lambda p, x: module.apply({"params": p}, x)``, with the
  params you initialised;
* NNX: ``graphdef, params, rest = nnx.split(module, nnx.Param, ...)`` and
  ``apply_fn = lambda p, x: nnx.merge(graphdef, p, rest)(x)``, ``params`` as
  a plain nested dict (``State.to_pure_dict``), so that gradients, sharding
  and checkpoints see ordinary arrays; everything that is not an
  ``nnx.Param`` (batch statistics, RNG counters) is held constant: call
  ``module.eval()`` first if it has dropout or batch norm;
* ``(apply_fn, params)`` already: returned as they are.

:func:`nnx_with_params` goes the other way: the NNX module back, with trained
params (from your own loop, or ``restore_model(workdir).params``) written
into a copy of it by ``nnx.update``.

The programs take a model by import path (``--config.model=pkg.mod:Class``,
:func:`import_model`): a Linen class is built as ``Class(num_classes=K,
**model_kwargs)`` and initialised from the run's seed; an NNX class as
``Class(num_classes=K, rngs=nnx.Rngs(seed), **model_kwargs)``, wrapped in
:class:`NNXClassifier`, which has the ``init``/``apply`` of a Linen module,
so that training, checkpoints and attacks treat both alike.  Unlike the
registered models, an imported model normalises its input itself (it
receives pixels in ``[0, 1]``).

An NNX model and its Linen twin give the same numbers:

>>> import jax, jax.numpy as jnp
>>> from flax import nnx
>>> class Net(nnx.Module):
...     def __init__(self, num_classes, *, rngs):
...         self.dense = nnx.Linear(4, num_classes, rngs=rngs)
...     def __call__(self, x):
...         return self.dense(x.reshape(len(x), -1))
>>> apply_fn, params = as_apply_fn(Net(3, rngs=nnx.Rngs(0)))
>>> jax.tree_util.tree_map(jnp.shape, params)
{'dense': {'bias': (3,), 'kernel': (4, 3)}}
>>> apply_fn(params, jnp.ones((2, 2, 2, 1))).shape
(2, 3)
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from jacuap.errors import ModelError

__all__ = ["ApplyFn", "is_import_path", "as_apply_fn", "nnx_with_params", "NNXClassifier", "import_model",
           "check_classifier"]

ApplyFn = Callable[[Any, jax.Array], jax.Array]


def is_import_path(name: str) -> bool:
    """Whether a config's ``model`` names a class by import path (``"pkg.mod:Class"``), not a registry key.

    >>> is_import_path("cnn"), is_import_path("my_nets.wide:WideResNet")
    (False, True)
    """
    return ":" in str(name)


def _nnx():
    from flax import nnx  # flax.nnx is heavier than linen: loaded only for NNX models

    return nnx


def _is_nnx_module(obj: Any) -> bool:
    try:
        return isinstance(obj, _nnx().Module)
    except ImportError:  # pragma: no cover - a flax without nnx
        return False


def _split_nnx(module: Any) -> Tuple[ApplyFn, Any]:
    apply_fn, params, _ = _split_nnx_with_merge(module)
    return apply_fn, params


def _split_nnx_with_merge(module: Any) -> Tuple[ApplyFn, Any, Callable[[Any], Any]]:
    """``(apply_fn, params, merge)``: ``merge(params)`` rebuilds the module (its non-Param state held constant)."""
    nnx = _nnx()
    graphdef, params, rest = nnx.split(module, nnx.Param, ...)

    def merge(params):
        return nnx.merge(graphdef, params, rest)

    def apply_fn(params, x):
        return merge(params)(x)

    return apply_fn, params.to_pure_dict(), merge


def as_apply_fn(model: Any, params: Any = None) -> Tuple[ApplyFn, Any]:
    """``(apply_fn, params)`` of a Linen module (with ``params``), an NNX module, or an apply function.

    Args:
      model: a ``flax.linen.Module`` (``params`` required: its ``"params"``
        collection), a ``flax.nnx.Module`` (``params`` must be None: they
        are the module's own), or a callable ``apply_fn(params, x)`` (with
        ``params``).
      params: see ``model``.

    Raises:
      ModelError: params missing or superfluous, or ``model`` is none of the three.
    """
    if _is_nnx_module(model):
        if params is not None:
            raise ModelError("as_apply_fn: an NNX module carries its own parameters; do not pass params")
        return _split_nnx(model)
    if isinstance(model, nn.Module):
        if params is None:
            raise ModelError("as_apply_fn: a Linen module needs its params (the 'params' collection of init)")
        if isinstance(params, Mapping) and set(params) == {"params"}:
            params = params["params"]  # the whole variables dict of init
        from jacuap.models import make_apply_fn  # the package imports this module first

        return make_apply_fn(model), params
    if isinstance(model, NNXClassifier):
        return model.apply_fn, model.params
    if callable(model):
        if params is None:
            raise ModelError("as_apply_fn: an apply function needs its params")
        return model, params
    raise ModelError(f"as_apply_fn: expected a Linen module, an NNX module or apply_fn(params, x); "
                     f"got {type(model).__name__}")


def nnx_with_params(module: Any, params: Any) -> Any:
    """A copy of the NNX ``module`` whose ``nnx.Param`` values are ``params``; ``module`` is left as it is.

    ``params`` is the pytree :func:`as_apply_fn` gave for the module (a plain
    nested dict), trained since: ``nnx.update`` writes it into
    ``nnx.clone(module)``, whose other state (batch statistics, RNG counters)
    is the module's.  The copy computes ``apply_fn(params, x)``.  ``module``
    may also be the :class:`NNXClassifier` of ``restore_model(workdir).model``
    (a run of an NNX class by import path).

    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> module = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    >>> apply_fn, params = as_apply_fn(module)
    >>> trained = {"bias": params["bias"] + 1.0, "kernel": params["kernel"]}
    >>> copy = nnx_with_params(module, trained)
    >>> bool(jnp.all(copy(jnp.ones((1, 2))) == apply_fn(trained, jnp.ones((1, 2)))))
    True
    >>> bool(jnp.all(module.bias[...] == 0.0))  # the original keeps its values
    True
    >>> nnx_with_params(module, {"bias": params["bias"]})
    Traceback (most recent call last):
    ...
    jacuap.errors.ModelError: nnx_with_params: params do not fit the module's nnx.Param tree ({'bias': (3,), 'kernel': (2, 3)}); pass the params as_apply_fn(module) gave, trained

    Raises:
      ModelError: ``module`` is not an NNX module, or ``params`` differ from
        its parameters in structure or shapes.
    """
    if isinstance(module, NNXClassifier):
        template, merge = module.params, module.merge
    elif _is_nnx_module(module):
        nnx = _nnx()
        template = nnx.state(module, nnx.Param).to_pure_dict()

        def merge(new):
            copy = nnx.clone(module)
            nnx.update(copy, new)
            return copy
    else:
        raise ModelError(f"nnx_with_params: expected a flax.nnx.Module (or NNXClassifier), got "
                         f"{type(module).__name__}; a Linen module keeps no parameters: use apply_fn(params, x)")
    shapes = jax.tree_util.tree_map(jnp.shape, template)
    try:
        fits = jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(template) and \
            jax.tree_util.tree_map(jnp.shape, params) == shapes
    except (TypeError, ValueError):
        fits = False
    if not fits:
        raise ModelError(f"nnx_with_params: params do not fit the module's nnx.Param tree ({shapes}); "
                         f"pass the params as_apply_fn(module) gave, trained")
    return merge(params)


class NNXClassifier:
    """An NNX model with the ``init``/``apply`` of a Linen module (what the train state and checkpoints use).

    Built once from ``cls(num_classes=K, rngs=nnx.Rngs(seed), **kwargs)``;
    its initial parameters are that construction's (``init`` ignores its key:
    the seed chose them).  ``apply({"params": p}, x)`` runs
    ``nnx.merge(graphdef, p, rest)(x)``.
    """

    def __init__(self, cls: type, num_classes: int, seed: int = 0, kwargs: Optional[Mapping[str, Any]] = None):
        self.cls, self.num_classes, self.seed, self.kwargs = cls, int(num_classes), int(seed), dict(kwargs or {})
        module = cls(num_classes=self.num_classes, rngs=_nnx().Rngs(self.seed), **self.kwargs)
        # merge(params) gives the module back (what the layer attacks tap, jacuap.models.features).
        self.apply_fn, self.params, self.merge = _split_nnx_with_merge(module)

    def init(self, key: Any, x: jax.Array) -> Dict[str, Any]:
        del key, x  # the parameters were drawn at construction, from nnx.Rngs(seed)
        return {"params": jax.tree_util.tree_map(jnp.asarray, self.params)}

    def apply(self, variables: Mapping[str, Any], x: jax.Array, **kwargs: Any) -> jax.Array:
        if kwargs:
            raise ModelError(f"{self.cls.__name__} is an NNX model: it has no Linen intermediates "
                             f"({', '.join(kwargs)}); read its layers with jacuap.models.layers_features_fn")
        return self.apply_fn(variables["params"], x)

    def __repr__(self) -> str:
        return f"NNXClassifier({self.cls.__module__}.{self.cls.__qualname__}, num_classes={self.num_classes})"


def model_source_root(path: str) -> Optional[str]:
    """The ``sys.path`` folder the module of import path ``path`` was imported from (it must be imported).

    What a checkpoint records, so that ``attack.py`` finds ``mypkg.nets``
    from any folder: for ``/home/u/proj/mypkg/nets.py`` it is ``/home/u/proj``.
    None for a module without a file.

    >>> model_source_root("jacuap.models.nets:MLP") == os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
    True
    """
    module_name = str(path).partition(":")[0]
    module = sys.modules.get(module_name) or importlib.import_module(module_name)
    filename = getattr(module, "__file__", None)
    if not filename:
        return None
    root = os.path.dirname(os.path.abspath(filename))
    if os.path.basename(filename).startswith("__init__."):
        root = os.path.dirname(root)
    for _ in range(module_name.count(".")):
        root = os.path.dirname(root)
    return root


def _import_class(path: str, source_root: Optional[str] = None) -> type:
    module_name, _, attr = str(path).partition(":")
    if not module_name or not attr:
        raise ModelError(f"model {path!r}: expected 'package.module:Class'")
    try:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            # Not on sys.path from here: the folder it was trained from (recorded with the checkpoint), searched last.
            if not source_root or not os.path.isdir(source_root) or source_root in sys.path or \
                    not module_name.startswith(str(exc.name or "?")):
                raise
            sys.path.append(source_root)
            module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or the module's own error while importing
        hint = ""
        if isinstance(exc, ModuleNotFoundError):
            where = f"; it was trained from {source_root}" if source_root else ""
            hint = (f"{where}; put the folder that holds {module_name.split('.')[0]!r} on PYTHONPATH "
                    f"(PYTHONPATH=DIR attack.py ...)")
        raise ModelError(f"model {path!r}: cannot import {module_name!r} ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''}){hint}") from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ModelError(f"model {path!r}: {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def import_model(path: str, num_classes: int, seed: int = 0, kwargs: Optional[Mapping[str, Any]] = None,
                 source_root: Optional[str] = None) -> Any:
    """The model class at import path ``"pkg.mod:Class"``, built for ``num_classes`` (module docstring).

    Returns a Linen module (to ``init``) or an :class:`NNXClassifier`.
    ``source_root``: a folder to search last when the module is not found
    (:func:`model_source_root` of the run that trained it).

    Raises:
      ModelError: the path does not import, or does not name a Linen or NNX
        module class, or the class rejects ``num_classes``/``model_kwargs``.
    """
    cls = _import_class(path, source_root)
    kwargs = dict(kwargs or {})
    if not inspect.isclass(cls):
        raise ModelError(f"model {path!r} is a {type(cls).__name__}, not a module class")
    try:
        if issubclass(cls, nn.Module):
            return cls(num_classes=int(num_classes), **kwargs)
        if issubclass(cls, _nnx().Module):
            return NNXClassifier(cls, num_classes, seed, kwargs)
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"model {path!r} could not be built with num_classes={num_classes} and "
                         f"model_kwargs={kwargs} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
                         ) from None
    raise ModelError(f"model {path!r} is not a Flax module class (a flax.linen.Module or flax.nnx.Module subclass)")


def check_classifier(model: Any, name: str, num_classes: int, image_shape: Tuple[int, ...]) -> None:
    """ModelError unless ``model`` maps ``(B, *S)`` images to ``(B, K)`` logits (checked by shape only).

    >>> from jacuap.models.nets import MLP
    >>> check_classifier(MLP(num_classes=3, hidden=(4,)), "mlp", 3, (2, 2, 1))
    >>> check_classifier(MLP(num_classes=3, hidden=(4,)), "mlp", 5, (2, 2, 1))
    Traceback (most recent call last):
    ...
    jacuap.errors.ModelError: model 'mlp' maps (2, 2, 2, 1) images to shape (2, 3), not (2, 5) logits
    """
    x = jax.ShapeDtypeStruct((2,) + tuple(image_shape), jnp.float32)
    try:
        variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
        out = jax.eval_shape(model.apply, variables, x)
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"model {name!r} fails on (2, {', '.join(map(str, image_shape))}) images "
                         f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    if not hasattr(out, "shape") or tuple(out.shape) != (2, int(num_classes)):
        got = getattr(out, "shape", type(out).__name__)
        raise ModelError(f"model {name!r} maps {(2,) + tuple(image_shape)} images to shape {tuple(got) if isinstance(got, tuple) else got}, "
                         f"not {(2, int(num_classes))} logits")
