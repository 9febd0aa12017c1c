"""The adversarial-training defences: per-input (PGD-AT, TRADES) and universal (UAT, SAT, class-wise UAT).

None is in the paper's comparison; ``benchmarks/reproduce.py`` trains
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
* ``"sat"`` (Mummadi, Brox, Metzen, ICCV 2019, shared adversarial training):
  the batch (already shuffled) is cut into heaps of ``heap_size``
  consecutive inputs; each heap ``h`` gets ONE perturbation ``delta_h``,
  from a uniform random start in the ball, by ``steps`` l_inf sign steps on
  the heap's summed loss,
  ``delta_h <- P_eps(delta_h + step_size * sign(sum_{b in h} grad CE(f(clip(x_b + delta_h)), y_b)))``
  (:func:`shared_examples`), and the model trains on ``clip(x_b + delta_{h(b)})``.
  ``heap_size=1`` is PGD-AT; ``heap_size=B`` one batch-universal
  perturbation.  The sign step makes the heap's gradient scale (sum or
  mean) immaterial.
* ``"cw_uat"`` (Benz et al., ICME 2021, class-wise universal adversarial
  training): the train state keeps one perturbation per class,
  ``uap`` of shape ``(K, *S)``; input ``b`` trains on
  ``clip(x_b + delta_{y_b})`` and, at every step, each class's perturbation
  takes one FGSM step on the loss of that class's inputs in the batch,
  ``delta_k <- P_eps(delta_k + step_size * sign(sum_{b: y_b = k} grad CE))``
  (unchanged when the batch has none of class ``k``: its gradient is 0).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import ml_collections
import optax

from jacuap import attacks

__all__ = ["UNIVERSAL_KINDS", "ADVERSARIES", "AdversaryKind", "Adversary", "make_adversary", "pgd_examples",
           "trades_examples", "shared_examples", "uat_inputs", "uat_update"]



class Adversary(NamedTuple):
    """Static settings of an adversarial-training baseline (hashable, for jit).

    ``kind``: ``"none"``, ``"pgd"``, ``"uat"``, ``"trades"``, ``"sat"`` or
    ``"cw_uat"``; ``eps``: the l_inf budget (pixel units); ``steps``: PGD's
    (or TRADES', or SAT's) steps; ``step_size``: their step, or UAT's
    ``delta`` step; ``heap_size``: SAT's inputs per shared perturbation.
    (TRADES' ``beta`` is :func:`jacuap.train.step.train_step`'s ``trades_beta``.)
    """

    kind: str = "none"
    eps: float = 0.0
    steps: int = 0
    step_size: float = 0.0
    heap_size: int = 0


def make_adversary(config: ml_collections.ConfigDict) -> Adversary:
    """The ``Adversary`` of a config; default step sizes where ``adv_step_size == 0``.

    PGD, TRADES and SAT: ``2.5 * eps / steps`` (Madry et al.; with TRADES' 10
    steps that is ``eps / 4``, close to Zhang et al.'s 0.007 for 0.031).
    UAT and class-wise UAT: ``eps / 4``, so the kept ``delta`` can cross the
    ball in a few steps yet does not flip at every one.

    >>> from jacuap import configs
    >>> make_adversary(configs.override(configs.get_config(), adv_training="pgd", adv_eps=0.1, adv_steps=5))
    Adversary(kind='pgd', eps=0.1, steps=5, step_size=0.05, heap_size=0)
    """
    if config.adv_training == "none":
        return Adversary()
    eps = float(config.adv_eps)
    step = float(config.adv_step_size)
    if not step:
        step = ADVERSARIES[config.adv_training].default_step(eps, int(config.adv_steps))
    heap = int(config.adv_heap_size) if config.adv_training == "sat" else 0
    return Adversary(config.adv_training, eps, int(config.adv_steps), step, heap)


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


def shared_examples(apply_fn: Callable, params: Any, images: jax.Array, labels: jax.Array,
                    adversary: Adversary, key: jax.Array) -> jax.Array:
    """Shared adversarial training's inputs ``clip(x_b + delta_{h(b)}, 0, 1)``, ``(B, *S)`` (module docstring).

    Heap ``h(b) = b // heap_size`` (the last heap is smaller when
    ``heap_size`` does not divide ``B``); ``delta`` ``(ceil(B / heap_size), *S)``
    starts uniform in ``[-eps, eps]`` (drawn with ``key``).  Indexing
    ``delta[h]`` makes the gradient of each ``delta_h`` the sum over its heap.
    No gradient flows through the result.

    >>> import jax, jax.numpy as jnp
    >>> adv = Adversary("sat", eps=0.1, steps=3, step_size=0.05, heap_size=2)
    >>> x = jnp.full((4, 3), 0.5); y = jnp.array([0, 0, 1, 1])
    >>> z = shared_examples(lambda w, x: x @ w, jnp.eye(3)[:, :2], x, y, adv, jax.random.PRNGKey(0))
    >>> bool(jnp.all(z[0] == z[1])), bool(jnp.all(z[2] == z[3])), bool(jnp.all(jnp.abs(z - x) <= 0.1 + 1e-7))
    (True, True, True)
    """
    params = jax.lax.stop_gradient(params)
    n = images.shape[0]
    heap = jnp.arange(n) // adversary.heap_size
    num_heaps = -(-n // adversary.heap_size)
    delta0 = jax.random.uniform(key, (num_heaps,) + images.shape[1:], images.dtype, -adversary.eps, adversary.eps)

    def heaps_loss(delta):
        logits = apply_fn(params, jnp.clip(images + delta[heap], 0.0, 1.0))
        return jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits, labels))

    def body(_, delta):
        return attacks.project(delta + adversary.step_size * jnp.sign(jax.grad(heaps_loss)(delta)), "linf",
                               adversary.eps, True)

    delta = jax.lax.fori_loop(0, adversary.steps, body, delta0)
    return jax.lax.stop_gradient(jnp.clip(images + delta[heap], 0.0, 1.0))


def uat_inputs(images: jax.Array, uap: jax.Array, labels: Optional[jax.Array] = None) -> jax.Array:
    """What UAT trains on: ``clip(x + delta, 0, 1)``, ``delta`` broadcast over the batch.

    Class-wise (``uap`` of shape ``(K, *S)``, ``labels`` given): ``clip(x_b + delta_{y_b}, 0, 1)``.
    """
    if labels is not None:
        return jnp.clip(images + uap[labels], 0.0, 1.0)
    return jnp.clip(images + uap, 0.0, 1.0)


def uat_update(uap: jax.Array, uap_grad: jax.Array, adversary: Adversary) -> jax.Array:
    """One FGSM ascent step of the kept perturbation(s): ``P_eps(delta + step_size * sign(grad))``.

    Elementwise, so it serves UAT's one ``delta`` and class-wise UAT's ``(K, *S)`` stack alike.
    """
    return attacks.project(uap + adversary.step_size * jnp.sign(uap_grad), "linf", adversary.eps)


class AdversaryKind(NamedTuple):
    """How one adversarial training changes a step (what :func:`jacuap.train.step.train_step` dispatches on).

    ``examples(apply_fn, params, images, labels, adversary, key)`` makes the
    batch's adversarial inputs, which REPLACE the clean ones
    (``replaces=True``: PGD-AT, shared AT) or join the loss beside them
    (TRADES' KL term); ``universal``: the perturbation lives in the train
    state's ``uap`` and ascends with the model (UAT), one per class when
    ``class_wise`` (class-wise UAT).  A step-size rule
    (``default_step(eps, steps)``) fills ``adv_step_size = 0``.
    """

    examples: Optional[Callable] = None
    replaces: bool = False
    universal: bool = False
    class_wise: bool = False
    default_step: Callable[[float, int], float] = lambda eps, steps: eps / 4


_PGD_STEP = lambda eps, steps: 2.5 * eps / steps  # noqa: E731  (Madry et al.)

#: Every ``adv_training`` kind, by name: one entry each (``configs.ADV_TRAINING`` lists the same names).
ADVERSARIES = {
    "none": AdversaryKind(),
    "pgd": AdversaryKind(pgd_examples, replaces=True, default_step=_PGD_STEP),
    "uat": AdversaryKind(universal=True),
    "trades": AdversaryKind(lambda f, p, x, y, adversary, key: trades_examples(f, p, x, adversary, key),
                            default_step=_PGD_STEP),
    "sat": AdversaryKind(shared_examples, replaces=True, default_step=_PGD_STEP),
    "cw_uat": AdversaryKind(universal=True, class_wise=True),
}
#: The kinds whose perturbations live in the train state's ``uap`` and ascend with the model's step.
UNIVERSAL_KINDS = tuple(name for name, kind in ADVERSARIES.items() if kind.universal)
