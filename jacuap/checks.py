"""Input checks at the library's public boundary: no silent wrong numbers.

Every public function of :mod:`jacuap.jacobian`, :mod:`jacuap.metrics` and
:mod:`jacuap.attacks` validates its arguments with these checks before it
computes anything, so that a bad input fails with a one-line message naming
the argument and the expected form instead of a plausible wrong number (NaN
pixels, uint8 images, labels out of range, a negative budget, an empty set)
or an obscure error deep inside JAX, chex or Flax.  The rules:

* images (:func:`check_images`): floating point, ``ndim >= 2`` (a batch
  ``(N, *S)``), at least one example, finite, pixels in ``[0, 1]``;
* labels (:func:`check_labels`): integer, shape ``(N,)``, in ``[0, K)``;
* model (:func:`check_logits`): ``apply_fn(params, x)`` accepts ``x``'s shape and returns
  floating logits ``(B, K)``, ``K >= 2`` (``K >= 1`` for Jacobians: :func:`check_jacobian_inputs`);
* budget (:func:`check_budget`): finite, ``>= 0``, ``<= 1`` for ``linf``;
* counts (:func:`check_positive_int`): integers ``>= 1``;
* numbers (:func:`check_number`): finite, within the stated bounds;
* keys (:func:`check_key`): present and ONE PRNG key;
* perturbations (:func:`check_perturbation`): finite, the shape ``S`` of one input;
* Jacobians (:func:`check_jacobians`): floating, finite, ``(N, K, *S)``.

A check runs only on concrete values: a JAX tracer (under ``jit``, ``vmap``,
``grad``, ``scan``) is never inspected, so traced kernels (the training step)
pay nothing and tracing never breaks.  Value checks (finite, range) fetch two
scalars from the device.  Failures raise :class:`InputError` (a
``ValueError``: bad values and shapes) or :class:`InputTypeError` (a
``TypeError``: bad dtypes and types); both are :class:`jacuap.errors.UserError`.
"""

from __future__ import annotations

import math
import weakref
from typing import Any, Callable, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from jacuap.budgets import budget_rule
from jacuap.errors import UserError, one_line

__all__ = [
    "InputError", "InputTypeError", "concrete", "check_images", "check_labels", "check_class", "check_logits",
    "check_model_inputs", "check_jacobian_inputs", "check_budget", "check_number", "check_finite",
    "check_positive_int", "check_key", "check_perturbation", "check_jacobians",
]


class InputError(UserError):
    """A value or shape a library function cannot take (a ``ValueError``)."""


class InputTypeError(UserError, TypeError):
    """An argument of the wrong dtype or type (a ``TypeError``, and a ``UserError``)."""


def concrete(*values: Any) -> bool:
    """True when no leaf of ``values`` is a JAX tracer (so a check may inspect them).

    >>> seen = []
    >>> _ = jax.jit(lambda a: seen.append(concrete(a)) or a)(jnp.ones(2))
    >>> concrete(jnp.ones(2), 3), seen
    (True, [False])
    """
    return not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(values))


def _shape(x: Any) -> Tuple[int, ...]:
    return tuple(np.shape(x))


def _dtype(x: Any) -> Any:
    dtype = getattr(x, "dtype", None)
    return dtype if dtype is not None else np.asarray(x).dtype


def _is_float(dtype: Any) -> bool:
    return bool(jnp.issubdtype(dtype, jnp.floating))


def _is_int(dtype: Any) -> bool:
    return bool(jnp.issubdtype(dtype, jnp.integer))


def _extrema(x: Any) -> Tuple[float, float]:
    """``(min, max)`` of a non-empty array (NaN when it holds a NaN), computed where ``x`` lives."""
    if isinstance(x, jax.Array):
        with jax.ensure_compile_time_eval():  # a concrete array closed over by a traced function
            lo, hi = jax.device_get((jnp.min(x), jnp.max(x)))
    else:
        x = np.asarray(x)
        lo, hi = np.min(x), np.max(x)
    return float(lo), float(hi)


def _first_non_finite(x: Any) -> str:
    """``"nan at index (i, ...)"`` for the first non-finite entry of ``x``."""
    with jax.ensure_compile_time_eval():  # see _extrema
        xp, flat = (jnp, x.reshape(-1)) if isinstance(x, jax.Array) else (np, np.asarray(x).reshape(-1))
        first = int(xp.argmax(~xp.isfinite(flat)))
        value = float(flat[first])
    index = tuple(int(i) for i in np.unravel_index(first, _shape(x)))
    return f"{value} at index {index if len(index) > 1 else index[0]}"


def check_finite(x: Any, name: str) -> None:
    """Raises :class:`InputError` if a concrete ``x`` holds a NaN or an infinity.

    >>> check_finite(np.array([1.0, np.inf]), "a")
    Traceback (most recent call last):
    ...
    jacuap.checks.InputError: a must hold finite numbers; found inf at index 1
    """
    if not concrete(x) or np.size(x) == 0:
        return
    lo, hi = _extrema(x)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise InputError(f"{name} must hold finite numbers; found {_first_non_finite(x)}")


def check_images(x: Any, name: str = "x", *, unit_range: bool = True) -> None:
    """Images: floating point, ``(N, *S)`` with ``ndim >= 2`` and ``N >= 1``, finite, in ``[0, 1]``.

    ``unit_range=False`` drops the ``[0, 1]`` rule (for kernels that training
    also calls on normalised inputs).

    >>> check_images(np.full((2, 3), 0.5, np.float32))  # passes
    >>> check_images(np.array([[0.5, np.nan]]))
    Traceback (most recent call last):
    ...
    jacuap.checks.InputError: x must hold finite pixel values in [0, 1]; found nan at index (0, 1)
    >>> check_images(np.zeros((2, 3), np.uint8))
    Traceback (most recent call last):
    ...
    jacuap.checks.InputTypeError: x must be floating-point pixel values in [0, 1] (e.g. float32), got dtype uint8: convert with x.astype(np.float32) / 255
    """
    if not concrete(x):
        return
    dtype, shape = _dtype(x), _shape(x)
    if not _is_float(dtype):
        hint = ": convert with x.astype(np.float32) / 255" if dtype == np.uint8 else ""
        raise InputTypeError(f"{name} must be floating-point pixel values in [0, 1] (e.g. float32), "
                             f"got dtype {dtype}{hint}")
    if len(shape) < 2:
        raise InputError(f"{name} must be a batch of images of shape (N, *S) with ndim >= 2, got shape {shape}")
    if math.prod(shape) == 0:
        raise InputError(f"{name} is empty (shape {shape}): need at least one example of nonzero size")
    lo, hi = _extrema(x)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        where = "pixel values in [0, 1]" if unit_range else "values"
        raise InputError(f"{name} must hold finite {where}; found {_first_non_finite(x)}")
    if unit_range and (lo < 0.0 or hi > 1.0):
        raise InputError(f"{name} must hold pixel values in [0, 1]; found values in [{lo:g}, {hi:g}] "
                         "(scale the images to [0, 1])")


def check_labels(y: Any, n: int, num_classes: Optional[int] = None, name: str = "y") -> None:
    """Labels: integer, shape ``(n,)`` (one per example), in ``[0, num_classes)``.

    >>> check_labels([0, 2, 1], 3, num_classes=3)  # passes
    >>> check_labels([0, 3], 2, num_classes=3)
    Traceback (most recent call last):
    ...
    jacuap.checks.InputError: y must hold class labels in [0, 3); found 3 at index 1
    """
    if not concrete(y):
        return
    dtype, shape = _dtype(y), _shape(y)
    if not _is_int(dtype):
        raise InputTypeError(f"{name} must be integer class labels, got dtype {dtype}")
    if shape != (int(n),):
        raise InputError(f"{name} must have shape ({int(n)},), one label per example of x, got shape {shape}")
    if n == 0:
        return
    labels = np.asarray(y)
    bad = labels < 0 if num_classes is None else (labels < 0) | (labels >= num_classes)
    if np.any(bad):
        index = int(np.argmax(bad))
        expected = ">= 0" if num_classes is None else f"in [0, {int(num_classes)})"
        raise InputError(f"{name} must hold class labels {expected}; found {labels[index]} at index {index}")


def check_class(value: Any, num_classes: Optional[int], name: str) -> None:
    """One class index: an integer in ``[0, num_classes)`` (e.g. an attack's target).

    >>> check_class(12, 10, "targeted")
    Traceback (most recent call last):
    ...
    jacuap.checks.InputError: targeted must be a class index in [0, 10), got 12
    """
    if not concrete(value):
        return
    if isinstance(value, bool) or not _is_int(_dtype(value)) or np.ndim(value) != 0:
        raise InputTypeError(f"{name} must be an integer class index, got {value!r}")
    if value < 0 or (num_classes is not None and value >= num_classes):
        expected = ">= 0" if num_classes is None else f"in [0, {int(num_classes)})"
        raise InputError(f"{name} must be a class index {expected}, got {value}")


# apply_fn -> {(parameter and input shapes): eval_shape}; weak, so a model's closures are not kept alive.
_LOGITS_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _abstract_logits(apply_fn: Callable, params: Any, spec: jax.ShapeDtypeStruct) -> Any:
    """``jax.eval_shape`` of ``apply_fn(params, x)``, cached per (model, parameter shapes, input spec)."""
    leaves, treedef = jax.tree_util.tree_flatten(params)
    key = (treedef, tuple((_shape(l), str(_dtype(l))) for l in leaves), spec.shape, str(spec.dtype))
    try:
        per_fn = _LOGITS_CACHE.setdefault(apply_fn, {})
    except TypeError:  # not weakly referenceable or unhashable: no caching
        per_fn = {}
    if key not in per_fn:
        if len(per_fn) >= 16:
            per_fn.clear()
        per_fn[key] = jax.eval_shape(apply_fn, params, spec)
    return per_fn[key]


def check_logits(apply_fn: Callable, params: Any, x: Any, name: str = "x", *, min_classes: int = 2) -> Optional[int]:
    """The model accepts ``x`` and returns floating logits ``(B, K)``, ``K >= min_classes``; returns ``K``.

    Checked cheaply with :func:`jax.eval_shape` (traced once per model and
    input shape, never run).  A shape error inside the model (e.g. a CNN given
    ``(B, H, W)`` without the channel axis) becomes an :class:`InputError`
    naming ``x``'s shape.  Returns None (checks nothing) when ``x`` or
    ``params`` is traced.  Classifiers need ``K >= 2``; the Jacobian kernels
    accept any ``K >= 1`` (``min_classes=1``).

    >>> W = jnp.ones((3, 2))
    >>> check_logits(lambda W, x: x @ W, W, jnp.ones((5, 3)))
    2
    >>> check_logits(lambda W, x: jnp.sum(x @ W), W, jnp.ones((5, 3)))
    Traceback (most recent call last):
    ...
    jacuap.checks.InputError: apply_fn must return logits of shape (B, K) with K >= 2; for x of shape (5, 3) it returned shape ()
    """
    if not callable(apply_fn):
        raise InputTypeError(f"apply_fn must be a function (params, x) -> logits, got {type(apply_fn).__name__}")
    if not concrete(x, params):
        return None
    shape = _shape(x)
    spec = jax.ShapeDtypeStruct(shape, _dtype(x))  # the whole batch: apply_fn may close over batch-shaped arrays
    try:
        out = _abstract_logits(apply_fn, params, spec)
    except Exception as err:  # noqa: BLE001 (re-raised below unless it is a shape error)
        if not (isinstance(err, (TypeError, ValueError)) or type(err).__module__.split(".")[0] == "flax"):
            raise
        hint = (": add the channel axis (x[..., None]) for single-channel images"
                if len(shape) == 3 else "")
        raise InputError(f"{name} has shape {shape}, which the model cannot take: it expects images of shape "
                         f"(B, *S) with S its input shape (B, H, W, C) for the CNN and ResNet{hint}; "
                         f"the model said: {one_line(err, 200)}") from err
    if not isinstance(out, jax.ShapeDtypeStruct):
        raise InputTypeError(f"apply_fn must return ONE array of logits of shape (B, K), got {type(out).__name__}")
    if len(out.shape) != 2 or out.shape[0] != shape[0] or out.shape[1] < min_classes:
        raise InputError(f"apply_fn must return logits of shape (B, K) with K >= {min_classes}; for {name} of shape "
                         f"{spec.shape} it returned shape {tuple(out.shape)}")
    if not _is_float(out.dtype):
        raise InputTypeError(f"apply_fn must return floating-point logits, got dtype {out.dtype}")
    return int(out.shape[1])


def check_model_inputs(apply_fn: Callable, params: Any, x: Any, name: str = "x", *,
                       unit_range: bool = True, min_classes: int = 2) -> Optional[int]:
    """:func:`check_images` then :func:`check_logits`; returns ``K`` (None when traced).

    >>> check_model_inputs(lambda W, x: x @ W, jnp.ones((3, 2)), jnp.zeros((4, 3)))
    2
    """
    check_images(x, name, unit_range=unit_range)
    return check_logits(apply_fn, params, x, name, min_classes=min_classes)


def check_jacobian_inputs(apply_fn: Callable, params: Any, x: Any, *, unit_range: bool = True) -> Optional[int]:
    """:func:`check_model_inputs` for a function whose input Jacobian is taken: any ``K >= 1`` outputs.

    >>> check_jacobian_inputs(lambda w, x: x @ w, jnp.ones((3, 1)), jnp.zeros((4, 3)))
    1
    """
    return check_model_inputs(apply_fn, params, x, unit_range=unit_range, min_classes=1)


def check_number(value: Any, name: str, *, minimum: Optional[float] = None, maximum: Optional[float] = None,
                 strict: bool = False) -> None:
    """A real number (or an array of them): finite, ``>= minimum`` (``>`` when ``strict``), ``<= maximum``.

    >>> check_number(0.0, "step_size", minimum=0.0, strict=True)
    Traceback (most recent call last):
    ...
    jacuap.checks.InputError: step_size must be a finite number > 0, got 0.0
    """
    if not concrete(value):
        return
    if isinstance(value, (bool, str)) or not (_is_float(_dtype(value)) or _is_int(_dtype(value))):
        raise InputTypeError(f"{name} must be a real number, got {value!r}")
    arr = np.asarray(value, np.float64)
    if arr.size == 0:
        raise InputError(f"{name} must be a finite number, got an empty array")
    bounds = [f"{'>' if strict else '>='} {minimum:g}" if minimum is not None else "",
              f"<= {maximum:g}" if maximum is not None else ""]
    ok = np.isfinite(arr)
    if minimum is not None:
        ok &= arr > minimum if strict else arr >= minimum
    if maximum is not None:
        ok &= arr <= maximum
    if not np.all(ok):
        got = arr.reshape(-1)[int(np.argmin(ok.reshape(-1)))]
        rule = " and ".join(b for b in bounds if b)
        raise InputError(f"{name} must be a finite number{' ' + rule if rule else ''}, got {got}")


def check_budget(eps: Any, norm: str, name: str = "eps") -> None:
    """A budget radius: finite, ``>= 0``, and ``<= 1`` for ``linf`` (pixels live in ``[0, 1]``).

    >>> check_budget(0.1, "linf"); check_budget(3.0, "l2")  # pass
    >>> check_budget(-0.1, "linf")
    Traceback (most recent call last):
    ...
    jacuap.checks.InputError: eps must be a finite number >= 0 (<= 1 for linf), got -0.1
    """
    if not concrete(eps):
        return
    rule = budget_rule(name)  # jacuap.budgets: the rule every caller shares
    if isinstance(eps, (bool, str)) or not (_is_float(_dtype(eps)) or _is_int(_dtype(eps))):
        raise InputTypeError(f"{rule}, got {eps!r}")
    got = np.asarray(eps, np.float64).reshape(-1)
    ok = np.isfinite(got) & (got >= 0.0) & (got <= (1.0 if norm == "linf" else np.inf))
    if got.size == 0 or not np.all(ok):
        raise InputError(f"{rule}, got {got[~ok][0] if got.size else 'an empty array'}")


def check_positive_int(value: Any, name: str, *, minimum: int = 1) -> None:
    """An integer ``>= minimum`` (default 1): iteration counts, batch sizes, passes.

    >>> check_positive_int(0, "num_iters")
    Traceback (most recent call last):
    ...
    jacuap.checks.InputError: num_iters must be an integer >= 1, got 0
    """
    if not concrete(value):
        return
    if isinstance(value, bool) or np.ndim(value) != 0 or not _is_int(_dtype(value)):
        raise InputTypeError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if int(value) < minimum:
        raise InputError(f"{name} must be an integer >= {minimum}, got {int(value)}")


def check_key(key: Any, name: str = "key", why: str = "") -> None:
    """ONE PRNG key: ``jax.random.PRNGKey(seed)`` (uint32 ``(2,)``) or ``jax.random.key(seed)``.

    ``None`` raises too (the message says what the key is ``why`` needed for).

    >>> check_key(jax.random.PRNGKey(0))  # passes
    >>> check_key(jax.random.split(jax.random.PRNGKey(0), 3))
    Traceback (most recent call last):
    ...
    jacuap.checks.InputError: key must be ONE PRNG key (jax.random.PRNGKey(seed): uint32 of shape (2,)), got shape (3, 2)
    """
    if key is None:
        raise InputError(f"{name} is required{' ' + why if why else ''}: pass {name}=jax.random.PRNGKey(seed)")
    if not concrete(key):
        return
    dtype, shape = _dtype(key), _shape(key)
    if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        if shape != ():
            raise InputError(f"{name} must be ONE PRNG key (a scalar typed key), got shape {shape}")
        return
    if dtype != np.uint32:
        raise InputTypeError(f"{name} must be a PRNG key from jax.random.PRNGKey(seed), got {type(key).__name__} "
                             f"of dtype {dtype}")
    if len(shape) != 1:
        raise InputError(f"{name} must be ONE PRNG key (jax.random.PRNGKey(seed): uint32 of shape (2,)), "
                         f"got shape {shape}")


def check_perturbation(v: Any, image_shape: Sequence[int], name: str = "v") -> None:
    """A perturbation of ONE input: real, finite, shape ``S`` (``image_shape``, the shape of ``x[0]``).

    >>> check_perturbation(np.zeros(64), (8, 8, 1))
    Traceback (most recent call last):
    ...
    jacuap.checks.InputError: v must have the shape S = (8, 8, 1) of one input, got shape (64,)
    """
    if not concrete(v):
        return
    dtype, shape = _dtype(v), _shape(v)
    if not (_is_float(dtype) or _is_int(dtype)) or dtype == np.bool_:
        raise InputTypeError(f"{name} must be a real-valued perturbation, got dtype {dtype}")
    if shape != tuple(image_shape):
        raise InputError(f"{name} must have the shape S = {tuple(image_shape)} of one input, got shape {shape}")
    check_finite(v, name)


def check_jacobians(jac: Any, name: str = "jac") -> None:
    """Per-example Jacobians: floating, ``(N, K, *S)`` with ``N, K >= 1`` and ``ndim >= 3``, finite.

    >>> check_jacobians(np.zeros((4, 3)))
    Traceback (most recent call last):
    ...
    jacuap.checks.InputError: jac must be per-example Jacobians of shape (N, K, *S) with ndim >= 3, got shape (4, 3)
    """
    if not concrete(jac):
        return
    dtype, shape = _dtype(jac), _shape(jac)
    if not _is_float(dtype):
        raise InputTypeError(f"{name} must be floating-point Jacobians, got dtype {dtype}")
    if len(shape) < 3:
        raise InputError(f"{name} must be per-example Jacobians of shape (N, K, *S) with ndim >= 3, got shape {shape}")
    if math.prod(shape) == 0:
        raise InputError(f"{name} is empty (shape {shape}): need at least one example")
    check_finite(jac, name)
