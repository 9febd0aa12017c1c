"""What a gradient-based UAP ascends: one per-example loss per name, and the minibatch objective.

Every minibatch attack of :mod:`jacuap.attacks` (SGD-UAP, SGA, restarts and
the attacks built on them: layer maximisation, Cosine-UAP, FG-UAP, GD-UAP)
moves ``v`` along the gradient of ONE function, :func:`uap_objective`: the
masked mean over a minibatch of a per-example loss of the model's output
(logits) or of hidden features, at ``clip(x_b + v, 0, 1)``.  The loss is
chosen by name (:data:`LOSSES`):

==================  =====================================================  ========
name                per-example value (``z`` the output at ``x + v``,       clean
                    ``z0`` at ``x``; ``a_l`` hidden features)               output?
==================  =====================================================  ========
``ce``              ``min(CE(z, y), beta)``                                no
``margin``          ``min(max_{j != y} z_j - z_y, beta)`` (Carlini-Wagner;  no
                    targeted: ``max(max_{j != t} z_j - z_t, -beta)``)
``cosine``          ``-cos(z, z0)`` (Cosine-UAP on logits, FG-UAP on       yes
                    features)
``norm``            ``||a||_2^2`` (layer maximisation)                     no
``log_norms``       ``sum_l log ||a_l||_2`` (GD-UAP, over several layers)  no
==================  =====================================================  ========

The attack ascends the objective (untargeted) or descends it (targeted,
with the target in ``y``).  ``beta`` clips the label losses so that
examples already fooled with a large loss stop steering ``v``; the margin
needs no softmax, so its gradient does not vanish where the model is
confident (the usual reason to prefer it on models with small input
gradients, such as Jacobian-regularised ones).

>>> import jax.numpy as jnp
>>> z = jnp.array([[2.0, 0.0, 1.0]])
>>> float(LOSSES["margin"].fn(z, None, jnp.array([0]), 12.0, False)[0])
-1.0
>>> float(LOSSES["cosine"].fn(z, z, None, 12.0, False)[0])
-1.0
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Optional

import jax
import jax.numpy as jnp
import optax

from jacuap.jacobian import ApplyFn

__all__ = ["Loss", "LOSSES", "LABEL_LOSSES", "FEATURE_LOSSES", "uap_objective", "check_loss"]

# (out, clean_out, y, beta, targeted) -> (B,) per-example values; out is an array or a tuple of arrays.
PerExample = Callable[[Any, Any, jax.Array, jax.Array, bool], jax.Array]


@dataclasses.dataclass(frozen=True)
class Loss:
    """A per-example loss: its function, whether it reads labels, the clean output, or hidden features."""

    fn: PerExample
    uses_labels: bool
    uses_clean: bool
    on_features: Optional[bool]  # True: hidden features only; False: logits only; None: either
    # True where v = 0 is a stationary point of the loss: cos(f(x + v), f(x)) is at its maximum there, so its
    # gradient is 0 up to rounding and an attack must start elsewhere (see sgd_uap's random start).
    stationary_at_zero: bool = False


def _flat(a: jax.Array) -> jax.Array:
    return a.reshape(a.shape[0], -1)


def _ce(z, z0, y, beta, targeted):
    return jnp.minimum(optax.softmax_cross_entropy_with_integer_labels(z, y), beta)


def _margin(z, z0, y, beta, targeted):
    true = jnp.take_along_axis(z, y[:, None], axis=1)[:, 0]
    other = jnp.max(jnp.where(jax.nn.one_hot(y, z.shape[-1], dtype=bool), -jnp.inf, z), axis=1)
    m = other - true
    return jnp.maximum(m, -beta) if targeted else jnp.minimum(m, beta)


def _cosine(z, z0, y, beta, targeted):
    a, b = _flat(z), _flat(z0)
    # The epsilon keeps the gradient finite where a ReLU layer's features are all zero.
    dot = jnp.sum(a * b, axis=1)
    return -dot / (jnp.linalg.norm(a, axis=1) * jnp.linalg.norm(b, axis=1) + 1e-12)


def _norm(a, a0, y, beta, targeted):
    return jnp.sum(jnp.square(_flat(a)), axis=1)


def _log_norms(acts, a0, y, beta, targeted):
    acts = acts if isinstance(acts, (tuple, list)) else (acts,)
    return sum(0.5 * jnp.log(jnp.sum(jnp.square(_flat(a)), axis=1) + 1e-12) for a in acts)


LOSSES: Dict[str, Loss] = {
    "ce": Loss(_ce, uses_labels=True, uses_clean=False, on_features=False),
    "margin": Loss(_margin, uses_labels=True, uses_clean=False, on_features=False),
    "cosine": Loss(_cosine, uses_labels=False, uses_clean=True, on_features=None, stationary_at_zero=True),
    "norm": Loss(_norm, uses_labels=False, uses_clean=False, on_features=True),
    "log_norms": Loss(_log_norms, uses_labels=False, uses_clean=False, on_features=True),
}
#: The losses of the label-based attacks (``sgd_uap``, ``sga_uap``, ``sgd_uap_restarts``: ``loss=``).
LABEL_LOSSES = ("ce", "margin")
FEATURE_LOSSES = tuple(n for n, l in LOSSES.items() if l.on_features is not False)


def check_loss(loss: str, on_features: bool, allowed=None) -> Loss:
    """The :class:`Loss` named ``loss``; ValueError naming ``loss`` when unknown or not for this output."""
    choices = tuple(allowed) if allowed is not None else tuple(LOSSES)
    if loss not in LOSSES or loss not in choices:
        raise ValueError(f"loss must be one of {', '.join(choices)}, got {loss!r}")
    spec = LOSSES[loss]
    if spec.on_features is not None and spec.on_features != on_features:
        where = "hidden features (features_fn)" if spec.on_features else "logits (no features_fn)"
        raise ValueError(f"loss {loss!r} is computed on {where}")
    return spec


def uap_objective(
    apply_fn: ApplyFn,
    features_fn: Optional[Callable[[Any, jax.Array], Any]],
    params: Any,
    v: jax.Array,
    xb: jax.Array,
    yb: jax.Array,
    mask: jax.Array,
    beta: jax.Array,
    loss: Optional[str] = None,
    targeted: bool = False,
) -> jax.Array:
    """The quantity a minibatch UAP attack moves ``v`` along, on one minibatch (a scalar).

        L(v) = sum_b mask_b * l(g(clip(x_b + v, 0, 1)), g(x_b), y_b) / max(sum_b mask_b, 1)

    with ``g = features_fn`` when given, else ``apply_fn`` (the logits), and
    ``l = LOSSES[loss]`` (default: ``"norm"`` with ``features_fn``, the layer
    maximisation of Co et al. 2021, else ``"ce"``, SGD-UAP's clipped
    cross-entropy).  ``g(x_b)`` (clean) is computed only for ``"cosine"``,
    under ``stop_gradient``.

    Shapes: ``v`` is ``S``; ``xb`` ``(B, *S)``; ``yb`` and ``mask`` ``(B,)``.
    """
    if loss is None:
        loss = "norm" if features_fn is not None else "ce"
    spec = LOSSES[loss]
    g = features_fn if features_fn is not None else apply_fn
    out = g(params, jnp.clip(xb + v, 0.0, 1.0))
    clean = jax.lax.stop_gradient(g(params, xb)) if spec.uses_clean else None
    per_example = spec.fn(out, clean, yb, beta, targeted)
    return jnp.sum(per_example * mask) / jnp.maximum(jnp.sum(mask), 1.0)
