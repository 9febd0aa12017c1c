"""The return type of every universal attack: :class:`UAPResult`."""

from __future__ import annotations

from typing import NamedTuple

import jax
import numpy as np

__all__ = ["UAPResult"]


class UAPResult(NamedTuple):
    """A universal adversarial perturbation and the attack's record of crafting it.

    A NamedTuple, so ``v, history = attack(...)`` and ``attack(...)[0]`` work.

    Attributes:
      v: the perturbation, shape ``S`` of ONE input, inside the budget.
      history: a 1-D NumPy array whose meaning each attack documents:

        * :func:`~jacuap.attacks.sgd_uap`: the minibatch objectives, one per
          step (``num_epochs * ceil(N / batch_size)`` values);
        * :func:`~jacuap.attacks.deepfool_uap`: the fooling rate on the
          crafting set after each pass (at most ``max_passes`` values);
        * :func:`~jacuap.attacks.singular_vector_uap`: ``[UER(v), UER(-v)]``,
          the evasion rates on the crafting set of the returned ``v`` and of
          its opposite (the sign with the larger one is returned).

    >>> r = UAPResult(np.zeros(2), np.array([0.5]))
    >>> v, history = r
    >>> r.v.shape, history.tolist()
    ((2,), [0.5])
    """

    v: jax.Array
    history: np.ndarray
