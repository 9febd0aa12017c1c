"""The host loop of every epoch-based UAP attack: one compiled epoch per call, a decaying step, progress.

SGD-UAP, SGA and the attacks built on them (:mod:`.sgd_uap`, :mod:`.sga`)
each compile ONE epoch (a ``lax.scan`` over minibatches) and call it
``num_epochs`` times from the host with

    key_e  = split(key, num_epochs)[e]
    alpha_e = step_size * step_decay**e

so that the budget, the step and the key are traced values and every epoch,
budget and seed reuses the compiled program.  :func:`run_epochs` is that
loop, written once; it hands each epoch its key and its decay factor
``step_decay**e`` (a Python float: an attack with several step sizes, such
as SGA's outer and inner ones, scales each).
"""

from __future__ import annotations

from typing import Callable, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from jacuap import backend

__all__ = ["EpochFn", "run_epochs"]

#: ``epoch(v, key, decay) -> (v, per-step objectives)``: one compiled epoch, its settings bound.
EpochFn = Callable[[jax.Array, jax.Array, float], Tuple[jax.Array, jax.Array]]


def run_epochs(
    epoch: EpochFn,
    v: jax.Array,
    key: jax.Array,
    num_epochs: int,
    step_decay: float,
    progress: Optional[Callable[[int, float], None]] = None,
    until: Optional[Callable[[float], bool]] = None,
) -> Tuple[jax.Array, np.ndarray]:
    """``(v, history)`` after ``num_epochs`` calls ``epoch(v, key_e, step_decay**e)``.

    ``history`` concatenates every epoch's per-step objectives (host NumPy;
    an epoch may return one value, as DeepFool-UAP's pass does its fooling
    rate); ``progress(e, mean objective of epoch e)``, when given, is called
    after each epoch (it waits for the epoch; without it the epochs are queued
    asynchronously and only the end waits); ``until(mean objective)``, when
    given, ends the loop after the first epoch it holds for.

    >>> import jax, jax.numpy as jnp
    >>> epoch = lambda v, key, decay: (v + decay, jnp.stack([jnp.asarray(decay)]))
    >>> v, history = run_epochs(epoch, jnp.zeros(()), jax.random.PRNGKey(0), 3, 0.5)
    >>> float(v), history.tolist()
    (1.75, [1.0, 0.5, 0.25])
    """
    losses = []
    for e, epoch_key in enumerate(jax.random.split(key, num_epochs)):
        v, epoch_losses = backend.pace(epoch(v, epoch_key, step_decay**e))
        losses.append(epoch_losses)
        if progress is not None or until is not None:
            mean = float(jnp.mean(epoch_losses))
            if progress is not None:
                progress(e, mean)
            if until is not None and until(mean):
                break
    history = np.concatenate([np.atleast_1d(np.asarray(l)) for l in losses]) if losses else np.zeros((0,))
    return v, history
