"""Metrics of a model on a set: prediction rates, Jacobian bounds, pairwise sharing, summaries.

Conventions as in :mod:`jacuap.jacobian`: ``apply_fn(params, x) -> logits``,
``x`` of shape ``(N, *S)`` with pixels in ``[0, 1]``, ``J_i = J(x_i)`` the
``K x d`` input Jacobian.  A universal perturbation ``v`` has shape ``S``;
the model sees ``clip(x + v, 0, 1)``.

* :mod:`~jacuap.metrics.rates`: :func:`predict`, :func:`accuracy`,
  :func:`universal_evasion_rate` (share with ``argmax f(clip(x + v)) != y``),
  :func:`fooling_rate` (share whose prediction ``v`` changes).
* :mod:`~jacuap.metrics.bounds`: ``sum_i ||J_i v||^2 <= sigma_max(J_X)^2
  ||v||_2^2 <= sum_i sigma_max(J_i)^2 ||v||^2 <= sum_i ||J_i||_F^2 ||v||^2``:
  :func:`stacked_sigma_max`, :func:`per_example_spectral_norms`,
  :func:`mean_frobenius_sq`, :func:`first_order_uap_bound`,
  :func:`universality_ratio`, :func:`input_jacobians`.
* :mod:`~jacuap.metrics.pairwise`: :func:`shared_perturbation_strength`,
  :func:`jacobian_cosine`, :func:`gram_cosine` (and ``*_from_jacobians``),
  :func:`class_pair_summary`.
* :mod:`~jacuap.metrics.summary`: :func:`jacobian_metrics` (all of the
  above as a JSON-able dict), :func:`pearson`, :func:`spearman`.

Loops over a set run batch by batch on the host with one compiled function
per (model, batch size); scalar results are Python floats.  To use every
device, pass ``jacuap.parallel.batch_sharded_apply(apply_fn, mesh)`` and
parameters replicated on the mesh: batch sizes are then rounded up to a
multiple of the device count and each batch is split over the devices.
"""

from jacuap.metrics.bounds import (
    first_order_uap_bound,
    input_jacobians,
    mean_frobenius_sq,
    per_example_spectral_norms,
    stacked_sigma_max,
    universality_ratio,
)
from jacuap.metrics.pairwise import (
    PAIRWISE_METRICS,
    class_pair_summary,
    gram_cosine,
    gram_cosine_from_jacobians,
    jacobian_cosine,
    jacobian_cosine_from_jacobians,
    pairwise_metrics_from_jacobians,
    shared_perturbation_strength,
    shared_perturbation_strength_from_jacobians,
)
from jacuap.metrics.rates import accuracy, fooling_rate, predict, universal_evasion_rate
from jacuap.metrics.summary import jacobian_metrics, pearson, spearman

__all__ = [
    "predict",
    "accuracy",
    "universal_evasion_rate",
    "fooling_rate",
    "mean_frobenius_sq",
    "per_example_spectral_norms",
    "stacked_sigma_max",
    "first_order_uap_bound",
    "universality_ratio",
    "input_jacobians",
    "PAIRWISE_METRICS",
    "pairwise_metrics_from_jacobians",
    "shared_perturbation_strength_from_jacobians",
    "jacobian_cosine_from_jacobians",
    "gram_cosine_from_jacobians",
    "shared_perturbation_strength",
    "jacobian_cosine",
    "gram_cosine",
    "class_pair_summary",
    "jacobian_metrics",
    "pearson",
    "spearman",
]
