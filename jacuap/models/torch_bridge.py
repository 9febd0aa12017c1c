"""PyTorch classifiers as jacuap models: :func:`from_torch`, :func:`load_torch_weights`, :func:`torch_factory`.

``apply_fn, params = from_torch(module, (H, W, C))`` makes a
``torch.nn.Module`` classifier into the pair every jacuap kernel, attack and
metric takes: ``apply_fn(params, x) -> logits`` with ``x`` of shape
``(B, H, W, C)``, float32 pixels in ``[0, 1]`` (jacuap's NHWC convention).
Two mechanisms:

* ``"convert"`` (default, :mod:`jacuap.models.torch_convert`): the module's
  ``torch.fx`` graph rewritten as a pure JAX function; ``params`` is a flat
  dict ``{torch name: float32 array}`` of its parameters and buffers.  Plain
  JAX: ``jit``, ``vmap``, ``grad``, ``vjp``, ``jvp``, ``linearize``: every
  kernel, attack and metric, at XLA speed, and ``params`` can be trained.
* ``"callback"`` (:mod:`jacuap.models.torch_callback`): torch itself runs the
  module through ``jax.pure_callback`` (CPU, host round trips), with a
  ``custom_vjp`` whose backward pass is ``torch.autograd.grad``.  For a module
  ``torch.fx`` cannot trace or that uses an unsupported operation.
  ``params`` is an empty dict (the weights stay in the module).  Reverse mode,
  ``jit`` and ``vmap`` work; forward mode does not (``jvp``, ``linearize``,
  ``jacfwd`` raise a ``TypeError``), so kernels built on JVPs need their
  VJP-only method: ``spectral_norm(method="exact")``,
  ``stacked_spectral_norm(method="gram")`` (``"auto"`` is ``"gram"`` for
  ``d = H W C <= 4096``), ``singular_vector_uap(method="gram")`` and
  ``metrics.stacked_sigma_max`` likewise; ``stacked_singular_pairs`` (LOBPCG)
  and ``input_jacobian`` with ``d <= K`` have no VJP-only form.
  ``input_jacobian``, ``frobenius_sq``, ``jacobian_penalty``, the
  per-example spectral norms of :mod:`jacuap.metrics`, ``sgd_uap``,
  ``deepfool_uap``, FGSM and PGD use VJPs only.

Layout and normalisation.  The module receives what ``apply_fn`` receives,
``[0, 1]`` pixels, transposed to NCHW (``torch_layout="NCHW"``, the default)
or left NHWC (``torch_layout="NHWC"``, a module that takes channels-last).
A module trained on normalised inputs gets ``mean`` and ``std`` (one value
per channel, or one for all): ``apply_fn`` then feeds it ``(x - mean) / std``
(constants, not params), so budgets and Jacobians stay in pixel units.

Eval mode.  The module is switched to ``module.eval()`` in place (with a
``UserWarning`` when it was training): BatchNorm uses its running
statistics, Dropout is the identity, and each example's logits depend on
that example only, as jacuap's kernels require.

>>> import torch, jax.numpy as jnp
>>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(),
...                           torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3)).eval()
>>> apply_fn, params = from_torch(net, (8, 8, 1))
>>> sorted(params)[:2], apply_fn(params, jnp.zeros((5, 8, 8, 1))).shape
(['0.bias', '0.weight'], (5, 3))
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from jacuap.errors import ModelError, one_line

__all__ = ["from_torch", "load_torch_weights", "torch_factory", "MECHANISMS", "LAYOUTS"]

MECHANISMS = ("convert", "callback")
LAYOUTS = ("NCHW", "NHWC")


def _check_module(module: Any) -> Any:
    import torch

    if not isinstance(module, torch.nn.Module):
        raise ModelError(f"from_torch: module must be a torch.nn.Module, got {type(module).__name__}")
    return torch


def _channel_constant(value: Optional[Sequence[float]], name: str, channels: int, default: float) -> np.ndarray:
    if value is None:
        return np.full((1,), default, np.float32)
    arr = np.asarray(value, np.float32).reshape(-1)
    if arr.size not in (1, channels) or not np.all(np.isfinite(arr)) or (name == "std" and np.any(arr <= 0)):
        counts = "1 value" if channels == 1 else f"1 value or {channels} (one per channel)"
        raise ModelError(f"from_torch: {name} must be {counts}, finite{' and > 0' if name == 'std' else ''}, "
                         f"got {value!r}")
    return arr


def from_torch(
    module: Any,
    input_shape: Sequence[int],
    *,
    mechanism: str = "convert",
    torch_layout: str = "NCHW",
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
    check: bool = True,
) -> Tuple[Callable[[Any, jax.Array], jax.Array], Dict[str, jax.Array]]:
    """``(apply_fn, params)`` for a torch classifier on images of shape ``input_shape = (H, W, C)``.

    ``apply_fn(params, x)``: ``x`` of shape ``(B, H, W, C)``, pixels in
    ``[0, 1]``, to ``(B, K)`` float32 logits, computing
    ``module(layout((x - mean) / std))`` (module docstring: mechanisms,
    which kernels each supports, layout, normalisation, eval mode).

    Args:
      module: a ``torch.nn.Module`` mapping a batch to ``(B, K)`` logits.
      input_shape: jacuap's image shape ``(H, W, C)``, no batch axis.
      mechanism: ``"convert"`` (a JAX rewrite of the ``torch.fx`` graph) or
        ``"callback"`` (torch runs, through ``jax.pure_callback``).
      torch_layout: what ``module`` takes: ``"NCHW"`` or ``"NHWC"``.
      mean, std: per-channel normalisation applied before the module (None:
        the module receives ``[0, 1]`` pixels).
      check: compare ``apply_fn`` with the module on two random images once
        (``"convert"``: a mismatch beyond ``1e-3 * (1 + max|logit|)``
        raises; it catches an operation converted wrongly).

    Returns:
      ``(apply_fn, params)``; ``params`` is ``{torch name: float32 array}``
      (``"convert"``) or ``{}`` (``"callback"``).

    Raises:
      ModelError: a bad argument (one line naming it), a module that is not
        a classifier of these images, or (``"convert"``) an operation it
        cannot convert, naming the graph node and listing what is supported.
    """
    torch = _check_module(module)
    if mechanism not in MECHANISMS:
        raise ModelError(f"from_torch: mechanism must be one of {', '.join(MECHANISMS)}, got {mechanism!r}")
    if torch_layout not in LAYOUTS:
        raise ModelError(f"from_torch: torch_layout must be one of {', '.join(LAYOUTS)}, got {torch_layout!r}")
    try:
        shape = tuple(int(s) for s in input_shape)
    except (TypeError, ValueError):
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise ModelError(f"from_torch: input_shape must be the image shape (H, W, C) of positive ints, "
                         f"got {input_shape!r}")
    mean_arr = _channel_constant(mean, "mean", shape[2], 0.0)
    std_arr = _channel_constant(std, "std", shape[2], 1.0)
    normalise = mean is not None or std is not None
    if module.training:
        warnings.warn(f"from_torch: {type(module).__name__} was in training mode; switched to module.eval() "
                      f"(BatchNorm uses its running statistics, Dropout is off)", UserWarning, stacklevel=2)
    module.eval()
    # An array method of NumPy and JAX alike: the NumPy probe below compiles nothing.
    to_torch = (lambda z: z.transpose((0, 3, 1, 2))) if torch_layout == "NCHW" else (lambda z: z)
    torch_shape = (shape[2], shape[0], shape[1]) if torch_layout == "NCHW" else shape

    probe = np.random.RandomState(0).uniform(size=(2,) + shape).astype(np.float32)
    probe_in = np.asarray(to_torch((probe - mean_arr) / std_arr))
    try:
        with torch.no_grad():
            device = next((t.device for t in module.parameters()), torch.device("cpu"))
            ref = module(torch.from_numpy(np.array(probe_in, np.float32, copy=True)).to(device))
    except Exception as exc:  # noqa: BLE001 (the module's own error on these images)
        raise ModelError(f"from_torch: {type(module).__name__} fails on (2, {', '.join(map(str, torch_shape))}) "
                         f"{torch_layout} inputs ({type(exc).__name__}: {one_line(exc, 200)}); check input_shape "
                         f"and torch_layout") from None
    if not isinstance(ref, torch.Tensor) or ref.ndim != 2 or ref.shape[0] != 2 or not ref.is_floating_point():
        got = tuple(ref.shape) if isinstance(ref, torch.Tensor) else type(ref).__name__
        raise ModelError(f"from_torch: {type(module).__name__} must return (B, K) floating logits; for "
                         f"(2, {', '.join(map(str, torch_shape))}) inputs it returned {got}")
    num_classes = int(ref.shape[1])

    if mechanism == "convert":
        from jacuap.models.torch_convert import convert

        run, params = convert(module)
    else:
        from jacuap.models.torch_callback import callback_fn

        call = callback_fn(module, torch_shape, num_classes)
        run, params = (lambda p, z: call(z)), {}

    def apply_fn(params, x):
        if getattr(x, "ndim", None) != 4 or tuple(x.shape[1:]) != shape:
            raise ModelError(f"from_torch model: x must have shape (B, {', '.join(map(str, shape))}), "
                             f"got {tuple(getattr(x, 'shape', ()))}")
        z = (x - mean_arr.astype(x.dtype)) / std_arr.astype(x.dtype) if normalise else x
        out = run(params, to_torch(z))
        if not isinstance(out, jax.Array) or out.shape != (x.shape[0], num_classes):
            raise ModelError(f"from_torch model: the converted graph returned "
                             f"{getattr(out, 'shape', type(out).__name__)}, not ({x.shape[0]}, {num_classes}) logits")
        return out

    apply_fn.torch_mechanism = mechanism
    apply_fn.num_classes = num_classes
    if check:
        got = np.asarray(jax.jit(apply_fn)(params, jnp.asarray(probe)))
        want = ref.detach().cpu().numpy()
        err = float(np.max(np.abs(got - want)))
        if not err <= 1e-3 * (1.0 + float(np.max(np.abs(want)))):
            raise ModelError(f"from_torch: mechanism={mechanism!r} gives logits that differ from torch's by {err:.3g}"
                             f" on random images; an operation is converted wrongly (use mechanism='callback')")
    return apply_fn, params


def load_torch_weights(module: Any, path: str) -> Any:
    """Load a state dict from ``path`` into ``module`` (strict) and return ``module``.

    ``*.safetensors`` files are read with ``safetensors.torch.load_file``
    (when ``safetensors`` is installed); anything else with
    ``torch.load(path, map_location="cpu", weights_only=True)``, which
    unpickles tensors and plain containers only, never arbitrary objects, so a
    pickled model or any other object is refused.  A ``{"state_dict": ...}``
    wrapper is unwrapped, and a ``"module."`` prefix (``DataParallel``)
    stripped when ``module``'s own names lack it.

    Raises:
      ModelError: a missing or unreadable file, not a state dict, or keys and
        shapes that do not match ``module`` (one line).
    """
    torch = _check_module(module)
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ModelError(f"torch_weights {path!r}: no such file")
    if path.endswith(".safetensors"):
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise ModelError(f"torch_weights {path!r}: reading .safetensors needs the safetensors package "
                             f"(pip install safetensors)") from None
        try:
            state = load_file(path, device="cpu")
        except Exception as exc:  # noqa: BLE001
            raise ModelError(f"torch_weights {path!r}: not a readable safetensors file ({one_line(exc, 200)})"
                             ) from None
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 (UnpicklingError for anything but tensors and containers)
            raise ModelError(f"torch_weights {path!r}: not a state dict torch.load(weights_only=True) can read "
                             f"({type(exc).__name__}: {one_line(exc, 160)}); save one with "
                             f"torch.save(model.state_dict(), path)") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise ModelError(f"torch_weights {path!r}: holds a {type(state).__name__}, not a state dict of tensors; "
                         f"save one with torch.save(model.state_dict(), path)")
    own = module.state_dict()
    if state and all(k.startswith("module.") for k in state) and not any(k.startswith("module.") for k in own):
        state = {k[len("module."):]: v for k, v in state.items()}
    try:
        module.load_state_dict(state, strict=True)
    except Exception as exc:  # noqa: BLE001 (RuntimeError listing missing/unexpected keys, size mismatches)
        raise ModelError(f"torch_weights {path!r}: does not fit {type(module).__name__} ({one_line(exc, 300)})"
                         ) from None
    return module


def torch_factory(spec: str) -> Any:
    """The ``torch.nn.Module`` that ``"pkg.mod:factory"`` returns when called with no arguments.

    ``factory`` may be a function or a module class; the folder holding
    ``pkg`` must be importable (on ``PYTHONPATH``).

    Raises:
      ModelError: the spec is malformed, does not import (with a PYTHONPATH
        hint), the call fails, or it does not return a ``torch.nn.Module``.
    """
    from jacuap.models.adapter import _import_class

    factory = _import_class(str(spec))
    if not callable(factory):
        raise ModelError(f"torch_model {spec!r}: {type(factory).__name__} is not callable")
    try:
        module = factory()
    except Exception as exc:  # noqa: BLE001 (the factory's own error)
        raise ModelError(f"torch_model {spec!r}: calling it with no arguments failed ({type(exc).__name__}: "
                         f"{one_line(exc, 200)})") from None
    import torch

    if not isinstance(module, torch.nn.Module):
        raise ModelError(f"torch_model {spec!r}: returned a {type(module).__name__}, not a torch.nn.Module")
    return module
