"""from_torch's ``"convert"`` mechanism: a ``torch.fx`` graph turned into a pure JAX function.

:func:`convert` traces an eval-mode ``torch.nn.Module`` with
``torch.fx.symbolic_trace`` and replays its graph with ``jax.numpy`` and
``jax.lax``: ``run(params, x) -> out`` with ``x`` and every activation in the
module's own layout (NCHW for a torchvision-style CNN), so reshapes, ``view``,
``flatten`` and ``cat(dim=1)`` mean what they mean in torch.  ``params`` is a
flat dict ``{torch name: float32 jnp array}`` of the module's parameters and
floating buffers (``"conv1.weight"``, ``"bn1.running_mean"``, ...).  The
result is plain JAX: ``jit``, ``vmap``, ``grad``, ``jvp`` and ``linearize``
all work.  The supported operations are the keys of ``MODULES``,
:data:`~jacuap.models.torch_ops.FUNCTIONS` and ``METHODS`` of
:mod:`jacuap.models.torch_ops` (listed by :func:`supported`); any
other node raises :class:`~jacuap.errors.ModelError` naming it, before any
computation.

Importing this module does not import torch; :func:`convert` does.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Dict, List, Tuple

import jax
import jax.numpy as jnp

from jacuap.errors import ModelError
from jacuap.models.torch_ops import METHODS, MODULES, load_functions, supported, target_name

__all__ = ["convert", "supported"]


# ---------------------------------------------------------------------------
# The graph.
# ---------------------------------------------------------------------------


class _Ref:
    """A reference to an earlier node's value (replaces ``torch.fx.Node`` in the replayed arguments)."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name


def _template(arg: Any, torch) -> Any:
    if isinstance(arg, torch.fx.Node):
        return _Ref(arg.name)
    if isinstance(arg, (tuple, list)):
        return type(arg)(_template(a, torch) for a in arg)
    if isinstance(arg, dict):
        return {k: _template(v, torch) for k, v in arg.items()}
    if isinstance(arg, slice):
        return slice(*(_template(a, torch) for a in (arg.start, arg.stop, arg.step)))
    if isinstance(arg, torch.Tensor):
        return jnp.asarray(arg.detach().cpu().numpy())
    if isinstance(arg, (torch.dtype, torch.device, torch.memory_format)):
        return None
    return arg


def _resolve(arg: Any, env: Dict[str, Any]) -> Any:
    if isinstance(arg, _Ref):
        return env[arg.name]
    if isinstance(arg, (tuple, list)):
        return type(arg)(_resolve(a, env) for a in arg)
    if isinstance(arg, dict):
        return {k: _resolve(v, env) for k, v in arg.items()}
    if isinstance(arg, slice):
        return slice(_resolve(arg.start, env), _resolve(arg.stop, env), _resolve(arg.step, env))
    return arg


def _state(module, torch) -> Dict[str, jax.Array]:
    """``{name: float32 array}``: every parameter and floating buffer (shared ones under each of their names)."""
    named = list(module.named_parameters(remove_duplicate=False)) + list(module.named_buffers(remove_duplicate=False))
    return {name: jnp.asarray(t.detach().cpu().to(torch.float32).numpy()) for name, t in named
            if t is not None and t.is_floating_point()}


def _unsupported(node, what: str) -> ModelError:
    return ModelError(f"from_torch: node {node.name!r} ({node.op} {what}) is not supported by mechanism='convert'; "
                      f"supported: {supported()}; use mechanism='callback' for this module")


def _constant_defaults(forward: Callable) -> Dict[str, Any]:
    """``forward``'s later parameters whose defaults are Python constants (``normalized=False``, ``mode="x"``).

    fx traces every parameter as a symbolic value, so ``if normalized:`` would not trace; the converted model
    always runs ``forward(x)``, so these parameters are their defaults and can be traced as constants.
    """
    import inspect

    try:
        parameters = list(inspect.signature(forward).parameters.values())[1:]
    except (TypeError, ValueError):  # a builtin without a signature: trace it as it is
        return {}
    return {p.name: p.default for p in parameters
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            and (p.default is None or isinstance(p.default, (bool, int, float, str)))}


def _drop_constant_guards(graph) -> None:
    """Erase fx's ``_assert(param == default)`` and ``_assert_is_none(param)`` guards of constant parameters.

    The converted model only ever runs ``forward(x)``, so they always hold.
    """
    for node in reversed(list(graph.nodes)):
        if (node.op == "call_function" and getattr(node.target, "__name__", "") == "_assert_is_none"
                and getattr(node.args[0], "op", None) == "placeholder"):  # a parameter whose default is None
            graph.erase_node(node)
        elif node.op == "call_function" and getattr(node.target, "__name__", "") == "_assert" and node.args:
            check = node.args[0]
            if (getattr(check, "op", None) == "call_function" and getattr(check.target, "__name__", "") == "eq"
                    and getattr(check.args[0], "op", None) == "placeholder" and check.args[0].args
                    and len(check.args) == 2 and check.args[1] == check.args[0].args[0]):  # param == its default
                graph.erase_node(node)
                if not check.users:
                    graph.erase_node(check)


def convert(module) -> Tuple[Callable[[Any, jax.Array], Any], Dict[str, jax.Array]]:
    """``(run, params)``: the module's graph as ``run(params, x)`` on arrays in the module's layout.

    Raises:
      ModelError: the module does not trace with ``torch.fx``, or a node is
        not supported (the message names it and lists what is).
    """
    import torch
    import torch.fx

    functions = load_functions()
    try:
        constants = _constant_defaults(module.forward)
        graph_module = torch.fx.symbolic_trace(module, concrete_args=constants or None)
        _drop_constant_guards(graph_module.graph)
    except Exception as exc:  # noqa: BLE001 (fx raises many kinds; all mean "cannot trace")
        raise ModelError(f"from_torch: torch.fx cannot trace {type(module).__name__} ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''}); use mechanism='callback'") from None
    submodules = dict(graph_module.named_modules())
    params = _state(graph_module, torch)
    steps: List[Tuple[str, Callable, Any, Any]] = []
    inputs: List[str] = []
    output: Any = None
    for node in graph_module.graph.nodes:
        args, kwargs = _template(node.args, torch), _template(node.kwargs, torch)
        if node.op == "placeholder":
            if not inputs:
                inputs.append(node.name)
            elif node.args:  # a later argument with a default value
                steps.append((node.name, lambda p, v=args[0]: v, (), {}))
            else:
                raise ModelError(f"from_torch: {type(module).__name__}.forward takes more than one input "
                                 f"({node.name!r}); a classifier takes one batch of images")
        elif node.op == "get_attr":
            if node.target in params:
                steps.append((node.name, lambda p, t=node.target: p[t], (), {}))
            else:
                value = _template(functools.reduce(getattr, node.target.split("."), graph_module), torch)
                steps.append((node.name, lambda p, v=value: v, (), {}))
        elif node.op == "call_module":
            sub = submodules[node.target]
            rule = MODULES.get(type(sub).__name__)
            if rule is None or not type(sub).__module__.startswith("torch.nn"):
                raise _unsupported(node, f"{type(sub).__name__} at {node.target!r}")
            steps.append((node.name, lambda p, *a, r=rule, m=sub, t=node.target, **k: r(m, p, t)(*a, **k),
                          args, kwargs))
        elif node.op == "call_function":
            fn = functions.get(node.target)
            if fn is None:
                raise _unsupported(node, target_name(node.target))
            steps.append((node.name, lambda p, *a, f=fn, **k: f(*a, **k), args, kwargs))
        elif node.op == "call_method":
            fn = METHODS.get(node.target)
            dtypes = [a for a in tuple(node.args[1:]) + tuple(node.kwargs.values()) if isinstance(a, torch.dtype)]
            if fn is None or any(d not in (torch.float32,) for d in dtypes):
                raise _unsupported(node, f"Tensor.{node.target}")
            steps.append((node.name, lambda p, *a, f=fn, **k: f(*a, **k), args, kwargs))
        elif node.op == "output":
            output = args[0]

    def run(params: Dict[str, jax.Array], x: jax.Array) -> Any:
        env: Dict[str, Any] = {inputs[0]: x}
        for name, fn, a, k in steps:
            env[name] = fn(params, *_resolve(a, env), **_resolve(k, env))
        return _resolve(output, env)

    return run, params
