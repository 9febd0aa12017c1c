"""Per-input attacks: FGSM and PGD, each example perturbed on its own ball.

:func:`fgsm` and :func:`pgd` return ``x_adv`` in ``[0, 1]`` with
``||x_adv - x||_p <= eps`` per example.  Their steps :func:`fgsm_delta` and
:func:`pgd_delta` are also DeepFool-UAP's inner attacks
(:func:`jacuap.attacks.deepfool_uap`), and :func:`pgd` is the adversary of
PGD adversarial training (:mod:`jacuap.train`).
"""

from __future__ import annotations

import functools
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jacuap.attacks.balls import ascent_direction, check_norm, project, random_in_ball
from jacuap.attacks.registry import AttackSpec, register
from jacuap.checks import check_budget, check_key, check_labels, check_model_inputs, check_number, check_positive_int
from jacuap.jacobian import ApplyFn

__all__ = ["fgsm_delta", "pgd_delta", "fgsm", "pgd"]


def _per_example_ce(apply_fn: ApplyFn, params: Any, z: jax.Array, labels: jax.Array) -> jax.Array:
    """``CE(f(clip(z, 0, 1)), labels)`` per example, shape ``(B,)``."""
    logits = apply_fn(params, jnp.clip(z, 0.0, 1.0))
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def fgsm_delta(
    apply_fn: ApplyFn, params: Any, z: jax.Array, labels: jax.Array, eps: jax.Array, norm: str
) -> jax.Array:
    """One-step attack: ``eps * dir(grad_z CE(f(clip(z, 0, 1)), labels))`` per example, ``(B, *S)``.

    ``dir`` is :func:`jacuap.attacks.balls.ascent_direction` per example.
    """
    grad = jax.grad(lambda u: jnp.sum(_per_example_ce(apply_fn, params, u, labels)))(z)
    return eps * ascent_direction(grad, norm, batched=True)


def pgd_delta(
    apply_fn: ApplyFn,
    params: Any,
    z: jax.Array,
    labels: jax.Array,
    eps: jax.Array,
    step_size: jax.Array,
    delta0: jax.Array,
    norm: str,
    num_steps: int,
    box: bool,
) -> jax.Array:
    """Projected gradient ascent on ``CE(f(clip(z + delta, 0, 1)), labels)`` (Madry et al. 2018).

    From ``P_eps(delta0)``, ``delta <- P_eps(delta + step_size * dir(grad))``
    for ``num_steps`` steps, each example on its own ball; with ``box`` also
    ``z + delta`` is kept in ``[0, 1]`` (``delta <- clip(z + delta, 0, 1) - z``).

    Shapes: ``z`` and ``delta0`` ``(B, *S)``, ``labels`` ``(B,)``; returns ``(B, *S)``.
    """
    ce_sum = lambda d: jnp.sum(_per_example_ce(apply_fn, params, z + d, labels))

    def body(_, delta):
        grad = jax.grad(ce_sum)(delta)
        delta = project(delta + step_size * ascent_direction(grad, norm, True), norm, eps, True)
        return jnp.clip(z + delta, 0.0, 1.0) - z if box else delta

    delta = project(delta0, norm, eps, batched=True)
    return jax.lax.fori_loop(0, num_steps, body, delta)


@functools.partial(jax.jit, static_argnames=("apply_fn", "norm"))
def _fgsm(apply_fn, params, x, y, eps, *, norm):
    return jnp.clip(x + fgsm_delta(apply_fn, params, x, y, eps, norm), 0.0, 1.0)


def fgsm(
    apply_fn: ApplyFn,
    params: Any,
    x: jax.Array,
    y: jax.Array,
    *,
    eps: float,
    norm: str = "linf",
    key: Optional[jax.Array] = None,
) -> jax.Array:
    """Fast gradient (sign) method (Goodfellow et al. 2015), per input.

    ``x_adv = clip(x + eps * dir(grad_x CE(f(x), y)), 0, 1)`` with ``dir`` the
    sign (l_inf) or the l2-normalised gradient.  Clipping into the box only
    shrinks ``|x_adv - x|`` when ``x`` is in ``[0, 1]``, so the budget holds.

    Args:
      apply_fn, params: the model, ``(B, *S) -> (B, K)`` logits.
      x: ``(B, *S)`` in ``[0, 1]``; y: ``(B,)`` labels.
      eps, norm: the budget.
      key: unused (FGSM is deterministic), accepted for the signature shared
        through :data:`jacuap.attacks.ATTACKS`.

    Returns:
      ``x_adv`` of shape ``(B, *S)``.

    >>> import jax.numpy as jnp
    >>> apply_fn = lambda w, x: x.reshape(len(x), -1) @ w
    >>> w = jnp.array([[1.0, -1.0], [-1.0, 1.0]])
    >>> print(fgsm(apply_fn, w, jnp.array([[0.5, 0.5]]), jnp.array([0]), eps=0.25))
    [[0.25 0.75]]
    """
    del key
    check_norm(norm)
    check_budget(eps, norm)
    check_labels(y, np.shape(x)[0], check_model_inputs(apply_fn, params, x))
    x = jnp.asarray(x)
    y = jnp.asarray(y, jnp.int32)
    return _fgsm(apply_fn, params, x, y, jnp.asarray(eps, x.dtype), norm=norm)


@functools.partial(jax.jit, static_argnames=("apply_fn", "norm", "num_steps", "random_start"))
def _pgd(apply_fn, params, x, y, eps, step_size, key, *, norm, num_steps, random_start):
    if random_start:
        delta0 = random_in_ball(key, x.shape, norm, eps, x.dtype)
        delta0 = jnp.clip(x + project(delta0, norm, eps, True), 0.0, 1.0) - x
    else:
        delta0 = jnp.zeros_like(x)
    delta = pgd_delta(apply_fn, params, x, y, eps, step_size, delta0, norm, num_steps, box=True)
    return jnp.clip(x + delta, 0.0, 1.0)


def pgd(
    apply_fn: ApplyFn,
    params: Any,
    x: jax.Array,
    y: jax.Array,
    *,
    eps: float,
    norm: str = "linf",
    step_size: Optional[float] = None,
    num_steps: int = 10,
    key: Optional[jax.Array] = None,
    random_start: bool = True,
) -> jax.Array:
    """Projected gradient descent (Madry et al. 2018), per input.

    From a random start in the ball (:func:`jacuap.attacks.balls.random_in_ball`,
    or ``x`` itself without ``random_start``), ``num_steps`` steps
    ``delta <- P_eps(delta + step_size * dir(grad CE))`` followed by
    ``delta <- clip(x + delta, 0, 1) - x``.  Default step
    ``2.5 * eps / num_steps`` (Madry et al.'s rule: the ball's radius is
    crossed 2.5 times).  Traceable: training calls it inside its jitted step.

    Args:
      apply_fn, params: the model, ``(B, *S) -> (B, K)`` logits.
      x: ``(B, *S)`` in ``[0, 1]``; y: ``(B,)`` labels.
      eps, norm: the budget.
      step_size, num_steps: the ascent.
      key: PRNG key of the random start (required when ``random_start``).
      random_start: start from a random point of the ball.

    Returns:
      ``x_adv`` of shape ``(B, *S)`` with ``||x_adv - x||_p <= eps``.

    Raises:
      ValueError: ``key`` is None while ``random_start``.

    >>> import jax.numpy as jnp
    >>> apply_fn = lambda w, x: x.reshape(len(x), -1) @ w
    >>> w = jnp.array([[1.0, -1.0], [-1.0, 1.0]])
    >>> print(pgd(apply_fn, w, jnp.array([[0.5, 0.5]]), jnp.array([0]), eps=0.25, random_start=False))
    [[0.25 0.75]]
    """
    check_norm(norm)
    if random_start:
        check_key(key, why="by pgd's random start (or pass random_start=False)")
    check_budget(eps, norm)
    check_positive_int(num_steps, "num_steps")
    if step_size is not None:
        check_number(step_size, "step_size", minimum=0.0)
    check_labels(y, np.shape(x)[0], check_model_inputs(apply_fn, params, x))
    x = jnp.asarray(x)
    y = jnp.asarray(y, jnp.int32)
    if step_size is None:
        step_size = 2.5 * float(eps) / max(num_steps, 1)
    return _pgd(
        apply_fn, params, x, y,
        jnp.asarray(eps, x.dtype), jnp.asarray(step_size, x.dtype), key,
        norm=norm, num_steps=int(num_steps), random_start=bool(random_start),
    )


register(AttackSpec("pgd", pgd, universal=False, summary="per input: projected gradient ascent on CE (Madry et al. 2018)"))
register(AttackSpec("fgsm", fgsm, universal=False, summary="per input: one signed-gradient step on CE "
                                                           "(Goodfellow et al. 2015)"))
