"""GAP, universal mode (Poursaeed, Katsman, Gao, Belongie, CVPR 2018): a generator learns the perturbation.

Poursaeed et al., "Generative Adversarial Perturbations" (CVPR 2018) train a
network ``G`` that maps a FIXED noise vector ``z`` to the universal
perturbation, scaled into the budget,

    v(theta) = min(1, eps / ||G_theta(z)||_p) * G_theta(z),

against the attacked model ``f`` by minimising the fooling loss over the
crafting set

    untargeted:  log CE(f(clip(x + v, 0, 1)), ll(x)),   ll(x) = argmin_k f(x)_k (the least likely class)
    targeted:    log CE(f(clip(x + v, 0, 1)), t)

(``CE`` the mean cross-entropy over a minibatch; the log makes the step
scale-free).  The attacker optimises ``theta``, not ``v``: the generator's
parametrisation is the whole difference from SGD-UAP, and the question it
answers is whether a learned, smooth family of perturbations finds what
direct ascent misses.  ``G`` here is a two-layer perceptron
``z (64) -> 256 ReLU -> prod(S)`` trained by Adam (``learning_rate`` 1e-2),
one compiled epoch per pass over the set (:func:`gap_uap_epoch`); the paper's
generators are ResNet or U-Net image-to-image networks, which matter for
large images and less for the 28x28 inputs this library trains on.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import optax

from jacuap.attacks.balls import check_norm
from jacuap.attacks.epochs import run_epochs
from jacuap.attacks.registry import AttackSpec, Crafting, epochs_progress, register
from jacuap.attacks.result import UAPResult
from jacuap.batching import effective_batch_size, index_batches
from jacuap.checks import check_budget, check_class, check_key, check_model_inputs, check_number, check_positive_int
from jacuap.jacobian import ApplyFn

__all__ = ["gap_uap", "gap_uap_epoch", "init_generator", "generate"]


def init_generator(key: jax.Array, shape: Tuple[int, ...], noise_dim: int = 64, hidden: int = 256,
                   dtype: Any = jnp.float32) -> Dict[str, Any]:
    """The generator's parameters and its fixed noise ``z`` (under ``"z"``, not trained)."""
    kz, k1, k2 = jax.random.split(key, 3)
    d = 1
    for s in shape:
        d *= int(s)
    return {
        "z": jax.random.normal(kz, (noise_dim,), dtype),
        "w1": jax.random.normal(k1, (noise_dim, hidden), dtype) / jnp.sqrt(noise_dim).astype(dtype),
        "b1": jnp.zeros((hidden,), dtype),
        "w2": jax.random.normal(k2, (hidden, d), dtype) / jnp.sqrt(hidden).astype(dtype),
        "b2": jnp.zeros((d,), dtype),
    }


def generate(gen: Dict[str, Any], shape: Tuple[int, ...], eps: jax.Array, norm: str) -> jax.Array:
    """``v = min(1, eps / ||G(z)||_p) * G(z)``, shape ``S`` (inside the budget by construction)."""
    h = jax.nn.relu(gen["z"] @ gen["w1"] + gen["b1"])
    g = (h @ gen["w2"] + gen["b2"]).reshape(shape)
    size = jnp.max(jnp.abs(g)) if norm == "linf" else jnp.sqrt(jnp.sum(jnp.square(g)))
    return g * jnp.minimum(1.0, eps / jnp.maximum(size, 1e-12))


@functools.partial(jax.jit, static_argnames=("apply_fn", "norm", "batch_size", "learning_rate", "targeted"))
def gap_uap_epoch(apply_fn: ApplyFn, params: Any, state: Tuple[Any, Any], x: jax.Array, y: jax.Array,
                  key: jax.Array, eps: jax.Array, *, norm: str, batch_size: int, learning_rate: float,
                  targeted: bool) -> Tuple[Tuple[Any, Any], jax.Array]:
    """One pass of Adam over shuffled minibatches: ``state = (generator, optimiser state)``.

    ``y`` holds the target (targeted) or is ignored (untargeted: each
    input's least likely class under the clean model is its label).
    Returns the new state and the per-minibatch fooling losses.
    """
    optimiser = optax.adam(learning_rate)
    shape = x.shape[1:]
    idx, mask = index_batches(jax.random.permutation(key, x.shape[0]), batch_size, x.dtype)

    def fooling_loss(trainable, fixed, xb, yb, mb):
        v = generate({**trainable, **fixed}, shape, eps, norm)
        if not targeted:
            yb = jnp.argmin(jax.lax.stop_gradient(apply_fn(params, xb)), axis=-1)
        ce = optax.softmax_cross_entropy_with_integer_labels(apply_fn(params, jnp.clip(xb + v, 0.0, 1.0)), yb)
        return jnp.log(jnp.sum(ce * mb) / jnp.maximum(jnp.sum(mb), 1.0) + 1e-12)

    def step(carry, batch):
        gen, opt_state = carry
        ib, mb = batch
        trainable = {k: w for k, w in gen.items() if k != "z"}
        value, grads = jax.value_and_grad(fooling_loss)(trainable, {"z": gen["z"]}, x[ib], y[ib], mb)
        updates, opt_state = optimiser.update(grads, opt_state, trainable)
        return ({**optax.apply_updates(trainable, updates), "z": gen["z"]}, opt_state), value

    return jax.lax.scan(step, state, (idx, mask))


def gap_uap(
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
    learning_rate: float = 1e-2,
    noise_dim: int = 64,
    hidden: int = 256,
    targeted: Optional[int] = None,
    progress: Optional[Callable[[int, float], None]] = None,
) -> UAPResult:
    """GAP's universal perturbation: a generator trained against ``apply_fn`` (module docstring).

    Args:
      apply_fn, params: the model, ``(B, *S) -> (B, K)`` logits.
      x: crafting inputs ``(N, *S)`` in ``[0, 1]``.
      y: ignored (the untargeted loss uses each input's least likely class);
        accepted for the common signature.
      eps, norm: the budget; ``v`` is scaled into it, never projected.
      key: PRNG key (required): the generator's initialisation, ``z`` and the
        minibatch orders.
      num_epochs, batch_size: passes over the set and minibatch size.
      learning_rate: Adam's step on the generator's weights.
      noise_dim, hidden: the generator's sizes.
      targeted: a target class, or None.
      progress: ``callable(epoch, mean loss)`` after each epoch.

    Returns:
      ``UAPResult(v, history)``, ``history`` the per-minibatch fooling losses.

    >>> import jax, jax.numpy as jnp
    >>> W = jnp.array([[1.0, 0.0, -1.0], [0.0, 1.0, -1.0]])
    >>> apply_fn = lambda W, x: x.reshape(len(x), -1) @ W
    >>> x = jax.random.uniform(jax.random.PRNGKey(1), (32, 2))
    >>> v, history = gap_uap(apply_fn, W, x, eps=0.1, key=jax.random.PRNGKey(0), num_epochs=2, batch_size=16)
    >>> v.shape, bool(jnp.max(jnp.abs(v)) <= 0.1 + 1e-7), history.shape
    ((2,), True, (4,))
    """
    check_norm(norm)
    check_key(key, why="by gap_uap (the generator's initialisation and the minibatch order)")
    check_budget(eps, norm)
    num_classes = check_model_inputs(apply_fn, params, x)
    for value, name in ((num_epochs, "num_epochs"), (batch_size, "batch_size"), (noise_dim, "noise_dim"),
                        (hidden, "hidden")):
        check_positive_int(value, name)
    check_number(learning_rate, "learning_rate", minimum=0.0, strict=True)
    x = jnp.asarray(x)
    n, shape = x.shape[0], tuple(x.shape[1:])
    if targeted is not None:
        check_class(targeted, num_classes, "targeted")
    labels = jnp.full((n,), 0 if targeted is None else int(targeted), jnp.int32)
    init_key, order_key = jax.random.split(key)
    gen = init_generator(init_key, shape, int(noise_dim), int(hidden), x.dtype)
    opt_state = optax.adam(float(learning_rate)).init({k: w for k, w in gen.items() if k != "z"})
    batch = effective_batch_size(batch_size, n)
    eps_ = jnp.asarray(eps, x.dtype)

    def epoch(state, epoch_key, decay):
        del decay  # Adam's step is fixed
        return gap_uap_epoch(apply_fn, params, state, x, labels, epoch_key, eps_, norm=norm, batch_size=batch,
                             learning_rate=float(learning_rate), targeted=targeted is not None)

    (gen, _), history = run_epochs(epoch, (gen, opt_state), order_key, num_epochs, 1.0, progress)
    return UAPResult(generate(gen, shape, eps_, norm), history)


def _craft(c: Crafting) -> UAPResult:
    return gap_uap(c.apply_fn, c.params, c.x, None, eps=c.eps, norm=c.norm, key=c.key,
                   progress=epochs_progress(c), **c.settings)


register(AttackSpec(
    "gap_uap", gap_uap, needs_labels=False, targeted=True,
    settings={"num_epochs": 10, "batch_size": 32, "learning_rate": 1e-2},
    request_settings={"num_epochs": "sgd_epochs"}, craft=_craft,
    gradient_evaluations=lambda s, n, k: s["num_epochs"] * n,
    summary="a generator G(z) -> v trained to min log CE(f(x + v), least likely class) (Poursaeed et al., "
            "CVPR 2018)"))
