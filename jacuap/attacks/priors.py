"""What a data-free UAP attack crafts on: the priors that stand in for the data.

An attacker without data (Mopuri et al., TPAMI 2018; Zhang et al., ICCV
2021) still needs inputs to push the perturbation through the model.
:func:`prior_inputs` draws ``N`` inputs of shape ``S`` in ``[0, 1]``:

* ``"none"``: no data at all; every input is the centre of the pixel box,
  ``c = 0.5``, so the model sees ``clip(c + v, 0, 1)``: the pixel-space
  analogue of feeding ``v`` alone to a mean-subtracted network;
* ``"range"``: the range prior, ``clip(N(0.5, (1/6)^2), 0, 1)`` per pixel
  (99.7% of the draws inside the pixel range before clipping): random
  images that know only the range of the inputs;
* ``"data"``: the attacker's own inputs ``x`` (real data, or any proxy set
  the caller passes, such as another dataset's images).

>>> import jax
>>> prior_inputs("range", None, jax.random.PRNGKey(0), shape=(4, 4, 1), num_inputs=3).shape
(3, 4, 4, 1)
>>> float(prior_inputs("none", None, jax.random.PRNGKey(0), shape=(2,), num_inputs=1)[0, 0])
0.5
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp

from jacuap.checks import check_key, check_positive_int

__all__ = ["PRIORS", "DATA_FREE_PRIORS", "prior_inputs", "split_prior_key"]

PRIORS = ("data", "range", "none")
#: The priors that read no data.
DATA_FREE_PRIORS = ("range", "none")
_CENTRE, _RANGE_STD = 0.5, 1.0 / 6.0


def prior_inputs(
    prior: str,
    x: Optional[Any],
    key: Optional[jax.Array],
    *,
    shape: Optional[Sequence[int]] = None,
    num_inputs: Optional[int] = None,
    dtype: Any = jnp.float32,
) -> jax.Array:
    """The ``(N, *S)`` crafting inputs of ``prior`` (module docstring).

    ``"data"`` returns ``x`` (required); the data-free priors need
    ``shape`` (one input's) and ``num_inputs``, and REFUSE ``x``, so that a
    data-free attack provably never reads data.  ``key`` draws the range
    prior's images.
    """
    if prior not in PRIORS:
        raise ValueError(f"prior must be one of {', '.join(PRIORS)}, got {prior!r}")
    if prior == "data":
        if x is None:
            raise ValueError("prior='data' needs the inputs x; a data-free prior is 'range' or 'none'")
        return jnp.asarray(x)
    if x is not None:
        raise ValueError(f"prior={prior!r} is data-free: do not pass x (or use prior='data')")
    if shape is None:
        raise ValueError(f"prior={prior!r} needs input_shape, the shape of one input")
    check_positive_int(num_inputs, "num_inputs")
    full = (int(num_inputs),) + tuple(int(s) for s in shape)
    if prior == "none":
        return jnp.full(full, _CENTRE, dtype)
    check_key(key, why="by the range prior (its random images)")
    return jnp.clip(_CENTRE + _RANGE_STD * jax.random.normal(key, full, dtype), 0.0, 1.0)


def split_prior_key(prior: str, x: Optional[Any], key: Optional[jax.Array], attack: str, *,
                    shape: Optional[Sequence[int]], num_inputs: Optional[int]):
    """``(inputs, attack_key)``: an attack's crafting inputs under ``prior`` and the key left for the attack."""
    check_key(key, why=f"by {attack} (the prior's images and the minibatch order)")
    prior_key, attack_key = jax.random.split(key)
    return prior_inputs(prior, x, prior_key, shape=shape, num_inputs=num_inputs), attack_key
