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

from jacuap.attacks.balls import ascent_direction, check_norm, project, random_in_ball
from jacuap.attacks.epochs import run_epochs
from jacuap.attacks.objectives import LABEL_LOSSES, check_loss, uap_objective
from jacuap.attacks.registry import AttackSpec, epochs_progress, register
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


@functools.partial(
    jax.jit,
    static_argnames=("apply_fn", "features_fn", "norm", "batch_size", "targeted", "loss"),
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
    loss: Optional[str] = None,
) -> Tuple[jax.Array, jax.Array]:
    """One SGD-UAP epoch on device: shuffle, then ``lax.scan`` over minibatches.

    Per minibatch, ``v <- P_eps(v + s * alpha * dir(grad))`` with ``s = +1``
    (ascend :func:`~jacuap.attacks.objectives.uap_objective` with ``loss``:
    the clipped CE by default, the layer norm with ``features_fn``) or
    ``s = -1`` (targeted: descend it towards the target, whose labels are
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
    objective = functools.partial(uap_objective, apply_fn, features_fn, params, loss=loss, targeted=targeted)

    def step(v, batch):
        ib, mc = batch
        xc, yc = x[ib], y[ib]
        value, grad = jax.value_and_grad(objective)(v, xc, yc, mc, beta)
        v = project(v + sign * step_size * ascent_direction(grad, norm), norm, eps)
        return v, value

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
    loss: Optional[str] = None,
) -> UAPResult:
    """SGD-UAP: universal perturbation by minibatch (sign-)gradient ascent.

    Shafahi et al., "Universal adversarial training" (AAAI 2020), as in the
    authors' ``sgd-uap-torch``.  ``v`` starts at 0 (or ``P_eps(init)``; with
    ``loss="cosine"``, stationary at 0, at a random point of the ball drawn
    from ``key``); each
    epoch visits the set in a fresh random order; on each minibatch

        L(v) = mean_b min(CE(f(clip(x_b + v, 0, 1)), y_b), beta)
        v   <- P_eps(v + alpha_e * sign(grad L))           (l_inf)
        v   <- P_eps(v + alpha_e * grad L / ||grad L||_2)  (l2)

    with ``alpha_e = step_size * step_decay**e`` in epoch ``e``.  Targeted
    (``targeted=t``): every label is ``t`` and ``v`` DEscends the clipped CE.
    ``loss="margin"`` replaces the CE by the Carlini-Wagner logit margin
    ``min(max_{j != y} z_j - z_y, beta)`` (targeted: ``v`` descends
    ``max(max_{j != t} z_j - z_t, -beta)``).  Layer maximisation
    (``features_fn``, e.g. from :func:`jacuap.models.layer_features_fn`):
    ``v`` ascends ``mean_b ||a(clip(x_b + v, 0, 1))||^2`` and ``y`` is
    ignored; any other loss of :data:`jacuap.attacks.objectives.LOSSES` may
    be named (``"cosine"``: FG-UAP, ``"log_norms"``: GD-UAP).

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
      loss: a name of :data:`jacuap.attacks.objectives.LOSSES`; default
        ``"ce"``, or ``"norm"`` with ``features_fn``.

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
    loss = loss if loss is not None else ("norm" if features_fn is not None else "ce")
    spec = check_loss(loss, features_fn is not None)
    x = jnp.asarray(x)
    n, spatial = x.shape[0], x.shape[1:]
    if targeted is not None:
        check_class(targeted, num_classes, "targeted")
        if not spec.uses_labels:
            raise ValueError(f"sgd_uap: targeted needs a label loss ({', '.join(LABEL_LOSSES)}), got loss={loss!r}")
        labels = jnp.full((n,), int(targeted), jnp.int32)
    elif not spec.uses_labels:
        labels = jnp.zeros((n,), jnp.int32)
    elif y is None:
        raise ValueError(f"sgd_uap: labels y are required for the untargeted {loss} attack")
    else:
        check_labels(y, n, num_classes)
        labels = jnp.asarray(y, jnp.int32)
    batch = effective_batch_size(batch_size, n)
    if step_size is None:
        step_size = default_sgd_step_size(eps, ceil_div(n, batch))
    if init is not None:
        check_perturbation(init, spatial, "init")
    elif spec.stationary_at_zero:
        # From v = 0 the cosine's gradient is rounding noise: the first step's direction would depend on the
        # backend and the compiler (and there may be no step at all where the noise is exactly 0).  Start at a
        # random point of the ball, drawn from the attack's key, as PGD does.
        check_key(key, why=f"by sgd_uap with loss={loss!r} (its random start)")
        key, start_key = jax.random.split(key)
        init = random_in_ball(start_key, (1,) + tuple(spatial), norm, eps, x.dtype)[0]
    v = jnp.zeros(spatial, x.dtype) if init is None else jnp.asarray(init, x.dtype)
    v = project(v, norm, eps)
    scalar = lambda value: jnp.asarray(value, x.dtype)

    def epoch(v, epoch_key, decay):
        return sgd_uap_epoch(apply_fn, features_fn, params, v, x, labels, epoch_key, scalar(eps),
                             scalar(step_size * decay), scalar(beta),
                             norm=norm, batch_size=batch, targeted=targeted is not None, loss=loss)

    v, history = run_epochs(epoch, v, key, num_epochs, step_decay, progress)
    return UAPResult(v, history)


register(AttackSpec(
    "sgd_uap", sgd_uap, targeted=True,
    settings={"num_epochs": 5, "batch_size": 128, "loss": "ce"}, request_settings={"num_epochs": "sgd_epochs", "loss": "loss"},
    craft=lambda c: sgd_uap(c.apply_fn, c.params, c.x, c.y, eps=c.eps, norm=c.norm, key=c.key,
                            progress=epochs_progress(c), **c.settings),
    gradient_evaluations=lambda s, n, k: s["num_epochs"] * n,
    summary="max_v mean_x min(l(f(x + v), y), beta), l = CE or the CW margin; minibatch sign-gradient ascent "
            "(Shafahi et al., AAAI 2020)"))
