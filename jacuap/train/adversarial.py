"""The adversarial-training baselines: Madry et al.'s PGD training and Shafahi et al.'s UAT.

Neither is in the paper's comparison; ``benchmarks/reproduce.py`` trains
them as reference points (``config.adv_training``).

* ``"pgd"`` (Madry et al. 2018): each step trains on per-input l_inf PGD
  examples, ``steps`` steps of ``step_size`` from a random start.
* ``"uat"`` (Shafahi et al. 2020, FGSM-UAT): one shared ``delta`` (the train
  state's ``uap``) ascends the loss at every step,
  ``delta <- P_eps(delta + step_size * sign(grad_delta L))``, while the model
  trains on ``clip(x + delta, 0, 1)``.
* ``"trades"`` (Zhang et al. 2019): the loss is
  ``CE(f(x), y) + trades_beta * KL(softmax f(x) || softmax f(x'))``
  (:func:`jacuap.train.loss.loss_fn` with ``adv_images``), ``x'``
  (:func:`trades_examples`) maximising the KL term by ``steps`` l_inf sign
  steps of ``step_size`` from ``x + 0.001 N(0, I)``, in the ball and the box.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections

from jacuap import attacks

__all__ = ["Adversary", "make_adversary", "pgd_examples", "trades_examples", "uat_inputs", "uat_update"]


class Adversary(NamedTuple):
    """Static settings of an adversarial-training baseline (hashable, for jit).

    ``kind``: ``"none"``, ``"pgd"``, ``"uat"`` or ``"trades"``; ``eps``: the
    l_inf budget (pixel units); ``steps``: PGD's (or TRADES' inner) steps;
    ``step_size``: their step, or UAT's ``delta`` step.  (TRADES' ``beta``
    is :func:`jacuap.train.step.train_step`'s ``trades_beta``.)
    """

    kind: str = "none"
    eps: float = 0.0
    steps: int = 0
    step_size: float = 0.0


def make_adversary(config: ml_collections.ConfigDict) -> Adversary:
    """The ``Adversary`` of a config; default step sizes where ``adv_step_size == 0``.

    PGD and TRADES: ``2.5 * eps / steps`` (Madry et al.; with TRADES' 10
    steps that is ``eps / 4``, close to Zhang et al.'s 0.007 for 0.031).  UAT: ``eps / 4``, so the shared
    ``delta`` can cross the ball in a few steps yet does not flip at every one.

    >>> from jacuap import configs
    >>> make_adversary(configs.override(configs.get_config(), adv_training="pgd", adv_eps=0.1, adv_steps=5))
    Adversary(kind='pgd', eps=0.1, steps=5, step_size=0.05)
    """
    if config.adv_training == "none":
        return Adversary()
    eps = float(config.adv_eps)
    step = float(config.adv_step_size)
    if not step:
        step = 2.5 * eps / config.adv_steps if config.adv_training in ("pgd", "trades") else eps / 4
    return Adversary(config.adv_training, eps, int(config.adv_steps), step)


def pgd_examples(apply_fn: Callable, params: Any, images: jax.Array, labels: jax.Array,
                 adversary: Adversary, key: jax.Array) -> jax.Array:
    """Per-input l_inf PGD examples ``(B, *S)`` to train on (no gradient flows through them)."""
    return jax.lax.stop_gradient(attacks.pgd(
        apply_fn, params, images, labels, eps=adversary.eps, norm="linf",
        step_size=adversary.step_size, num_steps=adversary.steps, key=key))


def trades_examples(apply_fn: Callable, params: Any, images: jax.Array, adversary: Adversary,
                    key: jax.Array) -> jax.Array:
    """TRADES' inner maximisation: ``x'`` in the l_inf ball and ``[0, 1]`` maximising ``KL(f(x) || f(x'))``.

    From ``x + 0.001 N(0, I)``, ``adversary.steps`` steps
    ``x' <- clip(x + P_eps(x' + step_size * sign(grad_x' KL) - x), 0, 1)``
    (Zhang et al.'s code), ``f(x)`` held fixed.  No gradient flows through the result.
    """
    params = jax.lax.stop_gradient(params)
    p_logits = jax.lax.stop_gradient(apply_fn(params, images))
    logp = jax.nn.log_softmax(p_logits)
    p = jnp.exp(logp)

    def kl_sum(xa):
        return jnp.sum(p * (logp - jax.nn.log_softmax(apply_fn(params, xa))))

    def body(_, xa):
        xa = xa + adversary.step_size * attacks.ascent_direction(jax.grad(kl_sum)(xa), "linf", True)
        return jnp.clip(images + attacks.project(xa - images, "linf", adversary.eps, True), 0.0, 1.0)

    x0 = images + 0.001 * jax.random.normal(key, images.shape, images.dtype)
    return jax.lax.stop_gradient(jax.lax.fori_loop(0, adversary.steps, body, x0))


def uat_inputs(images: jax.Array, uap: jax.Array) -> jax.Array:
    """What UAT trains on: ``clip(x + delta, 0, 1)``, ``delta`` broadcast over the batch."""
    return jnp.clip(images + uap, 0.0, 1.0)


def uat_update(uap: jax.Array, uap_grad: jax.Array, adversary: Adversary) -> jax.Array:
    """One FGSM ascent step of the shared perturbation: ``P_eps(delta + step_size * sign(grad))``."""
    return attacks.project(uap + adversary.step_size * jnp.sign(uap_grad), "linf", adversary.eps)
