"""Prediction rates: accuracy, universal evasion rate (UER) and fooling rate.

A universal perturbation ``v`` has the shape ``S`` of one input; the model
sees ``clip(x + v, 0, 1)``.  Predictions are ``argmax_k f(x)_k`` with
``f = apply_fn(params, .)``, computed on the host in fixed-size batches by
:func:`jacuap.batching.map_batches` (one compiled step per model and batch
size, the last batch zero-padded).  Rates are Python floats.  A model
wrapped by :func:`jacuap.parallel.batch_sharded_apply` splits each batch
over the devices (batch sizes are rounded up to the device count).  Inputs are
checked first (:mod:`jacuap.checks`): pixels, labels in ``[0, K)``, ``v`` of shape ``S``.
"""

from __future__ import annotations

import functools
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jacuap import parallel
from jacuap.batching import map_batches
from jacuap.checks import check_labels, check_model_inputs, check_perturbation, check_positive_int
from jacuap.jacobian import ApplyFn

__all__ = ["predict", "accuracy", "universal_evasion_rate", "fooling_rate"]


@functools.partial(jax.jit, static_argnames="apply_fn")
def _predict_batch(apply_fn: ApplyFn, params: Any, xb: jax.Array, v: Optional[jax.Array]) -> jax.Array:
    """``argmax f(xb)`` or, with ``v``, ``argmax f(clip(xb + v, 0, 1))``: ``(B,)`` int."""
    if v is not None:
        xb = jnp.clip(xb + v, 0.0, 1.0)
    return jnp.argmax(apply_fn(params, xb), axis=-1)


def _checked(apply_fn: ApplyFn, params: Any, x: Any, batch_size: int, y: Any = False, v: Any = False) -> None:
    """The checks of every rate (:mod:`jacuap.checks`): images, model, batch size, then ``y`` and ``v`` if given."""
    num_classes = check_model_inputs(apply_fn, params, x)
    check_positive_int(batch_size, "batch_size")
    if y is not False:
        check_labels(y, np.shape(x)[0], num_classes)
    if v is not False:
        check_perturbation(v, np.shape(x)[1:])


def _perturbed_predictions(apply_fn: ApplyFn, params: Any, x: Any, v: Any, batch_size: int) -> np.ndarray:
    x = jnp.asarray(x)
    if v is not None:
        v = jnp.asarray(v, x.dtype)
    return map_batches(lambda xb: _predict_batch(apply_fn, params, xb, v), x, batch_size,
                       parallel.batch_multiple(apply_fn))


def predict(apply_fn: ApplyFn, params: Any, x: Any, batch_size: int = 1000) -> np.ndarray:
    """Predicted classes ``argmax_k f(x)_k``, shape ``(N,)`` int (NumPy).

    >>> W = jnp.array([[1.0, 0.0], [0.0, 1.0]])
    >>> apply_fn = lambda W, x: x @ W
    >>> predict(apply_fn, W, jnp.array([[0.9, 0.1], [0.2, 0.7]])).tolist()
    [0, 1]
    """
    _checked(apply_fn, params, x, batch_size)
    return _perturbed_predictions(apply_fn, params, x, None, batch_size)


def accuracy(apply_fn: ApplyFn, params: Any, x: Any, y: Any, batch_size: int = 1000) -> float:
    """Share of inputs with ``argmax f(x) == y``.

    >>> W = jnp.array([[1.0, 0.0], [0.0, 1.0]])
    >>> accuracy(lambda W, x: x @ W, W, jnp.array([[0.9, 0.1], [0.2, 0.7]]), [0, 0])
    0.5
    """
    _checked(apply_fn, params, x, batch_size, y)
    return float(np.mean(_perturbed_predictions(apply_fn, params, x, None, batch_size) == np.asarray(y)))


def universal_evasion_rate(
    apply_fn: ApplyFn, params: Any, x: Any, y: Any, v: Any, batch_size: int = 1000
) -> float:
    """UER: share of inputs with ``argmax f(clip(x + v, 0, 1)) != y``.

    At ``v = 0`` it is ``1 - accuracy``.  ``v`` has shape ``S``.

    >>> W = jnp.array([[1.0, 0.0], [0.0, 1.0]])
    >>> x, y = jnp.array([[0.9, 0.1], [0.2, 0.7]]), [0, 1]
    >>> universal_evasion_rate(lambda W, x: x @ W, W, x, y, jnp.array([0.0, 0.85]))
    0.5
    """
    _checked(apply_fn, params, x, batch_size, y, v)
    return float(np.mean(_perturbed_predictions(apply_fn, params, x, v, batch_size) != np.asarray(y)))


def fooling_rate(apply_fn: ApplyFn, params: Any, x: Any, v: Any, batch_size: int = 1000) -> float:
    """Share of inputs whose prediction ``v`` changes: ``k(clip(x + v)) != k(x)``.

    >>> W = jnp.array([[1.0, 0.0], [0.0, 1.0]])
    >>> x = jnp.array([[0.9, 0.1], [0.2, 0.7]])
    >>> fooling_rate(lambda W, x: x @ W, W, x, jnp.array([0.0, 0.85]))
    0.5
    """
    _checked(apply_fn, params, x, batch_size, v=v)
    clean = _perturbed_predictions(apply_fn, params, x, None, batch_size)
    return float(np.mean(_perturbed_predictions(apply_fn, params, x, v, batch_size) != clean))
