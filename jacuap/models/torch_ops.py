"""The operations of from_torch's ``"convert"`` mechanism, in JAX, with torch's signatures.

Each function here computes what the torch operation of the same name
computes, on arrays in torch's layout (channels on axis 1), with torch's
argument names and defaults, so that :mod:`jacuap.models.torch_convert` can
call it with a ``torch.fx`` node's own ``args`` and ``kwargs``.  Three
tables map a graph node to its JAX function: :data:`MODULES` (a
``torch.nn`` module type name -> a rule building the function from the
module's settings and the params), :data:`METHODS` (a tensor method name)
and :data:`FUNCTIONS` (a function object: ``operator``, ``torch`` and
``torch.nn.functional`` functions; filled by :func:`load_functions`, which
imports torch).

Convolutions: activations stay in the module's layout; each convolution
transposes its input to NHWC and its OIHW kernel to HWIO, calls jacuap's
convolution (:func:`jacuap.models.conv.backend_conv`, ``("NHWC", "HWIO",
"NHWC")``) and transposes back (XLA folds the transposes between layers).
Measured on the 2-core CPU (the ``cnn`` twin, 28x28x1, 128 images): the same
speed as lax with ``("NCHW", "OIHW", "NCHW")`` outside loops, but 3 SGD-UAP
epochs (the steps inside ``lax.scan``) take 0.17-0.37 s against 2.7-2.9 s in
NCHW (the Flax ``cnn``: 0.13-0.21 s).

>>> import jax.numpy as jnp
>>> flatten(jnp.zeros((2, 3, 4, 5)), 1).shape
(2, 60)
>>> avg_pool2d(jnp.ones((1, 1, 3, 3)), 2, ceil_mode=True).tolist()  # the overhang is not counted
[[[[1.0, 1.0], [1.0, 1.0]]]]
"""

from __future__ import annotations

import builtins
import math
import operator
from typing import Any, Callable, Dict, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jacuap.errors import ModelError
from jacuap.models import conv as conv_lib

__all__ = ["MODULES", "METHODS", "FUNCTIONS", "load_functions", "supported", "flatten", "conv2d", "linear",
           "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "adaptive_max_pool2d"]


def _pair(v: Any) -> Tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, (int, np.integer)) else tuple(int(a) for a in v)


# ---------------------------------------------------------------------------
# The operations, in the layout torch uses (channels on axis 1).
# ---------------------------------------------------------------------------


def flatten(x, start_dim=0, end_dim=-1):
    """``torch.flatten``: axes ``start_dim..end_dim`` (inclusive) merged into one."""
    if x.ndim == 0:
        return x.reshape(1)
    s, e = start_dim % x.ndim, end_dim % x.ndim
    return x.reshape(x.shape[:s] + (math.prod(x.shape[s:e + 1]),) + x.shape[e + 1:])


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """``F.conv2d`` (NCHW input, OIHW weight); ``padding`` an int, a pair, ``"same"`` or ``"valid"``."""
    dil = _pair(dilation)
    if isinstance(padding, str):
        if padding == "valid":
            pads = [(0, 0), (0, 0)]
        else:  # "same": torch puts the odd extra pixel at the end, as lax does
            total = [d * (k - 1) for d, k in zip(dil, weight.shape[2:])]
            pads = [(t // 2, t - t // 2) for t in total]
    else:
        pads = [(p, p) for p in _pair(padding)]
    # Channels-last inside (module docstring): NCHW -> NHWC, OIHW -> HWIO, and back.
    out = conv_lib.backend_conv(jnp.transpose(input, (0, 2, 3, 1)),
                                jnp.transpose(weight.astype(input.dtype), (2, 3, 1, 0)), _pair(stride), pads, None,
                                dil, ("NHWC", "HWIO", "NHWC"), feature_group_count=int(groups))
    out = out if bias is None else out + bias.astype(out.dtype)
    return jnp.transpose(out, (0, 3, 1, 2))


def linear(input, weight, bias=None):
    out = input @ weight.T.astype(input.dtype)
    return out if bias is None else out + bias.astype(out.dtype)


def _window_pads(size, k, s, p, d, ceil_mode):
    """Low/high padding of one axis: ``p`` each side, plus the end that ``ceil_mode`` adds (torch's rule)."""
    span = d * (k - 1) + 1
    out = (size + 2 * p - span + (s - 1 if ceil_mode else 0)) // s + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1  # the last window must start inside the input or the left padding
    return (p, max((out - 1) * s + span - size - p, p))


def _pool(x, init, op, kernel_size, stride, padding, dilation, ceil_mode):
    k = _pair(kernel_size)
    s = _pair(stride if stride not in (None, (), []) else kernel_size)
    p, d = _pair(padding), _pair(dilation)
    pads = [_window_pads(x.shape[-2 + a], k[a], s[a], p[a], d[a], ceil_mode) for a in range(2)]
    lead = x.ndim - 2
    return lax.reduce_window(x, np.array(init, x.dtype), op, (1,) * lead + k, (1,) * lead + s,
                             [(0, 0)] * lead + pads, window_dilation=(1,) * lead + d), (k, s, p, pads)


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    if return_indices:
        raise ModelError("from_torch: max_pool2d(return_indices=True) is not supported by mechanism='convert'")
    return _pool(input, -jnp.inf, lax.max, kernel_size, stride, padding, dilation, ceil_mode)[0]


def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None):
    """Window sums over a divisor counted as torch does (padding counted or not; never the ``ceil_mode`` overhang)."""
    total, (k, s, p, pads) = _pool(input, 0.0, lax.add, kernel_size, stride, padding, 1, ceil_mode)
    if divisor_override:
        return total / divisor_override
    h, w = input.shape[-2:]
    inside = np.zeros((h + 2 * p[0], w + 2 * p[1]), np.float32)
    if count_include_pad:
        inside[:] = 1.0
    else:
        inside[p[0]:p[0] + h, p[1]:p[1] + w] = 1.0
    extra = [(0, pads[a][1] - p[a]) for a in range(2)]
    count = lax.reduce_window(jnp.asarray(np.pad(inside, extra)), 0.0, lax.add, k, s, "VALID")
    return total / count.astype(total.dtype)


def _adaptive(x, output_size, reduce):
    """torch's adaptive pooling: cell ``i`` of an axis of size ``n`` covers ``[floor(i n / o), ceil((i+1) n / o))``."""
    size = output_size if isinstance(output_size, (tuple, list)) else (output_size, output_size)
    h, w = x.shape[-2:]
    oh, ow = (h if size[0] is None else int(size[0])), (w if size[1] is None else int(size[1]))
    if h % oh == 0 and w % ow == 0:  # equal windows: one reshape
        return reduce(x.reshape(x.shape[:-2] + (oh, h // oh, ow, w // ow)), (-3, -1))
    bins = lambda n, o: [(i * n // o, -(-(i + 1) * n // o)) for i in range(o)]
    rows = [jnp.stack([reduce(x[..., a:b, c:d], (-2, -1)) for c, d in bins(w, ow)], -1) for a, b in bins(h, oh)]
    return jnp.stack(rows, -2)


def adaptive_avg_pool2d(input, output_size):
    return _adaptive(input, output_size, jnp.mean)


def adaptive_max_pool2d(input, output_size, return_indices=False):
    if return_indices:
        raise ModelError("from_torch: adaptive_max_pool2d(return_indices=True) is not supported by mechanism='convert'")
    return _adaptive(input, output_size, jnp.max)


def _dims(dim):
    return tuple(dim) if isinstance(dim, (list, tuple)) else dim


def _reduction(fn):
    def reduce(input, dim=None, keepdim=False, dtype=None):
        return fn(input, axis=_dims(dim), keepdims=keepdim)
    return reduce


def _shape_args(shape):
    return tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else tuple(shape)


def softplus(input, beta=1.0, threshold=20.0):
    return jnp.where(input * beta > threshold, input, jnp.log1p(jnp.exp(beta * input)) / beta)


def _unary(fn):
    return lambda input, *_, **__: fn(input)  # drops torch's ``inplace=`` and the like


def _identity(input, *_, **__):
    return input


def _no_batch_stats(mod):
    if not mod.track_running_stats or mod.running_mean is None:
        raise ModelError(f"from_torch: {type(mod).__name__} without running statistics normalises with batch "
                         f"statistics, which makes one example's logits depend on the others; not supported")


# Activations and elementwise functions: name -> JAX function with torch's keywords.
_ELEMENTWISE: Dict[str, Callable] = {
    "relu": _unary(jax.nn.relu),
    "relu6": _unary(lambda x: jnp.clip(x, 0.0, 6.0)),
    "leaky_relu": lambda input, negative_slope=0.01, inplace=False: jnp.where(input >= 0, input,
                                                                              negative_slope * input),
    "gelu": lambda input, approximate="none": jax.nn.gelu(input, approximate=approximate == "tanh"),
    "silu": _unary(jax.nn.silu),
    "sigmoid": _unary(jax.nn.sigmoid),
    "tanh": _unary(jnp.tanh),
    "softplus": softplus,
    "elu": lambda input, alpha=1.0, inplace=False: jnp.where(input > 0, input, alpha * jnp.expm1(input)),
    "hardtanh": lambda input, min_val=-1.0, max_val=1.0, inplace=False: jnp.clip(input, min_val, max_val),
    "hardswish": _unary(lambda x: x * jnp.clip(x + 3.0, 0.0, 6.0) / 6.0),
    "hardsigmoid": _unary(lambda x: jnp.clip(x + 3.0, 0.0, 6.0) / 6.0),
    "mish": _unary(lambda x: x * jnp.tanh(softplus(x))),
    "softmax": lambda input, dim=None, _stacklevel=3, dtype=None: jax.nn.softmax(input, axis=dim),
    "log_softmax": lambda input, dim=None, _stacklevel=3, dtype=None: jax.nn.log_softmax(input, axis=dim),
}

# Module type name -> (module, params, prefix) -> function of the module's inputs.
MODULES: Dict[str, Callable] = {}


def _module(*names):
    def register(rule):
        for name in names:
            MODULES[name] = rule
        return rule
    return register


def _get(params, prefix, name, mod):
    return params[f"{prefix}.{name}"] if getattr(mod, name, None) is not None else None


@_module("Conv2d")
def _conv_module(mod, params, prefix):
    if mod.padding_mode != "zeros":
        if isinstance(mod.padding, str):
            raise ModelError(f"from_torch: {prefix}: padding={mod.padding!r} with padding_mode={mod.padding_mode!r}"
                             f" is not supported")
        mode = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}[mod.padding_mode]
        (ph, pw), pad = _pair(mod.padding), 0
        pre = lambda x: jnp.pad(x, [(0, 0)] * (x.ndim - 2) + [(ph, ph), (pw, pw)], mode=mode)
    else:
        pre, pad = (lambda x: x), mod.padding
    return lambda x: conv2d(pre(x), _get(params, prefix, "weight", mod), _get(params, prefix, "bias", mod),
                            mod.stride, pad, mod.dilation, mod.groups)


@_module("Linear")
def _linear_module(mod, params, prefix):
    return lambda x: linear(x, params[prefix + ".weight"], _get(params, prefix, "bias", mod))


@_module("BatchNorm1d", "BatchNorm2d")
def _batch_norm_module(mod, params, prefix):
    _no_batch_stats(mod)

    def bn(x):
        shape = (1, -1) + (1,) * (x.ndim - 2)
        scale = lax.rsqrt(params[prefix + ".running_var"] + mod.eps)
        if mod.affine:
            scale = scale * params[prefix + ".weight"]
        out = (x - params[prefix + ".running_mean"].reshape(shape)) * scale.reshape(shape)
        return out + params[prefix + ".bias"].reshape(shape) if mod.affine else out
    return bn


@_module("LayerNorm")
def _layer_norm_module(mod, params, prefix):
    axes = tuple(range(-len(mod.normalized_shape), 0))

    def ln(x):
        mean = jnp.mean(x, axes, keepdims=True)
        out = (x - mean) * lax.rsqrt(jnp.mean(jnp.square(x - mean), axes, keepdims=True) + mod.eps)
        if mod.elementwise_affine:
            out = out * params[prefix + ".weight"]
            out = out + params[prefix + ".bias"] if mod.bias is not None else out
        return out
    return ln


@_module("GroupNorm")
def _group_norm_module(mod, params, prefix):
    def gn(x):
        g = x.reshape(x.shape[:1] + (mod.num_groups, -1))
        mean = jnp.mean(g, -1, keepdims=True)
        g = (g - mean) * lax.rsqrt(jnp.mean(jnp.square(g - mean), -1, keepdims=True) + mod.eps)
        out, shape = g.reshape(x.shape), (1, -1) + (1,) * (x.ndim - 2)
        if mod.affine:
            out = out * params[prefix + ".weight"].reshape(shape) + params[prefix + ".bias"].reshape(shape)
        return out
    return gn


@_module("MaxPool2d")
def _max_pool_module(mod, params, prefix):
    return lambda x: max_pool2d(x, mod.kernel_size, mod.stride, mod.padding, mod.dilation, mod.ceil_mode,
                                mod.return_indices)


@_module("AvgPool2d")
def _avg_pool_module(mod, params, prefix):
    return lambda x: avg_pool2d(x, mod.kernel_size, mod.stride, mod.padding, mod.ceil_mode, mod.count_include_pad,
                                mod.divisor_override)


_module("AdaptiveAvgPool2d")(lambda mod, params, prefix: lambda x: adaptive_avg_pool2d(x, mod.output_size))
_module("AdaptiveMaxPool2d")(lambda mod, params, prefix: lambda x: adaptive_max_pool2d(x, mod.output_size,
                                                                                        mod.return_indices))
_module("Flatten")(lambda mod, params, prefix: lambda x: flatten(x, mod.start_dim, mod.end_dim))
_module("Identity", "Dropout", "Dropout1d", "Dropout2d", "AlphaDropout")(lambda mod, params, prefix: _identity)
_module("ReLU", "ReLU6", "SiLU", "Sigmoid", "Tanh", "Hardswish", "Hardsigmoid", "Mish")(
    lambda mod, params, prefix: _ELEMENTWISE[type(mod).__name__.lower()])
_module("LeakyReLU")(lambda mod, params, prefix: lambda x: _ELEMENTWISE["leaky_relu"](x, mod.negative_slope))
_module("GELU")(lambda mod, params, prefix: lambda x: _ELEMENTWISE["gelu"](x, mod.approximate))
_module("ELU")(lambda mod, params, prefix: lambda x: _ELEMENTWISE["elu"](x, mod.alpha))
_module("Softplus")(lambda mod, params, prefix: lambda x: softplus(x, mod.beta, mod.threshold))
_module("Hardtanh")(lambda mod, params, prefix: lambda x: jnp.clip(x, mod.min_val, mod.max_val))
_module("Softmax")(lambda mod, params, prefix: lambda x: jax.nn.softmax(x, axis=mod.dim))
_module("LogSoftmax")(lambda mod, params, prefix: lambda x: jax.nn.log_softmax(x, axis=mod.dim))

# Tensor methods: name -> function(self, *args, **kwargs).
METHODS: Dict[str, Callable] = {
    "view": lambda x, *shape: x.reshape(_shape_args(shape)),
    "reshape": lambda x, *shape: x.reshape(_shape_args(shape)),
    "flatten": flatten,
    "size": lambda x, dim=None: tuple(x.shape) if dim is None else x.shape[dim],
    "dim": lambda x: x.ndim,
    "numel": lambda x: math.prod(x.shape),
    "contiguous": _identity,
    "float": _identity,
    "to": lambda x, *args, **kwargs: x,  # only dtype float32 / device moves are traced here (checked in convert)
    "permute": lambda x, *dims: jnp.transpose(x, _shape_args(dims)),
    "transpose": lambda x, dim0, dim1: jnp.swapaxes(x, dim0, dim1),
    "squeeze": lambda x, dim=None: jnp.squeeze(x, dim) if dim is None or x.shape[dim] == 1 else x,
    "unsqueeze": lambda x, dim: jnp.expand_dims(x, dim),
    "mean": _reduction(jnp.mean),
    "sum": _reduction(jnp.sum),
    "amax": _reduction(jnp.max),
    "clamp": lambda x, min=None, max=None: jnp.clip(x, min, max),
    "pow": lambda x, exponent: x ** exponent,
    "exp": jnp.exp,
    "sqrt": jnp.sqrt,
    "add": lambda x, other, alpha=1: x + alpha * other,
    "sub": lambda x, other, alpha=1: x - alpha * other,
    "mul": lambda x, other: x * other,
    "div": lambda x, other: x / other,
    **{name: _ELEMENTWISE[name] for name in ("relu", "sigmoid", "tanh", "softmax", "log_softmax")},
}
METHODS["clip"] = METHODS["clamp"]

_OPERATORS = ("add", "sub", "mul", "truediv", "floordiv", "neg", "pos", "matmul", "pow", "getitem", "iadd", "isub",
              "imul", "itruediv")


def _functions(torch) -> Dict[Any, Callable]:
    """Function object -> JAX function (built when torch is imported)."""
    F = torch.nn.functional
    table: Dict[Any, Callable] = {getattr(operator, name): getattr(operator, name) for name in _OPERATORS}
    for name in ("iadd", "isub", "imul", "itruediv"):  # `out += identity`: no in-place update in JAX
        table[getattr(operator, name)] = getattr(operator, name[1:])
    table[builtins.getattr] = lambda obj, name: tuple(obj.shape) if name == "shape" else getattr(obj, name)
    for name, fn in _ELEMENTWISE.items():
        for owner in (F, torch):
            if hasattr(owner, name):
                table[getattr(owner, name)] = fn
    table.update({
        torch.add: METHODS["add"], torch.sub: METHODS["sub"], torch.mul: METHODS["mul"], torch.div: METHODS["div"],
        torch.flatten: flatten, torch.reshape: lambda x, shape: x.reshape(tuple(shape)),
        torch.cat: lambda tensors, dim=0: jnp.concatenate(list(tensors), axis=dim),
        torch.stack: lambda tensors, dim=0: jnp.stack(list(tensors), axis=dim),
        torch.mean: METHODS["mean"], torch.sum: METHODS["sum"], torch.amax: METHODS["amax"],
        torch.matmul: jnp.matmul, torch.transpose: METHODS["transpose"], torch.permute: METHODS["permute"],
        torch.squeeze: METHODS["squeeze"], torch.unsqueeze: METHODS["unsqueeze"], torch.clamp: METHODS["clamp"],
        torch.exp: jnp.exp, torch.sqrt: jnp.sqrt,
        F.linear: linear, F.conv2d: conv2d, F.max_pool2d: max_pool2d, F.avg_pool2d: avg_pool2d,
        F.adaptive_avg_pool2d: adaptive_avg_pool2d, F.adaptive_max_pool2d: adaptive_max_pool2d,
    })
    if hasattr(torch, "concat"):
        table[torch.concat] = table[torch.cat]
    for name in ("dropout", "dropout1d", "dropout2d", "alpha_dropout"):
        if hasattr(F, name):
            table[getattr(F, name)] = _identity
    return table


FUNCTIONS: Dict[Any, Callable] = {}  # filled by load_functions() (it needs torch)


def load_functions() -> Dict[Any, Callable]:
    """:data:`FUNCTIONS`, filled on the first call (imports torch)."""
    if not FUNCTIONS:
        import torch

        FUNCTIONS.update(_functions(torch))
    return FUNCTIONS


def target_name(target: Any) -> str:
    if isinstance(target, str):
        return target
    return f"{getattr(target, '__module__', None) or ''}.{getattr(target, '__name__', repr(target))}".lstrip(".")


def supported() -> str:
    """The supported module types, functions and tensor methods, as one line (for error messages)."""
    funcs = sorted({getattr(f, "__name__", str(f)) for f in FUNCTIONS} | set(_OPERATORS) | set(_ELEMENTWISE))
    return (f"modules {', '.join(sorted(MODULES))}; functions {', '.join(funcs)}; "
            f"tensor methods {', '.join(sorted(METHODS))}")
