"""Norm balls: the budgets ``||v||_p <= eps`` (``p`` in ``{inf, 2}``) every attack works in.

* :func:`project`: Euclidean projection onto the ball.
* :func:`ascent_direction`: the unit steepest-ascent direction of a gradient
  (``sign(g)`` for l_inf, ``g / ||g||_2`` for l2), the step every attack takes.
* :func:`scale_to_budget`: a direction put on the surface of the ball.
* :func:`random_in_ball`: random starts inside the ball (PGD).
* :func:`perturbation_norm`, :func:`check_norm`: measuring a perturbation and
  validating a norm name.

Every function takes either ONE perturbation of shape ``S`` or, with
``batched=True``, a batch ``(B, *S)`` whose examples each have their own ball.
"""

from __future__ import annotations

from typing import Any, Tuple

import jax
import jax.numpy as jnp

from jacuap.budgets import NORMS
from jacuap.checks import check_budget, check_key

__all__ = [
    "NORMS",
    "TINY",
    "check_norm",
    "perturbation_norm",
    "project",
    "ascent_direction",
    "scale_to_budget",
    "random_in_ball",
]


# Division guard for gradient / weight normalisations (float32-safe).
TINY = 1e-12


def check_norm(norm: str) -> None:
    """Raises ``ValueError`` unless ``norm`` is one of :data:`NORMS`.

    >>> check_norm("l1")
    Traceback (most recent call last):
    ...
    ValueError: unknown norm 'l1'; use one of ('linf', 'l2')
    """
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; use one of {NORMS}")


def _l2(a: jax.Array, batched: bool) -> jax.Array:
    """``||a||_2`` (a scalar), or one norm per leading index broadcastable to ``a``."""
    if not batched:
        return jnp.sqrt(jnp.sum(jnp.square(a)))
    sq = jnp.sum(jnp.square(a.reshape(a.shape[0], -1)), axis=1)
    return jnp.sqrt(sq).reshape((-1,) + (1,) * (a.ndim - 1))


def perturbation_norm(v: jax.Array, norm: str, batched: bool = False) -> jax.Array:
    """``||v||_inf = max |v_j|`` or ``||v||_2``: a scalar, or ``(B,)`` when ``batched``.

    >>> float(perturbation_norm(jnp.array([3.0, -4.0]), "l2")), float(perturbation_norm(jnp.array([3.0, -4.0]), "linf"))
    (5.0, 4.0)
    """
    check_norm(norm)
    v = jnp.asarray(v)
    flat = v.reshape(v.shape[0], -1) if batched else v.reshape(-1)
    if norm == "linf":
        return jnp.max(jnp.abs(flat), axis=-1)
    return jnp.sqrt(jnp.sum(jnp.square(flat), axis=-1))


def project(v: jax.Array, norm: str, eps: Any, batched: bool = False) -> jax.Array:
    """Euclidean projection onto the ``eps``-ball of ``norm``.

    ``linf``: ``clip(v, -eps, eps)`` elementwise.  ``l2``:
    ``v * min(1, eps / ||v||_2)``.

    Args:
      v: one perturbation of shape ``S``, or a batch ``(B, *S)`` when
        ``batched`` (each example projected on its own ball).
      norm: ``"linf"`` or ``"l2"``.
      eps: the radius (a Python float or a traced scalar).
      batched: whether the leading axis of ``v`` indexes separate perturbations
        (matters for ``l2`` only).

    Returns:
      The projection, same shape and dtype as ``v``.

    >>> print(project(jnp.array([3.0, -4.0]), "l2", 1.0))
    [ 0.6 -0.8]
    >>> print(project(jnp.array([3.0, -0.1]), "linf", 0.5))
    [ 0.5 -0.1]
    """
    check_norm(norm)
    check_budget(eps, norm)
    eps = jnp.asarray(eps, v.dtype)
    if norm == "linf":
        return jnp.clip(v, -eps, eps)
    length = _l2(v, batched)
    return v * jnp.minimum(1.0, eps / jnp.maximum(length, TINY))


def ascent_direction(g: jax.Array, norm: str, batched: bool = False) -> jax.Array:
    """The unit-norm steepest-ascent direction of a gradient ``g``.

    ``linf``: ``sign(g)`` (maximises ``<g, u>`` over ``||u||_inf <= 1``);
    ``l2``: ``g / ||g||_2`` (per example when ``batched``).  A zero gradient
    gives a zero step.

    >>> print(ascent_direction(jnp.array([3.0, -4.0]), "l2"))
    [ 0.6 -0.8]
    """
    if norm == "linf":
        return jnp.sign(g)
    return g / jnp.maximum(_l2(g, batched), TINY)


def scale_to_budget(u: jax.Array, norm: str, eps: Any) -> jax.Array:
    """A direction ``u`` (shape ``S``) put on the surface of the ball.

    ``linf``: ``eps * sign(u)`` (the vertex maximising ``<u, v>``);
    ``l2``: ``eps * u / ||u||_2``.

    >>> print(scale_to_budget(jnp.array([0.3, -0.01]), "linf", 0.1))
    [ 0.1 -0.1]
    """
    check_norm(norm)
    check_budget(eps, norm)
    return jnp.asarray(eps, u.dtype) * ascent_direction(u, norm)


def random_in_ball(key: jax.Array, shape: Tuple[int, ...], norm: str, eps: Any, dtype: Any) -> jax.Array:
    """A batch ``shape = (B, *S)`` of random points of the ``eps``-ball, one per example.

    ``linf``: uniform in the box ``[-eps, eps]^S``.  ``l2``: a uniform
    direction ``n / ||n||_2`` (``n`` standard normal) times a radius
    ``eps * U[0, 1)`` (denser near the centre than uniform in volume).

    >>> z = random_in_ball(jax.random.PRNGKey(0), (3, 4), "l2", 0.5, jnp.float32)
    >>> z.shape, bool(jnp.all(perturbation_norm(z, "l2", batched=True) <= 0.5))
    ((3, 4), True)
    """
    check_key(key, why="by random_in_ball")
    check_norm(norm)
    check_budget(eps, norm)
    if norm == "linf":
        return jax.random.uniform(key, shape, dtype, -1.0, 1.0) * eps
    dkey, rkey = jax.random.split(key)
    direction = ascent_direction(jax.random.normal(dkey, shape, dtype), "l2", batched=True)
    radius = jax.random.uniform(rkey, (shape[0],) + (1,) * (len(shape) - 1), dtype)
    return eps * radius * direction
