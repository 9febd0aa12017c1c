"""SGD-UAP (Shafahi et al. 2020): a universal perturbation by minibatch (sign-)gradient ascent.

:func:`sgd_uap` is the attack; :func:`sgd_uap_epoch` its compiled epoch (one
``lax.scan`` over shuffled minibatches), :func:`uap_objective` the quantity
each step ascends, :func:`default_sgd_step_size` the first-epoch step.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jacuap.attacks.balls import ascent_direction, check_norm, project
from jacuap.attacks.result import UAPResult
from jacuap.batching import ceil_div, effective_batch_size, index_batches
from jacuap.checks import (check_budget, check_class, check_key, check_labels, check_model_inputs, check_number,
                           check_perturbation, check_positive_int)
from jacuap.jacobian import ApplyFn
from jacuap.models.features import FeaturesFn

__all__ = ["default_sgd_step_size", "uap_objective", "sgd_uap_epoch", "sgd_uap"]


def default_sgd_step_size(eps: float, steps_per_epoch: int) -> float:
    """The default first-epoch step of :func:`sgd_uap`: ``eps * max(1/10, 2/steps_per_epoch)``.

    Normalised steps (``sign(g)`` for l_inf, ``g / ||g||_2`` for l2) move ``v``
    by exactly ``alpha`` each, so the step fixes how far ``v`` can travel.
    ``eps / 10`` when an epoch has at least 20 minibatches: the ball's
    diameter ``2 eps`` is crossed within the first epoch, while no single
    minibatch can swing ``v`` between vertices (the authors' code steps by
    ``0.8 eps``); the ``step_decay`` then refines ``v``.  For ``eps = 10/255``
    this is ``0.004``, the order of the steps of Shafahi et al.  On smaller
    sets the step grows to ``2 eps / steps_per_epoch`` so the first epoch can
    still cross the ball: with a fixed ``eps / 10`` and decay 0.7, a set of
    four minibatches lets ``v`` travel only ``1.3 eps`` in total, and on
    sklearn digits (400 inputs, batch 128, eps 0.3) the UER stalled at 0.44
    against 0.71 with the adaptive step and 0.89 with 1000 inputs.

    >>> default_sgd_step_size(0.5, 40), default_sgd_step_size(0.5, 4)
    (0.05, 0.25)
    """
    return float(eps) * max(0.1, 2.0 / max(int(steps_per_epoch), 1))


def _masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
    """``sum(mask * values) / max(sum(mask), 1)`` over the leading axis."""
    return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def uap_objective(
    apply_fn: ApplyFn,
    features_fn: Optional[FeaturesFn],
    params: Any,
    v: jax.Array,
    xb: jax.Array,
    yb: jax.Array,
    mask: jax.Array,
    beta: jax.Array,
) -> jax.Array:
    """The quantity SGD-UAP moves ``v`` along, on one minibatch (a scalar).

    Without ``features_fn``: ``mean_b min(CE(f(clip(x_b + v, 0, 1)), y_b), beta)``;
    the min gives zero gradient to examples whose loss already exceeds
    ``beta``, so those confidently fooled stop steering ``v``.  With
    ``features_fn`` (layer maximisation, Co et al. 2021): the mean squared
    norm ``mean_b ||a(clip(x_b + v, 0, 1))||^2`` of the layer's activations.
    The authors maximise the batch Frobenius norm ``sqrt(sum_b ||a_b||^2)``,
    whose gradient is a positive multiple of this one, so sign steps coincide.
    The mean runs over the examples with ``mask_b = 1``.

    Shapes: ``v`` is ``S``; ``xb`` ``(B, *S)``; ``yb`` and ``mask`` ``(B,)``.
    """
    z = jnp.clip(xb + v, 0.0, 1.0)
    if features_fn is not None:
        acts = features_fn(params, z)
        per_example = jnp.sum(jnp.square(acts.reshape(acts.shape[0], -1)), axis=1)
    else:
        logits = apply_fn(params, z)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, yb)
        per_example = jnp.minimum(ce, beta)
    return _masked_mean(per_example, mask)


@functools.partial(
    jax.jit,
    static_argnames=("apply_fn", "features_fn", "norm", "batch_size", "targeted"),
)
def sgd_uap_epoch(
    apply_fn: ApplyFn,
    features_fn: Optional[FeaturesFn],
    params: Any,
    v: jax.Array,
    x: jax.Array,
    y: jax.Array,
    key: jax.Array,
    eps: jax.Array,
    step_size: jax.Array,
    beta: jax.Array,
    *,
    norm: str,
    batch_size: int,
    targeted: bool,
) -> Tuple[jax.Array, jax.Array]:
    """One SGD-UAP epoch on device: shuffle, then ``lax.scan`` over minibatches.

    Per minibatch, ``v <- P_eps(v + s * alpha * dir(grad))`` with ``s = +1``
    (ascend the clipped CE or the layer norm, :func:`uap_objective`) or
    ``s = -1`` (targeted: descend CE towards the target, whose labels are
    already in ``y``).  Minibatches are gathered as ``x[idx]`` inside the
    scan (see :func:`jacuap.batching.index_batches`), so peak memory is one
    minibatch whatever ``N``; the last one is zero-padded and masked.

    ``eps``, ``step_size``, ``beta`` and ``key`` are traced: sweeps over
    budgets and epochs reuse one compiled program for a given ``apply_fn``.

    Returns ``(v, losses)`` with ``losses`` the ``(ceil(N / batch_size),)``
    minibatch objectives evaluated before each step.
    """
    idx, mask = index_batches(jax.random.permutation(key, x.shape[0]), batch_size, x.dtype)
    sign = -1.0 if targeted else 1.0
    objective = functools.partial(uap_objective, apply_fn, features_fn, params)

    def step(v, batch):
        ib, mc = batch
        xc, yc = x[ib], y[ib]
        loss, grad = jax.value_and_grad(objective)(v, xc, yc, mc, beta)
        v = project(v + sign * step_size * ascent_direction(grad, norm), norm, eps)
        return v, loss

    return jax.lax.scan(step, v, (idx, mask))


def sgd_uap(
    apply_fn: ApplyFn,
    params: Any,
    x: jax.Array,
    y: Optional[jax.Array] = None,
    *,
    eps: float,
    norm: str = "linf",
    key: Optional[jax.Array] = None,
    num_epochs: int = 5,
    batch_size: int = 128,
    step_size: Optional[float] = None,
    step_decay: float = 0.7,
    beta: float = 12.0,
    targeted: Optional[int] = None,
    init: Optional[jax.Array] = None,
    features_fn: Optional[FeaturesFn] = None,
    progress: Optional[Callable[[int, float], None]] = None,
) -> UAPResult:
    """SGD-UAP: universal perturbation by minibatch (sign-)gradient ascent.

    Shafahi et al., "Universal adversarial training" (AAAI 2020), as in the
    authors' ``sgd-uap-torch``.  ``v`` starts at 0 (or ``P_eps(init)``); each
    epoch visits the set in a fresh random order; on each minibatch

        L(v) = mean_b min(CE(f(clip(x_b + v, 0, 1)), y_b), beta)
        v   <- P_eps(v + alpha_e * sign(grad L))           (l_inf)
        v   <- P_eps(v + alpha_e * grad L / ||grad L||_2)  (l2)

    with ``alpha_e = step_size * step_decay**e`` in epoch ``e``.  Targeted
    (``targeted=t``): every label is ``t`` and ``v`` DEscends the clipped CE.
    Layer maximisation (``features_fn``, e.g. from
    :func:`jacuap.models.layer_features_fn`): ``v`` ascends
    ``mean_b ||a(clip(x_b + v, 0, 1))||^2`` and ``y`` is ignored.

    The last minibatch is zero-padded and masked, so every input is used.

    Args:
      apply_fn: ``(params, x) -> logits``, ``(B, *S) -> (B, K)``.  Keep the
        same object across calls to reuse the compiled epoch.
      params: model parameters.
      x: crafting set, ``(N, *S)`` in ``[0, 1]``.
      y: labels ``(N,)`` (ignored when ``targeted`` or ``features_fn``).
      eps: budget radius in pixel units.
      norm: ``"linf"`` or ``"l2"``.
      key: PRNG key for the shuffles (required).
      num_epochs: passes over the set.
      batch_size: minibatch size (capped at ``N``).
      step_size: first-epoch step ``alpha_0``; default
        :func:`default_sgd_step_size` (``eps / 10``, more on small sets).
      step_decay: multiplicative step decay per epoch.
      beta: loss clipping value.
      targeted: target class, or None for the untargeted attack.
      init: starting perturbation of shape ``S`` (projected onto the ball).
      features_fn: ``(params, x) -> activations (B, ...)`` for the layer
        maximisation variant.
      progress: ``callable(epoch, mean_objective)`` called after each epoch
        (it waits for the epoch to finish; None: no waiting).

    Returns:
      ``UAPResult(v, history)``: ``v`` of shape ``S`` with ``||v||_p <= eps``
      and ``history`` the ``num_epochs * ceil(N / batch_size)`` minibatch
      objectives (the value ``v`` was moved along, before each step).

    Raises:
      ValueError: ``key`` is None, ``y`` is missing for the untargeted CE
        attack, ``norm`` is unknown, or an input breaks a rule of
        :mod:`jacuap.checks` (TypeError for a wrong dtype).

    A two-pixel linear model; ``v`` ends on a vertex of the l_inf ball:

    >>> import jax, jax.numpy as jnp
    >>> apply_fn = lambda w, x: x.reshape(len(x), -1) @ w
    >>> w = jnp.array([[1.0, -1.0], [-1.0, 1.0]])
    >>> x = jnp.array([[0.2, 0.6], [0.7, 0.1], [0.4, 0.5], [0.9, 0.3]])
    >>> y = jnp.array([1, 0, 1, 0])
    >>> v, history = sgd_uap(apply_fn, w, x, y, eps=0.1, key=jax.random.PRNGKey(0), num_epochs=2, batch_size=2)
    >>> print(v, history.shape)
    [ 0.1 -0.1] (4,)
    """
    check_norm(norm)
    check_key(key, why="by sgd_uap (the minibatch shuffles)")
    check_budget(eps, norm)
    num_classes = check_model_inputs(apply_fn, params, x)
    for value, name in ((num_epochs, "num_epochs"), (batch_size, "batch_size")):
        check_positive_int(value, name)
    for value, name in ((step_size, "step_size"), (step_decay, "step_decay"), (beta, "beta")):
        if value is not None:
            check_number(value, name, minimum=0.0)
    x = jnp.asarray(x)
    n, spatial = x.shape[0], x.shape[1:]
    if targeted is not None:
        check_class(targeted, num_classes, "targeted")
        labels = jnp.full((n,), int(targeted), jnp.int32)
    elif features_fn is not None:
        labels = jnp.zeros((n,), jnp.int32)
    elif y is None:
        raise ValueError("sgd_uap: labels y are required for the untargeted CE attack")
    else:
        check_labels(y, n, num_classes)
        labels = jnp.asarray(y, jnp.int32)
    batch = effective_batch_size(batch_size, n)
    if step_size is None:
        step_size = default_sgd_step_size(eps, ceil_div(n, batch))
    if init is not None:
        check_perturbation(init, spatial, "init")
    v = jnp.zeros(spatial, x.dtype) if init is None else jnp.asarray(init, x.dtype)
    v = project(v, norm, eps)
    scalar = lambda value: jnp.asarray(value, x.dtype)
    losses = []
    for epoch, epoch_key in enumerate(jax.random.split(key, num_epochs)):
        v, epoch_losses = sgd_uap_epoch(
            apply_fn,
            features_fn,
            params,
            v,
            x,
            labels,
            epoch_key,
            scalar(eps),
            scalar(step_size * step_decay**epoch),
            scalar(beta),
            norm=norm,
            batch_size=batch,
            targeted=targeted is not None,
        )
        losses.append(epoch_losses)
        if progress is not None:
            progress(epoch, float(jnp.mean(epoch_losses)))
    history = np.concatenate([np.asarray(l) for l in losses]) if losses else np.zeros((0,))
    return UAPResult(v, history)
