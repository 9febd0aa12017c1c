"""Prediction rates: accuracy, universal evasion rate (UER) and fooling rate.

A universal perturbation ``v`` has the shape ``S`` of one input; the model
sees ``clip(x + v, 0, 1)``.  Predictions are ``argmax_k f(x)_k`` with
``f = apply_fn(params, .)``, computed on the host in fixed-size batches by
:func:`jacuap.batching.map_batches` (one compiled step per model and batch
size, the last batch zero-padded).  Rates are Python floats.  A model
wrapped by :func:`jacuap.parallel.batch_sharded_apply` splits each batch
over the devices (batch sizes are rounded up to the device count).
"""

from __future__ import annotations

import functools
from typing import Any, Optional

import chex
import jax
import jax.numpy as jnp
import numpy as np

from jacuap import parallel
from jacuap.batching import map_batches
from jacuap.jacobian import ApplyFn

__all__ = ["predict", "accuracy", "universal_evasion_rate", "fooling_rate"]


@functools.partial(jax.jit, static_argnames="apply_fn")
def _predict_batch(apply_fn: ApplyFn, params: Any, xb: jax.Array, v: Optional[jax.Array]) -> jax.Array:
    """``argmax f(xb)`` or, with ``v``, ``argmax f(clip(xb + v, 0, 1))``: ``(B,)`` int."""
    if v is not None:
        xb = jnp.clip(xb + v, 0.0, 1.0)
    return jnp.argmax(apply_fn(params, xb), axis=-1)


def _perturbed_predictions(apply_fn: ApplyFn, params: Any, x: Any, v: Any, batch_size: int) -> np.ndarray:
    x = jnp.asarray(x)
    if v is not None:
        v = jnp.asarray(v, x.dtype)
        chex.assert_shape(v, x.shape[1:])
    return map_batches(lambda xb: _predict_batch(apply_fn, params, xb, v), x, batch_size,
                       parallel.batch_multiple(apply_fn))


def predict(apply_fn: ApplyFn, params: Any, x: Any, batch_size: int = 1000) -> np.ndarray:
    """Predicted classes ``argmax_k f(x)_k``, shape ``(N,)`` int (NumPy).

    >>> W = jnp.array([[1.0, 0.0], [0.0, 1.0]])
    >>> apply_fn = lambda W, x: x @ W
    >>> predict(apply_fn, W, jnp.array([[0.9, 0.1], [0.2, 0.7]])).tolist()
    [0, 1]
    """
    return _perturbed_predictions(apply_fn, params, x, None, batch_size)


def accuracy(apply_fn: ApplyFn, params: Any, x: Any, y: Any, batch_size: int = 1000) -> float:
    """Share of inputs with ``argmax f(x) == y``.

    >>> W = jnp.array([[1.0, 0.0], [0.0, 1.0]])
    >>> accuracy(lambda W, x: x @ W, W, jnp.array([[0.9, 0.1], [0.2, 0.7]]), [0, 0])
    0.5
    """
    y = np.asarray(y)
    chex.assert_shape(y, (x.shape[0],))
    return float(np.mean(predict(apply_fn, params, x, batch_size) == y))


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
    y = np.asarray(y)
    chex.assert_shape(y, (x.shape[0],))
    return float(np.mean(_perturbed_predictions(apply_fn, params, x, v, batch_size) != y))


def fooling_rate(apply_fn: ApplyFn, params: Any, x: Any, v: Any, batch_size: int = 1000) -> float:
    """Share of inputs whose prediction ``v`` changes: ``k(clip(x + v)) != k(x)``.

    >>> W = jnp.array([[1.0, 0.0], [0.0, 1.0]])
    >>> x = jnp.array([[0.9, 0.1], [0.2, 0.7]])
    >>> fooling_rate(lambda W, x: x @ W, W, x, jnp.array([0.0, 0.85]))
    0.5
    """
    clean = predict(apply_fn, params, x, batch_size)
    return float(np.mean(_perturbed_predictions(apply_fn, params, x, v, batch_size) != clean))
