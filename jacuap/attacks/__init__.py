"""Adversarial attacks: five universal perturbations, two per-input ones, and their registry.

Conventions.  ``apply_fn(params, x) -> logits`` maps a batch ``x`` of shape
``(B, *S)`` (pixels in ``[0, 1]``) to ``(B, K)`` logits, each example
independently.  A universal adversarial perturbation (UAP) ``v`` has the
shape ``S`` of ONE input and is added to every input; the model always sees
``clip(x + v, 0, 1)``.  The budget is ``||v||_p <= eps`` with
``p in {inf, 2}`` (:data:`NORMS`), in pixel units (:mod:`.balls`).

Universal attacks, crafted on a set ``(x, y)``, each returning
:class:`UAPResult` ``(v, history)``:

* :func:`sgd_uap` (:mod:`.sgd_uap`): stochastic (sign-)gradient ascent on
  the clipped cross-entropy (Shafahi et al. 2020), with targeted and
  layer-maximisation variants.
* :func:`singular_vector_uap` (:mod:`.sv_uap`): the top right singular
  vector of the stacked Jacobian ``J_X`` (Khrulkov & Oseledets 2018), scaled
  to the budget.
* :func:`deepfool_uap` (:mod:`.deepfool_uap`): the iterative
  universal-perturbation algorithm of Moosavi-Dezfooli et al. (2017), batched.
* :func:`sga_uap` (:mod:`.sga`): stochastic gradient aggregation (Liu et
  al., ICCV 2023): inner minibatch steps whose gradients are aggregated
  before each outer update.
* :func:`sgd_uap_restarts` (:mod:`.restarts`): SGD-UAP from random starts in
  the ball, the best kept by its UER on the crafting set
  (:func:`best_of_restarts` does this for any attack taking ``init``).

:func:`targeted_uap_matrix` (:mod:`.targeted`) crafts one targeted UAP per
class and gives the ``K x K`` matrix of success rates (source x target).

Per-input attacks (:mod:`.per_input`), returning ``x_adv`` in ``[0, 1]``
with ``||x_adv - x||_p <= eps``: :func:`fgsm` and :func:`pgd`.

:data:`ATTACKS` maps the names the programs accept (``attack.py --attack``)
to these functions; :data:`UNIVERSAL_ATTACKS` and :data:`PER_INPUT_ATTACKS`
split them by return type.  Every entry takes
``(apply_fn, params, x, y, *, eps, norm, key, ...)``; ``key`` is required
wherever the attack draws random numbers.

Every loop is compiled once: the inner steps are jitted with the model
function, the norm and the loop lengths static, and ``eps``, step sizes and
keys traced, so that sweeps over epochs, passes and budgets reuse one
compiled program (as long as the caller passes the same ``apply_fn`` object).

>>> sorted(ATTACKS), UNIVERSAL_ATTACKS, NORMS
(['deepfool_uap', 'fgsm', 'pgd', 'sga_uap', 'sgd_uap', 'sgd_uap_restarts', 'sv_uap'], ('sgd_uap', 'sv_uap', 'deepfool_uap', 'sga_uap', 'sgd_uap_restarts'), ('linf', 'l2'))
"""

from __future__ import annotations

from typing import Any, Callable, Dict

from jacuap.attacks.balls import (
    NORMS,
    ascent_direction,
    check_norm,
    perturbation_norm,
    project,
    random_in_ball,
    scale_to_budget,
)
from jacuap.attacks.deepfool_uap import AGGREGATES, INNER_ATTACKS, deepfool_uap, deepfool_uap_pass
from jacuap.attacks.per_input import fgsm, pgd
from jacuap.attacks.restarts import best_of_restarts, restart_score, sgd_uap_restarts
from jacuap.attacks.result import UAPResult
from jacuap.attacks.sga import sga_uap, sga_uap_epoch
from jacuap.attacks.sgd_uap import default_sgd_step_size, sgd_uap, sgd_uap_epoch, uap_objective
from jacuap.attacks.sv_uap import singular_vector_uap
from jacuap.attacks.targeted import TargetedUAPs, class_transfer_matrix, targeted_uap_matrix
from jacuap.models.features import layer_features_fn

__all__ = [
    "UAPResult",
    "ATTACKS",
    "UNIVERSAL_ATTACKS",
    "PER_INPUT_ATTACKS",
    "NORMS",
    "INNER_ATTACKS",
    "AGGREGATES",
    "sgd_uap",
    "singular_vector_uap",
    "deepfool_uap",
    "sga_uap",
    "sgd_uap_restarts",
    "best_of_restarts",
    "restart_score",
    "targeted_uap_matrix",
    "TargetedUAPs",
    "class_transfer_matrix",
    "sga_uap_epoch",
    "fgsm",
    "pgd",
    "project",
    "ascent_direction",
    "scale_to_budget",
    "random_in_ball",
    "perturbation_norm",
    "check_norm",
    "default_sgd_step_size",
    "uap_objective",
    "sgd_uap_epoch",
    "deepfool_uap_pass",
    "layer_features_fn",
]

# The one registry of attack names (attack.py, jacuap.attack_run, benchmarks).
ATTACKS: Dict[str, Callable[..., Any]] = {
    "sgd_uap": sgd_uap,
    "sv_uap": singular_vector_uap,
    "deepfool_uap": deepfool_uap,
    "sga_uap": sga_uap,
    "sgd_uap_restarts": sgd_uap_restarts,
    "pgd": pgd,
    "fgsm": fgsm,
}

# Return a UAPResult (v of shape S).
UNIVERSAL_ATTACKS = ("sgd_uap", "sv_uap", "deepfool_uap", "sga_uap", "sgd_uap_restarts")
# Return x_adv of shape (B, *S).
PER_INPUT_ATTACKS = ("pgd", "fgsm")
