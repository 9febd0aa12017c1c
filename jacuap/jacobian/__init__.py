"""Input-Jacobian kernels: the one place where jacuap differentiates a model.

Every function here takes ``apply_fn(params, x) -> logits``, a pure function
mapping a batch ``x`` of shape ``(B, *S)`` (pixels in [0, 1]) to logits of
shape ``(B, K)``, in which each example's logits depend on that example only
(no batch statistics).  Training, attacks and metrics all call these kernels;
nothing else in jacuap computes a Jacobian.

Notation.  ``f: R^d -> R^K`` with ``d = prod(S)``;
``J(x) = df/dx`` is ``K x d``.  For a set ``X = {x_1..x_N}`` the stacked
Jacobian is ``J_X = [J(x_1); ...; J(x_N)]`` (``NK x d``) and one shared
perturbation ``v`` moves the logits by, to first order,

    sum_i ||J(x_i) v||^2 = ||J_X v||^2 <= sigma_max(J_X)^2 ||v||_2^2
                         <= sum_i sigma_max(J_i)^2 ||v||^2
                         <= sum_i ||J_i||_F^2 ||v||^2.

Jacobian regularization shrinks the last term, and with it the bound on every
universal perturbation.

All functions are pure, jit- and vmap-friendly; ``K`` and ``S`` are static
(read from shapes), so the Python loops below unroll at trace time.  The set
kernels (:func:`stacked_gram`, :func:`stacked_spectral_norm`) reduce over
chunks of the set with :func:`jacuap.batching.reduce_chunks`; their keyword
``loop="host"`` runs that reduction from Python (concrete arguments only,
faster on CPU), the default ``loop="scan"`` inside ``lax.scan`` (traceable).
"""

from jacuap.jacobian.kernels import (ApplyFn, frobenius_sq, input_jacobian, jacobian_penalty,
                                     logits_and_frobenius_sq, logits_and_input_jacobian,
                                     logits_and_jacobian_penalty, spectral_norm)
from jacuap.jacobian.stacked import GRAM_LIMIT, stacked_gram, stacked_singular_pairs, stacked_spectral_norm

__all__ = [
    "ApplyFn",
    "input_jacobian",
    "logits_and_input_jacobian",
    "logits_and_frobenius_sq",
    "frobenius_sq",
    "logits_and_jacobian_penalty",
    "jacobian_penalty",
    "spectral_norm",
    "stacked_spectral_norm",
    "stacked_singular_pairs",
    "stacked_gram",
    "GRAM_LIMIT",
]
