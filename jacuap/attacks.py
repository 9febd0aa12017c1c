"""Adversarial attacks: three universal perturbations and two per-input ones.

Conventions (SPEC §3).  ``apply_fn(params, x) -> logits`` maps a batch
``x`` of shape ``(B, *S)`` (pixels in ``[0, 1]``) to ``(B, K)`` logits, each
example independently.  A universal adversarial perturbation (UAP) ``v`` has
the shape ``S`` of ONE input and is added to every input; the model always
sees ``clip(x + v, 0, 1)``.  The budget is ``||v||_p <= eps`` with
``p in {inf, 2}``, in pixel units.

Universal attacks, all crafted on a set ``(x, y)`` and returning ``v``:

* :func:`sgd_uap`: stochastic (sign-)gradient ascent on the clipped
  cross-entropy (Shafahi et al. 2020), with targeted and layer-maximisation
  variants.
* :func:`singular_vector_uap`: the top right singular vector of the stacked
  Jacobian ``J_X`` (Khrulkov & Oseledets 2018), scaled to the budget.
* :func:`deepfool_uap`: the iterative universal-perturbation algorithm of
  Moosavi-Dezfooli et al. (2017), batched (see its docstring).

Per-input attacks, returning ``x_adv`` in ``[0, 1]`` with
``||x_adv - x||_p <= eps``: :func:`fgsm` and :func:`pgd`.

Every loop is compiled once: the inner steps are jitted with the model
function, the norm and the loop lengths static, and ``eps``, step sizes and
keys traced, so that sweeps over epochs, passes and budgets reuse one
compiled program (as long as the caller passes the same ``apply_fn`` object).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Dict, Optional, Tuple

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jacuap import jacobian, metrics

ApplyFn = Callable[[Any, jax.Array], jax.Array]
FeaturesFn = Callable[[Any, jax.Array], jax.Array]
ProgressFn = Callable[[int, float], None]

NORMS = ("linf", "l2")
INNER_ATTACKS = ("deepfool", "fgsm", "pgd")
AGGREGATES = ("sequential", "mean")

# Division guard for gradient / weight normalisations (float32-safe).
_TINY = 1e-12

__all__ = [
    "project",
    "sgd_uap",
    "layer_features_fn",
    "singular_vector_uap",
    "deepfool_uap",
    "fgsm",
    "pgd",
    "default_sgd_step_size",
    "ATTACKS",
    "UNIVERSAL_ATTACKS",
]


# --------------------------------------------------------------------------
# Budgets: projection and steepest-ascent directions.
# --------------------------------------------------------------------------


def _check_norm(norm: str) -> None:
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; use one of {NORMS}")


def _per_example_l2(a: jax.Array, batched: bool) -> jax.Array:
    """``||a||_2`` (a scalar), or one norm per leading index broadcastable to ``a``."""
    if not batched:
        return jnp.sqrt(jnp.sum(jnp.square(a)))
    sq = jnp.sum(jnp.square(a.reshape(a.shape[0], -1)), axis=1)
    return jnp.sqrt(sq).reshape((-1,) + (1,) * (a.ndim - 1))


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
    """
    _check_norm(norm)
    eps = jnp.asarray(eps, v.dtype)
    if norm == "linf":
        return jnp.clip(v, -eps, eps)
    length = _per_example_l2(v, batched)
    return v * jnp.minimum(1.0, eps / jnp.maximum(length, _TINY))


def _ascent_direction(g: jax.Array, norm: str, batched: bool = False) -> jax.Array:
    """The unit-norm steepest-ascent direction of a gradient ``g``.

    ``linf``: ``sign(g)`` (maximises ``<g, u>`` over ``||u||_inf <= 1``);
    ``l2``: ``g / ||g||_2``.  A zero gradient gives a zero step.
    """
    if norm == "linf":
        return jnp.sign(g)
    return g / jnp.maximum(_per_example_l2(g, batched), _TINY)


def _scale_to_budget(u: jax.Array, norm: str, eps: Any) -> jax.Array:
    """A direction ``u`` (shape ``S``) put on the surface of the ball.

    ``linf``: ``eps * sign(u)`` (the vertex maximising ``<u, v>``);
    ``l2``: ``eps * u / ||u||_2``.
    """
    return jnp.asarray(eps, u.dtype) * _ascent_direction(u, norm)


def _masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
    """``sum(mask * values) / max(sum(mask), 1)`` over the leading axis."""
    return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def _index_batches(order: jax.Array, batch_size: int, dtype) -> Tuple[jax.Array, jax.Array]:
    """``order`` (``(N,)`` indices) cut into zero-padded ``(C, B)`` batches and a ``(C, B)`` mask.

    The attacks gather each minibatch ``x[idx]`` inside their ``lax.scan``
    rather than permuting or padding a copy of the whole set, so their peak
    memory is one minibatch (plus ``N`` indices), whatever ``N``.  Padding
    indices point at example 0 and carry mask 0.
    """
    n = order.shape[0]
    num = -(-n // batch_size)
    idx = jnp.pad(order.astype(jnp.int32), (0, num * batch_size - n))
    mask = (jnp.arange(num * batch_size) < n).astype(dtype)
    return idx.reshape(num, batch_size), mask.reshape(num, batch_size)


def _shuffled_batches(key: jax.Array, n: int, batch_size: int, dtype) -> Tuple[jax.Array, jax.Array]:
    """The set's indices in a random order as ``(C, B)`` batches and a mask.

    ``C = ceil(N / B)``: every input is used once per pass and padding
    contributes nothing (see :func:`_index_batches`).
    """
    return _index_batches(jax.random.permutation(key, n), batch_size, dtype)


def _per_example_ce(apply_fn: ApplyFn, params: Any, z: jax.Array, labels: jax.Array) -> jax.Array:
    """``CE(f(clip(z, 0, 1)), labels)`` per example, shape ``(B,)``."""
    logits = apply_fn(params, jnp.clip(z, 0.0, 1.0))
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


# --------------------------------------------------------------------------
# SGD-UAP (Shafahi et al. 2020).
# --------------------------------------------------------------------------


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
    """
    return float(eps) * max(0.1, 2.0 / max(int(steps_per_epoch), 1))


def _uap_objective(
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

    Without ``features_fn``: ``mean_b min(CE(f(clip(x_b + v)), y_b), beta)``;
    the min gives zero gradient to examples whose loss already exceeds
    ``beta``, so those confidently fooled stop steering ``v``.  With
    ``features_fn`` (layer maximisation, Co et al. 2021): the mean squared
    norm ``mean_b ||a(clip(x_b + v))||^2`` of the layer's activations.  The
    authors maximise the batch Frobenius norm ``sqrt(sum_b ||a_b||^2)``, whose
    gradient is a positive multiple of this one, so sign steps coincide.
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
def _sgd_uap_epoch(
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
    (ascend the clipped CE or the layer norm) or ``s = -1`` (targeted: descend
    CE towards the target, whose labels are already in ``y``).

    Returns ``(v, losses)`` with ``losses`` the ``(C,)`` minibatch objectives
    evaluated before each step.
    """
    idx, mask = _shuffled_batches(key, x.shape[0], batch_size, x.dtype)
    sign = -1.0 if targeted else 1.0
    objective = functools.partial(_uap_objective, apply_fn, features_fn, params)

    def step(v, batch):
        ib, mc = batch
        xc, yc = x[ib], y[ib]
        loss, grad = jax.value_and_grad(objective)(v, xc, yc, mc, beta)
        v = project(v + sign * step_size * _ascent_direction(grad, norm), norm, eps)
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
) -> Tuple[jax.Array, np.ndarray]:
    """SGD-UAP: universal perturbation by minibatch (sign-)gradient ascent.

    Shafahi et al., "Universal adversarial training" (AAAI 2020), as in the
    authors' ``sgd-uap-torch``.  ``v`` starts at 0 (or ``P_eps(init)``); each
    epoch visits the set in a fresh random order; on each minibatch

        L(v) = mean_b min(CE(f(clip(x_b + v, 0, 1)), y_b), beta)
        v   <- P_eps(v + alpha_e * sign(grad L))           (l_inf)
        v   <- P_eps(v + alpha_e * grad L / ||grad L||_2)  (l2)

    with ``alpha_e = step_size * step_decay**e`` in epoch ``e``.  Targeted
    (``targeted=t``): every label is ``t`` and ``v`` DEscends the clipped CE.
    Layer maximisation (``features_fn``, e.g. from :func:`layer_features_fn`):
    ``v`` ascends ``mean_b ||a(clip(x_b + v))||^2`` and ``y`` is ignored.

    The last minibatch is zero-padded and masked, so every input is used.

    Args:
      apply_fn: ``(params, x) -> logits``, ``(B, *S) -> (B, K)``.  Keep the
        same object across calls to reuse the compiled epoch.
      params: model parameters.
      x: crafting set, ``(N, *S)`` in ``[0, 1]``.
      y: labels ``(N,)`` (ignored when ``targeted`` or ``features_fn``).
      eps: budget radius in pixel units.
      norm: ``"linf"`` or ``"l2"``.
      key: PRNG key for the shuffles (default ``PRNGKey(0)``).
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

    Returns:
      ``(v, loss_history)``: ``v`` of shape ``S`` with ``||v||_p <= eps`` and a
      NumPy array of the ``num_epochs * ceil(N / batch_size)`` minibatch
      objectives (the value ``v`` was moved along, before each step).
    """
    _check_norm(norm)
    x = jnp.asarray(x)
    n, spatial = x.shape[0], x.shape[1:]
    if targeted is not None:
        labels = jnp.full((n,), int(targeted), jnp.int32)
    elif features_fn is not None:
        labels = jnp.zeros((n,), jnp.int32)
    elif y is None:
        raise ValueError("sgd_uap: labels y are required for the untargeted CE attack")
    else:
        labels = jnp.asarray(y, jnp.int32)
    chex.assert_shape(labels, (n,))
    if key is None:
        key = jax.random.PRNGKey(0)
    batch = max(1, min(int(batch_size), n))
    if step_size is None:
        step_size = default_sgd_step_size(eps, -(-n // batch))
    v = jnp.zeros(spatial, x.dtype) if init is None else jnp.asarray(init, x.dtype)
    chex.assert_shape(v, spatial)
    v = project(v, norm, eps)
    scalar = lambda value: jnp.asarray(value, x.dtype)
    losses = []
    for epoch, epoch_key in enumerate(jax.random.split(key, num_epochs)):
        v, epoch_losses = _sgd_uap_epoch(
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
    history = np.concatenate([np.asarray(l) for l in losses]) if losses else np.zeros((0,))
    return v, history


def layer_features_fn(model: nn.Module, layer_name: str) -> FeaturesFn:
    """``features_fn(params, x)``: the output of one named submodule of ``model``.

    Read through Flax's ``capture_intermediates`` with a filter that keeps
    only that submodule's ``__call__`` output, so nothing else is stored.

    Args:
      model: the Flax ``Module`` behind ``apply_fn``.
      layer_name: the submodule's path, ``/``-separated for nested modules,
        e.g. ``"dense0"``, ``"conv1"`` or ``"ResidualBlock_0/Conv_0"`` (the
        keys of ``model.apply(..., capture_intermediates=True,
        mutable=["intermediates"])[1]["intermediates"]``).

    Returns:
      ``(params, x) -> activations`` of shape ``(B, ...)`` (the first call of
      the layer if it is called more than once).  Build it ONCE and reuse the
      object: it is a static argument of the compiled attack steps.
    """
    path = tuple(p for p in layer_name.split("/") if p)

    def keep(module: nn.Module, method_name: str) -> bool:
        return method_name == "__call__" and tuple(module.path) == path

    def features_fn(params: Any, x: jax.Array) -> jax.Array:
        _, state = model.apply(
            {"params": params}, x, capture_intermediates=keep, mutable=["intermediates"]
        )
        node = state["intermediates"]
        for name in path:
            if name not in node:
                raise KeyError(
                    f"layer_features_fn: no layer {layer_name!r} in the model "
                    f"(at {name!r}; found {sorted(node)})"
                )
            node = node[name]
        return node["__call__"][0]

    return features_fn


# --------------------------------------------------------------------------
# Singular-vector UAP (Khrulkov & Oseledets 2018).
# --------------------------------------------------------------------------

# Called eagerly: the kernel then runs its set loop from Python over one
# compiled chunk step, 2-4x faster on CPU than a ``lax.scan`` under ``jit``
# (see jacuap.jacobian._gram_chunk_step).
_stacked_spectral_norm = jacobian.stacked_spectral_norm


def singular_vector_uap(
    apply_fn: ApplyFn,
    params: Any,
    x: jax.Array,
    y: jax.Array,
    *,
    eps: float,
    norm: str = "linf",
    key: Optional[jax.Array] = None,
    num_iters: int = 50,
    batch_size: int = 256,
    method: str = "auto",
    direction: Optional[jax.Array] = None,
) -> jax.Array:
    """The best first-order UAP: the top right singular vector of ``J_X``.

    ``u = argmax_{||u||_2 = 1} ||J_X u||^2 = sum_i ||J(x_i) u||^2`` (SPEC §2),
    from :func:`jacuap.jacobian.stacked_spectral_norm`, put on the budget:
    ``v = eps * u / ||u||_2`` (l2) or ``v = eps * sign(u)`` (l_inf, the vertex
    best aligned with ``u``).  The first-order objective cannot tell ``v``
    from ``-v``; the sign with the larger evasion rate on ``(x, y)`` is kept
    (ties go to ``+``).

    Args:
      apply_fn, params: the model.
      x: crafting set ``(N, *S)``; y: its labels ``(N,)``.
      eps: budget radius; norm: ``"linf"`` or ``"l2"``.
      key: PRNG key of the power iteration's start.
      num_iters, batch_size, method: passed to ``stacked_spectral_norm``
        (``"auto"``: exact ``d x d`` Gram matrix when ``d <= 4096``).
      direction: the singular vector ``u`` (shape ``S``) when already known,
        e.g. from an earlier call on the same set for another ``eps``; it
        depends on the model and the set only, never on the budget.

    Returns:
      ``v`` of shape ``S`` on the surface of the ``eps``-ball.
    """
    _check_norm(norm)
    x = jnp.asarray(x)
    u = direction
    if u is None:
        _, u = _stacked_spectral_norm(
            apply_fn, params, x, key,
            num_iters=num_iters, batch_size=max(1, min(int(batch_size), x.shape[0])), method=method,
        )
    chex.assert_shape(u, x.shape[1:])
    v = _scale_to_budget(u, norm, eps).astype(x.dtype)
    plus = metrics.universal_evasion_rate(apply_fn, params, x, y, v, batch_size=batch_size)
    minus = metrics.universal_evasion_rate(apply_fn, params, x, y, -v, batch_size=batch_size)
    return v if plus >= minus else -v


# --------------------------------------------------------------------------
# Per-input steps used both by fgsm / pgd and inside deepfool_uap.
# --------------------------------------------------------------------------


def _fgsm_delta(
    apply_fn: ApplyFn, params: Any, z: jax.Array, labels: jax.Array, eps: jax.Array, norm: str
) -> jax.Array:
    """One-step attack: ``eps * dir(grad_z CE(f(clip(z)), labels))`` per example, ``(B, *S)``."""
    grad = jax.grad(lambda u: jnp.sum(_per_example_ce(apply_fn, params, u, labels)))(z)
    return eps * _ascent_direction(grad, norm, batched=True)


def _pgd_delta(
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
    """Projected gradient ascent on ``CE(f(clip(z + delta)), labels)`` (Madry et al. 2018).

    ``delta <- P_eps(delta + step_size * dir(grad))`` for ``num_steps`` steps,
    each example on its own ball; with ``box`` also ``z + delta`` is kept in
    ``[0, 1]`` (``delta <- clip(z + delta, 0, 1) - z``).
    """
    ce_sum = lambda d: jnp.sum(_per_example_ce(apply_fn, params, z + d, labels))

    def body(_, delta):
        grad = jax.grad(ce_sum)(delta)
        delta = project(delta + step_size * _ascent_direction(grad, norm, True), norm, eps, True)
        return jnp.clip(z + delta, 0.0, 1.0) - z if box else delta

    delta = project(delta0, norm, eps, batched=True)
    return jax.lax.fori_loop(0, num_steps, body, delta)


def _random_in_ball(key: jax.Array, shape: Tuple[int, ...], norm: str, eps: jax.Array, dtype) -> jax.Array:
    """Random starts: uniform in the l_inf box, or uniform direction and radius for l2."""
    if norm == "linf":
        return jax.random.uniform(key, shape, dtype, -1.0, 1.0) * eps
    dkey, rkey = jax.random.split(key)
    direction = _ascent_direction(jax.random.normal(dkey, shape, dtype), "l2", batched=True)
    radius = jax.random.uniform(rkey, (shape[0],) + (1,) * (len(shape) - 1), dtype)
    return eps * radius * direction


def _deepfool_delta(
    apply_fn: ApplyFn,
    params: Any,
    z: jax.Array,
    labels: jax.Array,
    active: jax.Array,
    overshoot: jax.Array,
    *,
    norm: str,
    max_iter: int,
    num_candidates: Optional[int],
) -> jax.Array:
    """Batched DeepFool (Moosavi-Dezfooli et al. 2016): minimal steps out of class ``labels``.

    For the model ``g(u) = f(clip(u, 0, 1))`` and each active example, iterate
    at ``u = z + (1 + overshoot) r`` while ``argmax g(u) == label``: with
    ``w_k = grad g_k - grad g_label`` (rows of the exact input Jacobian
    :func:`jacuap.jacobian.input_jacobian`) and ``f_k = g_k - g_label``, step
    to the nearest linearised boundary

        l = argmin_{k != label} |f_k| / ||w_k||_q,
        r += (|f_l| + 1e-4) / ||w_l||_q^q * |w_l|^{q-1} sign(w_l),

    with ``q`` the dual norm (``q = 1`` for l_inf: step ``~ sign(w_l)``;
    ``q = 2`` for l2: step ``~ w_l``).  Examples stop once fooled; the loop
    stops when all are, or after ``max_iter`` iterations.  Pixels pinned by
    the clip have zero gradient, so no step is wasted on them.

    Args:
      z: base points ``(B, *S)`` (need not lie in the box).
      labels: the classes to leave, ``(B,)``.
      active: ``(B,)`` bool, examples to attack (others get a zero step).
      overshoot: the ``(1 + overshoot)`` factor that lands past the boundary.
      num_candidates: restrict ``l`` to the top classes of ``g(z)`` (None: all).

    Returns:
      ``(1 + overshoot) * r``, shape ``(B, *S)``.
    """
    clipped_fn = lambda p, u: apply_fn(p, jnp.clip(u, 0.0, 1.0))
    batch, spatial = z.shape[0], z.shape[1:]
    rows = jnp.arange(batch)
    logits0 = clipped_fn(params, z)
    num_classes = logits0.shape[-1]
    if num_candidates is None or num_candidates >= num_classes:
        candidate = jnp.ones(logits0.shape, bool)
    else:
        top = jax.lax.top_k(logits0, num_candidates)[1]
        candidate = jnp.zeros(logits0.shape, bool).at[rows[:, None], top].set(True)
    candidate = candidate & (jnp.arange(num_classes)[None, :] != labels[:, None])

    def still_correct(r):
        u = z + (1.0 + overshoot) * r
        return jnp.argmax(clipped_fn(params, u), axis=-1) == labels

    def cond(state):
        it, _, on = state
        return (it < max_iter) & jnp.any(on)

    def body(state):
        it, r, on = state
        u = z + (1.0 + overshoot) * r
        logits, jac = jacobian.logits_and_input_jacobian(clipped_fn, params, u)
        jac = jac.reshape(batch, num_classes, -1)
        w = jac - jac[rows, labels][:, None, :]
        f = logits - logits[rows, labels][:, None]
        if norm == "linf":
            w_norm = jnp.sum(jnp.abs(w), axis=-1)  # dual of l_inf is l1
        else:
            w_norm = jnp.sqrt(jnp.sum(jnp.square(w), axis=-1))
        dist = jnp.where(candidate, jnp.abs(f) / jnp.maximum(w_norm, _TINY), jnp.inf)
        nearest = jnp.argmin(dist, axis=-1)
        w_l, f_l, n_l = w[rows, nearest], jnp.abs(f[rows, nearest]), w_norm[rows, nearest]
        if norm == "linf":
            step = ((f_l + 1e-4) / jnp.maximum(n_l, _TINY))[:, None] * jnp.sign(w_l)
        else:
            step = ((f_l + 1e-4) / jnp.maximum(jnp.square(n_l), _TINY))[:, None] * w_l
        r = r + jnp.where(on[:, None], step, 0.0).reshape(z.shape)
        return it + 1, r, on & still_correct(r)

    state = (jnp.zeros((), jnp.int32), jnp.zeros_like(z), active & still_correct(jnp.zeros_like(z)))
    _, r, _ = jax.lax.while_loop(cond, body, state)
    chex.assert_shape(r, (batch,) + spatial)
    return (1.0 + overshoot) * r


# --------------------------------------------------------------------------
# DeepFool UAP (Moosavi-Dezfooli et al. 2017).
# --------------------------------------------------------------------------


@functools.partial(
    jax.jit,
    static_argnames=(
        "apply_fn",
        "norm",
        "inner",
        "aggregate",
        "batch_size",
        "deepfool_max_iter",
        "inner_steps",
        "num_classes",
    ),
)
def _deepfool_uap_pass(
    apply_fn: ApplyFn,
    params: Any,
    v: jax.Array,
    x: jax.Array,
    clean: jax.Array,
    key: jax.Array,
    eps: jax.Array,
    overshoot: jax.Array,
    inner_eps: jax.Array,
    *,
    norm: str,
    inner: str,
    aggregate: str,
    batch_size: int,
    deepfool_max_iter: int,
    inner_steps: int,
    num_classes: Optional[int],
) -> Tuple[jax.Array, jax.Array]:
    """One pass of the universal algorithm over a shuffled set, on device.

    Per minibatch: the examples still predicted as their clean class under
    the current ``v`` get a per-example step ``dv_i`` from the inner attack at
    ``x_i + v``; ``v`` then absorbs them (see :func:`deepfool_uap`).  Returns
    ``(v, fooling_rate)`` with the fooling rate of the final ``v`` on the
    whole set.
    """
    idx, mask = _shuffled_batches(key, x.shape[0], batch_size, x.dtype)

    def inner_step(z, labels, unfooled):
        if inner == "deepfool":
            return _deepfool_delta(
                apply_fn, params, z, labels, unfooled, overshoot,
                norm=norm, max_iter=deepfool_max_iter, num_candidates=num_classes,
            )
        if inner == "fgsm":
            return _fgsm_delta(apply_fn, params, z, labels, inner_eps, norm)
        step = 2.5 * inner_eps / inner_steps
        return _pgd_delta(
            apply_fn, params, z, labels, inner_eps, step, jnp.zeros_like(z),
            norm, inner_steps, box=False,
        )

    def absorb(v, dv, unfooled):
        if aggregate == "mean":
            weights = unfooled.astype(dv.dtype).reshape((-1,) + (1,) * (dv.ndim - 1))
            mean_dv = jnp.sum(weights * dv, axis=0) / jnp.maximum(jnp.sum(weights), 1.0)
            return project(v + mean_dv, norm, eps)

        def one(v, item):
            dv_i, take = item
            return jnp.where(take, project(v + dv_i, norm, eps), v), None

        return jax.lax.scan(one, v, (dv, unfooled))[0]

    def batch_step(v, batch):
        ib, mc = batch
        xc, cc = x[ib], clean[ib]
        z = xc + v
        pred = jnp.argmax(apply_fn(params, jnp.clip(z, 0.0, 1.0)), axis=-1)
        unfooled = (pred == cc) & (mc > 0)
        dv = inner_step(z, cc, unfooled)
        return absorb(v, dv, unfooled), None

    v, _ = jax.lax.scan(batch_step, v, (idx, mask))

    def count_fooled(total, batch):
        ib, mc = batch
        xc, cc = x[ib], clean[ib]
        pred = jnp.argmax(apply_fn(params, jnp.clip(xc + v, 0.0, 1.0)), axis=-1)
        return total + jnp.sum((pred != cc) * mc), None

    in_order = _index_batches(jnp.arange(x.shape[0]), batch_size, x.dtype)
    fooled, _ = jax.lax.scan(count_fooled, jnp.zeros((), x.dtype), in_order)
    return v, fooled / x.shape[0]


def deepfool_uap(
    apply_fn: ApplyFn,
    params: Any,
    x: jax.Array,
    y: Optional[jax.Array] = None,
    *,
    eps: float,
    norm: str = "linf",
    max_passes: int = 5,
    target_fooling_rate: float = 0.8,
    inner: str = "deepfool",
    overshoot: float = 0.02,
    deepfool_max_iter: int = 20,
    inner_eps: Optional[float] = None,
    inner_steps: int = 10,
    aggregate: str = "mean",
    batch_size: int = 128,
    key: Optional[jax.Array] = None,
    num_classes: Optional[int] = None,
    progress: Optional[ProgressFn] = None,
) -> Tuple[jax.Array, np.ndarray]:
    """Universal perturbation by the iterative algorithm of Moosavi-Dezfooli et al. (2017).

    The original: ``v = 0``; pass over the data in random order; for each
    ``x_i`` still classified as its clean class ``k(x_i)`` under ``v``, find
    the minimal extra ``dv_i`` that sends ``x_i + v + dv_i`` across the
    decision boundary (DeepFool) and set ``v <- P_eps(v + dv_i)``; stop when
    the fooling rate (share with ``k(x + v) != k(x)``) reaches
    ``target_fooling_rate`` (their ``1 - delta``) or after ``max_passes``.

    Batched variant (this implementation).  Within a minibatch, the unfooled
    examples' ``dv_i`` are all computed at the SAME ``v`` (the one at the
    start of the batch) by one batched inner attack, using the exact batched
    Jacobian; ``v`` then absorbs them:

    * ``aggregate="mean"`` (default): one step ``v <- P_eps(v + mean_i dv_i)``
      over the batch's unfooled examples: a minibatch estimate of the
      direction the per-example steps share, the way SGD-UAP averages
      gradients.
    * ``aggregate="sequential"``: ``v <- P_eps(v + dv_i)`` for each unfooled
      ``i`` in turn (a ``lax.scan``), i.e. the original update rule with
      ``dv_i`` up to one minibatch stale.

    Both recover the original algorithm at ``batch_size=1``; larger batches
    need one batched Jacobian per DeepFool iteration instead of ``B``.
    Measured on sklearn digits (MLP, 400 inputs, 5 passes), the staleness
    makes "sequential" oscillate: each of ``B`` full-size minimal steps,
    computed at the same ``v``, overwrites much of the previous ones (at
    ``eps = 0.15``, the fooling rate jumps between 0.06 and 0.17 from pass to
    pass for batch sizes 8-128), while "mean" rises and settles (0.27-0.31
    after 5 passes with batch 32-128; at ``eps = 0.3``, 0.56-0.59 against
    0.40-0.64 oscillating).

    Inner attacks (as ART's ``UniversalPerturbation(attacker=...)``):
    ``"deepfool"`` (minimal perturbation, ``overshoot``, ``deepfool_max_iter``,
    ``num_classes`` candidate classes), ``"fgsm"`` and ``"pgd"`` (untargeted
    away from the clean class, budget ``inner_eps``, default ``eps``; PGD with
    ``inner_steps`` steps of ``2.5 * inner_eps / inner_steps``).  Every
    unfooled example's step is absorbed, whether or not it fooled on its own.

    Args:
      apply_fn, params: the model; x: crafting set ``(N, *S)``.
      y: ignored (fooling is measured against the clean prediction); kept
        for a signature shared with the other attacks.
      eps, norm: the budget.
      max_passes: maximum passes over the data.
      target_fooling_rate: stop once the fooling rate on ``x`` reaches it.
      inner: ``"deepfool"``, ``"fgsm"`` or ``"pgd"``.
      overshoot, deepfool_max_iter, num_classes: DeepFool settings.
      inner_eps, inner_steps: FGSM / PGD settings.
      aggregate: ``"mean"`` or ``"sequential"`` (above).
      batch_size: minibatch size (capped at ``N``).
      key: PRNG key for the pass orders (default ``PRNGKey(0)``).
      progress: ``callable(pass_index, fooling_rate)`` called after each pass.

    Returns:
      ``(v, fooling_history)``: ``v`` of shape ``S`` in the ball and the
      fooling rate on ``x`` after each pass (NumPy, length <= ``max_passes``).
    """
    _check_norm(norm)
    if inner not in INNER_ATTACKS:
        raise ValueError(f"deepfool_uap: unknown inner attack {inner!r}; use one of {INNER_ATTACKS}")
    if aggregate not in AGGREGATES:
        raise ValueError(f"deepfool_uap: unknown aggregate {aggregate!r}; use one of {AGGREGATES}")
    x = jnp.asarray(x)
    n = x.shape[0]
    if key is None:
        key = jax.random.PRNGKey(0)
    batch = max(1, min(int(batch_size), n))
    clean = jnp.asarray(metrics.predict(apply_fn, params, x, batch_size=max(batch, 256)), jnp.int32)
    scalar = lambda value: jnp.asarray(value, x.dtype)
    v = jnp.zeros(x.shape[1:], x.dtype)
    history = []
    for index, pass_key in enumerate(jax.random.split(key, max_passes)):
        v, rate = _deepfool_uap_pass(
            apply_fn,
            params,
            v,
            x,
            clean,
            pass_key,
            scalar(eps),
            scalar(overshoot),
            scalar(eps if inner_eps is None else inner_eps),
            norm=norm,
            inner=inner,
            aggregate=aggregate,
            batch_size=batch,
            deepfool_max_iter=int(deepfool_max_iter),
            inner_steps=int(inner_steps),
            num_classes=num_classes,
        )
        history.append(float(rate))
        if progress is not None:
            progress(index, history[-1])
        if history[-1] >= target_fooling_rate:
            break
    return v, np.asarray(history)


# --------------------------------------------------------------------------
# Per-input attacks.
# --------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("apply_fn", "norm"))
def _fgsm(apply_fn, params, x, y, eps, *, norm):
    return jnp.clip(x + _fgsm_delta(apply_fn, params, x, y, eps, norm), 0.0, 1.0)


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

    Args: x ``(B, *S)`` in ``[0, 1]``; y ``(B,)`` labels; eps, norm the budget;
      key unused (FGSM is deterministic), accepted for the signature shared
      through ``ATTACKS``.
    Returns: ``x_adv`` of shape ``(B, *S)``.
    """
    del key
    _check_norm(norm)
    x = jnp.asarray(x)
    y = jnp.asarray(y, jnp.int32)
    chex.assert_shape(y, (x.shape[0],))
    return _fgsm(apply_fn, params, x, y, jnp.asarray(eps, x.dtype), norm=norm)


@functools.partial(jax.jit, static_argnames=("apply_fn", "norm", "num_steps", "random_start"))
def _pgd(apply_fn, params, x, y, eps, step_size, key, *, norm, num_steps, random_start):
    if random_start:
        delta0 = _random_in_ball(key, x.shape, norm, eps, x.dtype)
        delta0 = jnp.clip(x + project(delta0, norm, eps, True), 0.0, 1.0) - x
    else:
        delta0 = jnp.zeros_like(x)
    delta = _pgd_delta(apply_fn, params, x, y, eps, step_size, delta0, norm, num_steps, box=True)
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

    From a random start in the ball (or ``x``), ``num_steps`` steps
    ``delta <- P_eps(delta + step_size * dir(grad CE))`` followed by
    ``delta <- clip(x + delta, 0, 1) - x``.  Default step
    ``2.5 * eps / num_steps`` (Madry et al.'s rule: the ball's radius is
    crossed 2.5 times).

    Args: x ``(B, *S)`` in ``[0, 1]``; y ``(B,)``; eps, norm the budget;
      step_size, num_steps; key for the random start (default ``PRNGKey(0)``).
    Returns: ``x_adv`` of shape ``(B, *S)`` with ``||x_adv - x||_p <= eps``.
    """
    _check_norm(norm)
    x = jnp.asarray(x)
    y = jnp.asarray(y, jnp.int32)
    chex.assert_shape(y, (x.shape[0],))
    if step_size is None:
        step_size = 2.5 * float(eps) / max(num_steps, 1)
    if key is None:
        key = jax.random.PRNGKey(0)
    return _pgd(
        apply_fn, params, x, y,
        jnp.asarray(eps, x.dtype), jnp.asarray(step_size, x.dtype), key,
        norm=norm, num_steps=int(num_steps), random_start=bool(random_start),
    )


# Every entry accepts (apply_fn, params, x, y, *, eps, norm, key, ...); the
# return types differ as noted.
ATTACKS: Dict[str, Callable[..., Any]] = {
    # Universal, v of shape S.
    "sgd_uap": sgd_uap,  # -> (v, loss_history)
    "sv_uap": singular_vector_uap,  # -> v
    "deepfool_uap": deepfool_uap,  # -> (v, fooling_history)
    # Per input, x_adv of shape (B, *S).
    "pgd": pgd,
    "fgsm": fgsm,
}

UNIVERSAL_ATTACKS = ("sgd_uap", "sv_uap", "deepfool_uap")
