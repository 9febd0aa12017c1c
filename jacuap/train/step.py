"""One training step and one evaluation step (pure; the loop jits them).

A step's randomness (the penalty's random projections, PGD's and SAT's
random starts, TRADES' start noise)
comes from its own key, :func:`step_key` ``(seed, step)``: a pure function
of the seed and the global step, so a resumed run draws exactly what the
uninterrupted one drew.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Tuple

import jax
import jax.numpy as jnp

from jacuap.train import regularizers
from jacuap.train.adversarial import ADVERSARIES, Adversary, uat_inputs, uat_update
from jacuap.train.loss import loss_fn, skips_penalty
from jacuap.train.state import TrainState

__all__ = ["STATIC_ARGNAMES", "train_step", "eval_step", "step_key"]

#: The arguments of :func:`train_step` to mark static when jitting it.
STATIC_ARGNAMES = ("jr_lambda", "jr_num_proj", "input_std", "adversary", "jr_mode", "jr_power_iters",
                   "trades_beta")


def step_key(seed: int, step) -> jax.Array:
    """The PRNG key of global step ``step``: ``fold_in(PRNGKey(seed), step)``.

    >>> bool((step_key(0, 3) == step_key(0, 3)).all()), bool((step_key(0, 3) == step_key(0, 4)).all())
    (True, False)
    """
    return jax.random.fold_in(jax.random.PRNGKey(seed), step)


def train_step(
    state: TrainState,
    images: jax.Array,
    labels: jax.Array,
    key: jax.Array,
    jr_lambda: float,
    jr_num_proj: Optional[int],
    input_std: Optional[Tuple[float, ...]] = None,
    adversary: Adversary = Adversary(),
    jr_mode: str = "frobenius",
    jr_power_iters: int = 2,
    trades_beta: float = 0.0,
) -> Tuple[TrainState, Dict[str, jax.Array]]:
    """One optimizer step on a batch ``images (B, *S)``, ``labels (B,)``.

    Minimises :func:`jacuap.train.loss.loss_fn` (on PGD or shared
    adversarial examples, or on ``clip(x + uap)`` (UAT) or
    ``clip(x + uap[y])`` (class-wise UAT) while ascending ``uap``, for the
    adversarial defences, :mod:`jacuap.train.adversarial`).  With UAT the
    gradient of the loss mean over the batch drives ``uap``'s sign step.  Jit with ``static_argnames=STATIC_ARGNAMES`` and donate the
    state.  ``key`` is the step's own key (:func:`step_key`), split into the
    projections' key and PGD's (or TRADES').

    ``jr_mode="stacked_spectral"``: first ``jr_power_iters`` power iterations
    from ``state.jr_vec`` on the batch's stacked Jacobian at the current
    parameters (:func:`jacuap.train.regularizers.spectral_power_iterations`);
    the penalty uses the result (held constant) and the new state carries it
    to the next step.  ``adversary.kind == "trades"``: the loss gains
    ``trades_beta * KL(f(x) || f(x'))`` on TRADES examples ``x'``.

    Returns:
      ``(new_state, {"loss", "ce", "penalty", "correct"})`` (the batch's
      values before the update).
    """
    jr_key, adv_key = jax.random.split(key)
    kind = ADVERSARIES[adversary.kind]
    adv_images = None
    if kind.examples is not None:
        adv_images = kind.examples(state.apply_fn, state.params, images, labels, adversary, adv_key)
        if kind.replaces:
            images, adv_images = adv_images, None
    universal = kind.universal
    class_of = labels if kind.class_wise else None  # class-wise: input b uses delta_{y_b}
    jr_vec = getattr(state, "jr_vec", None)  # a SpectralTrainState's
    if jr_mode == "stacked_spectral" and not skips_penalty(jr_lambda):
        inputs = uat_inputs(images, state.uap, class_of) if universal else images
        jr_apply, jr_inputs = regularizers.jr_view(state.apply_fn, inputs, input_std)
        jr_vec = regularizers.spectral_power_iterations(jr_apply, state.params, jr_inputs, jr_vec, jr_power_iters)

    def objective(params, uap):
        inputs = uat_inputs(images, uap, class_of) if universal else images
        return loss_fn(params, state.apply_fn, inputs, labels, jr_lambda, jr_key, jr_num_proj, input_std,
                       jr_mode, jr_vec, adv_images, trades_beta)

    argnums = (0, 1) if universal else 0
    (_, aux), grads = jax.value_and_grad(objective, argnums=argnums, has_aux=True)(state.params, state.uap)
    uap = state.uap
    if universal:
        grads, uap_grad = grads
        uap = uat_update(uap, uap_grad, adversary)
    extra = {} if jr_vec is None else {"jr_vec": jr_vec}
    return state.apply_gradients(grads=grads, uap=uap, **extra), aux


def eval_step(params: Any, apply_fn: Callable, images: jax.Array, labels: jax.Array, mask: jax.Array) -> jax.Array:
    """Number of correct predictions among the unmasked examples of a batch: ``sum_b mask_b [argmax f(x_b) = y_b]``.

    >>> W = jnp.eye(2)
    >>> int(eval_step(W, lambda W, x: x @ W, jnp.eye(2), jnp.array([0, 0]), jnp.array([1.0, 1.0])))
    1
    """
    pred = jnp.argmax(apply_fn(params, images), -1)
    return jnp.sum((pred == labels) * mask)
