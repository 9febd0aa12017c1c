"""SGA (Liu et al., ICCV 2023): a universal perturbation by stochastic gradient aggregation.

Liu, Zhong, Zhang, Yu and Deng, "Enhancing Generalization of Universal
Adversarial Perturbation through Gradient Aggregation" (ICCV 2023), as in
the authors' ``attacks_sga.py`` (github.com/liuxuannan/Stochastic-Gradient-Aggregation).
Plain SGD-UAP (:mod:`.sgd_uap`) takes one step per minibatch, so a large
minibatch means few, over-smoothed steps and a small one means noisy steps
that fall into poor local optima.  SGA keeps the large (outer) minibatch for
the update but computes its gradient as the aggregate of many small-batch
gradients, each taken at a point an inner look-ahead iteration has moved to.

:func:`sga_uap` is the attack; :func:`sga_uap_epoch` its compiled epoch (one
``lax.scan`` over the shuffled outer minibatches, each running a nested
``lax.scan`` over its inner minibatches).  The objective is the one SGD-UAP
ascends (:func:`~jacuap.attacks.sgd_uap.uap_objective`).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional, Tuple

import jax
import jax.numpy as jnp

from jacuap.attacks.balls import ascent_direction, check_norm, project
from jacuap.attacks.result import UAPResult
from jacuap.attacks.epochs import run_epochs
from jacuap.attacks.objectives import LABEL_LOSSES, check_loss, uap_objective
from jacuap.attacks.registry import AttackSpec, epochs_progress, register
from jacuap.attacks.sgd_uap import default_sgd_step_size
from jacuap.batching import ceil_div, effective_batch_size, index_batches
from jacuap.checks import (check_budget, check_class, check_key, check_labels, check_model_inputs, check_number,
                           check_perturbation, check_positive_int)
from jacuap.jacobian import ApplyFn

__all__ = ["sga_uap_epoch", "sga_uap"]


def _inner_batches(key: jax.Array, mask: jax.Array, inner_batch: int, passes: int) -> Tuple[jax.Array, jax.Array]:
    """Positions ``(J, m)`` into one outer minibatch and their masks, ``J = passes * ceil(B / m)``.

    Each pass is a fresh random order of the outer minibatch's ``B`` rows
    with the padded rows (``mask = 0``) last, cut into ``ceil(B / m)`` inner
    minibatches of ``m``; a row's inner mask is its outer mask (0 for the
    outer padding and for the inner padding of the last inner minibatch).
    """
    b = mask.shape[0]

    def one_pass(k):
        order = jnp.argsort(jax.random.uniform(k, (b,)) + 2.0 * (1.0 - mask))
        pos, pmask = index_batches(order, inner_batch, mask.dtype)
        return pos, pmask * mask[pos]

    pos, pmask = jax.vmap(one_pass)(jax.random.split(key, passes))
    return pos.reshape(-1, inner_batch), pmask.reshape(-1, inner_batch)


@functools.partial(
    jax.jit,
    static_argnames=("apply_fn", "norm", "batch_size", "inner_batch_size", "inner_passes", "targeted", "loss"),
)
def sga_uap_epoch(
    apply_fn: ApplyFn,
    params: Any,
    v: jax.Array,
    x: jax.Array,
    y: jax.Array,
    key: jax.Array,
    eps: jax.Array,
    step_size: jax.Array,
    inner_step_size: jax.Array,
    beta: jax.Array,
    *,
    norm: str,
    batch_size: int,
    inner_batch_size: int,
    inner_passes: int,
    targeted: bool,
    loss: str = "ce",
) -> Tuple[jax.Array, jax.Array]:
    """One SGA epoch on device: shuffle, ``lax.scan`` over outer minibatches, nested scan over inner ones.

    Per outer minibatch ``X_o`` (``B`` inputs), with ``s = +1`` (ascend the
    clipped CE) or ``s = -1`` (targeted: descend CE towards the target, whose
    labels are already in ``y``)::

        u_0 = v
        for j = 1..J  (J = inner_passes * ceil(B / m) inner minibatches X_j of m inputs of X_o):
            g_j = grad L(u_{j-1}; X_j)                      (L: uap_objective)
            u_j = P_eps(u_{j-1} + s * alpha_in * dir(g_j))
        v <- P_eps(v + s * alpha * dir((1/J) sum_j g_j))

    ``dir`` is :func:`~jacuap.attacks.balls.ascent_direction` (``sign`` for
    l_inf, ``g / ||g||_2`` for l2).  The look-ahead iterate ``u`` is thrown
    away: only the aggregated gradient moves ``v``.  Traced: ``eps``, the two
    step sizes, ``beta`` and ``key`` (one compiled program per model, norm,
    batch sizes and pass count).

    Returns ``(v, losses)`` with ``losses`` the ``(ceil(N / batch_size),)``
    means over each outer minibatch of its ``J`` inner objectives (the values
    whose gradients were aggregated).
    """
    okey, ikey = jax.random.split(key)
    idx, mask = index_batches(jax.random.permutation(okey, x.shape[0]), batch_size, x.dtype)
    inner_keys = jax.random.split(ikey, idx.shape[0])
    sign = -1.0 if targeted else 1.0
    objective = jax.value_and_grad(functools.partial(uap_objective, apply_fn, None, params, loss=loss,
                                                     targeted=targeted))

    def outer_step(v, batch):
        ib, mb, k = batch
        xb, yb = x[ib], y[ib]
        pos, pmask = _inner_batches(k, mb, inner_batch_size, inner_passes)

        def inner_step(carry, inner):
            u, gsum = carry
            p, pm = inner
            value, g = objective(u, xb[p], yb[p], pm, beta)
            u = project(u + sign * inner_step_size * ascent_direction(g, norm), norm, eps)
            return (u, gsum + g), value

        (_, gsum), losses = jax.lax.scan(inner_step, (v, jnp.zeros_like(v)), (pos, pmask))
        g = gsum / pos.shape[0]
        v = project(v + sign * step_size * ascent_direction(g, norm), norm, eps)
        return v, jnp.mean(losses)

    return jax.lax.scan(outer_step, v, (idx, mask, inner_keys))


def sga_uap(
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
    inner_batch_size: int = 10,
    inner_passes: int = 4,
    step_size: Optional[float] = None,
    inner_step_size: Optional[float] = None,
    step_decay: float = 0.7,
    beta: float = 12.0,
    targeted: Optional[int] = None,
    init: Optional[jax.Array] = None,
    progress: Optional[Callable[[int, float], None]] = None,
    loss: str = "ce",
) -> UAPResult:
    """SGA: a universal perturbation by stochastic gradient aggregation (Liu et al., ICCV 2023).

    ``v`` starts at 0 (or ``P_eps(init)``); each epoch visits the set in a
    fresh random order of outer minibatches of ``B = batch_size``.  For each,
    ``J = inner_passes * ceil(B / m)`` inner minibatches of ``m =
    inner_batch_size`` inputs (``inner_passes`` random splits of the outer
    minibatch) drive an inner look-ahead iterate ``u`` from ``v``, and their
    gradients are aggregated into ONE update of ``v``::

        L(u; X) = mean_{b in X} min(CE(f(clip(x_b + u, 0, 1)), y_b), beta)
        g_j = grad L(u_{j-1}; X_j),   u_j = P_eps(u_{j-1} + alpha_e * sign(g_j)),   u_0 = v
        v  <- P_eps(v + alpha_e * sign((1/J) sum_j g_j))                        (l_inf)

    (l2: ``g / ||g||_2`` in place of ``sign(g)``), ``alpha_e = step_size *
    step_decay**e`` in epoch ``e`` (the inner step ``inner_step_size *
    step_decay**e``).  Targeted (``targeted=t``): every label is ``t`` and
    both ``u`` and ``v`` DEscend the clipped CE.

    Defaults and why.  ``inner_batch_size=10`` and ``inner_passes=4`` are the
    authors' (``--minibatch 10``, ``--iter 4``: ``K * B / m`` inner steps per
    outer minibatch).  The authors draw each inner minibatch independently
    (without replacement within it); here each of the ``K`` passes splits the
    outer minibatch into disjoint inner minibatches, so every input
    contributes ``K`` gradients (same expectation, less variance).  The
    authors use ONE constant step ``eps * 0.1`` for inner and outer updates;
    here both default to :func:`~jacuap.attacks.sgd_uap.default_sgd_step_size`
    (``eps / 10`` whenever an epoch has at least 20 outer minibatches, as the
    authors' 10,000 images in batches of 250 do, and larger on small sets so
    that ``v``, which moves once per OUTER minibatch, can still cross the
    ball), decayed by ``step_decay=0.7`` per epoch like :func:`sgd_uap`, so
    the two attacks differ only in the aggregation.  ``beta=12`` as in
    :func:`sgd_uap` (the authors use 9).  The authors craft on the model's
    clean predictions; pass ``y = predict(apply_fn, params, x)`` for that.
    Their optional momentum (off in their scripts) is not implemented.

    Args:
      apply_fn: ``(params, x) -> logits``, ``(B, *S) -> (B, K)``; keep the
        same object across calls to reuse the compiled epoch.
      params: model parameters.
      x: crafting set, ``(N, *S)`` in ``[0, 1]``.
      y: labels ``(N,)`` (ignored when ``targeted``).
      eps: budget radius in pixel units.
      norm: ``"linf"`` or ``"l2"``.
      key: PRNG key for the shuffles (required).
      num_epochs: passes over the set.
      batch_size: outer minibatch size ``B`` (capped at ``N``).
      inner_batch_size: inner minibatch size ``m`` (capped at ``B``).
      inner_passes: ``K``, random splits of each outer minibatch.
      step_size: first-epoch outer step ``alpha_0`` (default above).
      inner_step_size: first-epoch inner step (default: ``step_size``).
      step_decay: multiplicative decay of both steps per epoch.
      beta: loss clipping value.
      targeted: target class, or None for the untargeted attack.
      init: starting perturbation of shape ``S`` (projected onto the ball).
      progress: ``callable(epoch, mean_objective)`` called after each epoch.
      loss: ``"ce"`` (the clipped cross-entropy) or ``"margin"`` (the
        Carlini-Wagner logit margin, :mod:`jacuap.attacks.objectives`).

    Returns:
      ``UAPResult(v, history)``: ``v`` of shape ``S`` with ``||v||_p <= eps``
      and ``history`` the ``num_epochs * ceil(N / batch_size)`` mean inner
      objectives of each outer minibatch.

    Raises:
      ValueError: ``key`` is None, ``y`` is missing for the untargeted attack,
        ``norm`` is unknown, or an input breaks a rule of :mod:`jacuap.checks`.

    A two-pixel linear model; ``v`` ends on the vertex of the l_inf ball that
    lowers every true-class margin:

    >>> import jax, jax.numpy as jnp
    >>> apply_fn = lambda w, x: x.reshape(len(x), -1) @ w
    >>> w = jnp.array([[1.0, -1.0], [-1.0, 1.0]])
    >>> x = jnp.array([[0.2, 0.6], [0.7, 0.1], [0.4, 0.5], [0.9, 0.3]])
    >>> y = jnp.array([1, 0, 1, 0])
    >>> v, history = sga_uap(apply_fn, w, x, y, eps=0.1, key=jax.random.PRNGKey(0), num_epochs=2,
    ...                      batch_size=2, inner_batch_size=1)
    >>> print(v, history.shape)
    [ 0.1 -0.1] (4,)
    """
    check_norm(norm)
    check_key(key, why="by sga_uap (the minibatch shuffles)")
    check_budget(eps, norm)
    num_classes = check_model_inputs(apply_fn, params, x)
    for value, name in ((num_epochs, "num_epochs"), (batch_size, "batch_size"),
                        (inner_batch_size, "inner_batch_size"), (inner_passes, "inner_passes")):
        check_positive_int(value, name)
    for value, name in ((step_size, "step_size"), (inner_step_size, "inner_step_size"),
                        (step_decay, "step_decay"), (beta, "beta")):
        if value is not None:
            check_number(value, name, minimum=0.0)
    check_loss(loss, False, LABEL_LOSSES)
    x = jnp.asarray(x)
    n, spatial = x.shape[0], x.shape[1:]
    if targeted is not None:
        check_class(targeted, num_classes, "targeted")
        labels = jnp.full((n,), int(targeted), jnp.int32)
    elif y is None:
        raise ValueError("sga_uap: labels y are required for the untargeted attack")
    else:
        check_labels(y, n, num_classes)
        labels = jnp.asarray(y, jnp.int32)
    batch = effective_batch_size(batch_size, n)
    inner = effective_batch_size(inner_batch_size, batch)
    if step_size is None:
        step_size = default_sgd_step_size(eps, ceil_div(n, batch))
    if inner_step_size is None:
        inner_step_size = step_size
    if init is not None:
        check_perturbation(init, spatial, "init")
    v = jnp.zeros(spatial, x.dtype) if init is None else jnp.asarray(init, x.dtype)
    v = project(v, norm, eps)
    scalar = lambda value: jnp.asarray(value, x.dtype)

    def epoch(v, epoch_key, decay):
        return sga_uap_epoch(
            apply_fn, params, v, x, labels, epoch_key, scalar(eps), scalar(step_size * decay),
            scalar(inner_step_size * decay), scalar(beta),
            norm=norm, batch_size=batch, inner_batch_size=inner, inner_passes=int(inner_passes),
            targeted=targeted is not None, loss=loss,
        )

    return UAPResult(*run_epochs(epoch, v, key, num_epochs, step_decay, progress))


register(AttackSpec(
    "sga_uap", sga_uap, targeted=True,
    settings={"num_epochs": 5, "batch_size": 128, "inner_batch_size": 10, "inner_passes": 4, "loss": "ce"},
    request_settings={"num_epochs": "sgd_epochs", "loss": "loss"},
    craft=lambda c: sga_uap(c.apply_fn, c.params, c.x, c.y, eps=c.eps, norm=c.norm, key=c.key,
                            progress=epochs_progress(c), **c.settings),
    gradient_evaluations=lambda s, n, k: s["inner_passes"] * s["num_epochs"] * n,
    summary="SGD-UAP's objective, each outer step along the mean of inner look-ahead minibatch gradients "
            "(Liu et al., ICCV 2023)"))
