"""Adversarial attacks: the UAP zoo, two per-input attacks, and the registry that dispatches on them.

Conventions.  ``apply_fn(params, x) -> logits`` maps a batch ``x`` of shape
``(B, *S)`` (pixels in ``[0, 1]``) to ``(B, K)`` logits, each example
independently.  A universal adversarial perturbation (UAP) ``v`` has the
shape ``S`` of ONE input and is added to every input; the model always sees
``clip(x + v, 0, 1)``.  The budget is ``||v||_p <= eps`` with
``p in {inf, 2}`` (:data:`NORMS`), in pixel units (:mod:`.balls`).

Universal attacks, each one module, each returning :class:`UAPResult`
``(v, history)`` and taking ``(apply_fn, params, x, y, *, eps, norm, key, ...)``:

========================  ==========================================================  =======================
attack                    objective                                                   reads
========================  ==========================================================  =======================
``sgd_uap``               ``max mean min(l(f(x+v), y), beta)``, ``l`` = CE or margin  data, labels
``sga_uap``               the same, stochastic gradient aggregation                   data, labels
``sgd_uap_restarts``      the best of R SGD-UAP runs from random starts               data, labels
``deepfool_uap``          DeepFool steps aggregated over the unfooled inputs          data
``sv_uap``                ``eps`` times the top singular vector of ``J_X``            data
``layer_max``             ``max mean ||a(x+v)||^2`` for one hidden layer              data
``cosine_uap``            ``min mean cos(f(x+v), f(x))``                              data or a prior
``fg_uap``                ``min mean cos(a(x+v), a(x))``, ``a`` the penultimate layer  data
``gd_uap``                ``max mean sum_l log ||f_l(x+v)||``                         a prior (data-free)
``gap_uap``               a generator ``G(z) -> v``, ``min log CE(f(x+v), ll(x))``    data
========================  ==========================================================  =======================

(:mod:`.objectives` holds the losses, :mod:`.epochs` the epoch loop they
share, :mod:`.priors` the data-free inputs.)  :func:`targeted_uap_matrix`
(:mod:`.targeted`) crafts one targeted UAP per class and gives the ``K x K``
matrix of success rates.  Per-input attacks (:mod:`.per_input`), returning
``x_adv``: :func:`fgsm` and :func:`pgd`.

:data:`ATTACKS` (:mod:`.registry`) maps each name to its
:class:`AttackSpec`: what it reads, its norms, targeted form, layers,
settings and gradient budget.  A spec is callable as the attack itself, and
:func:`craft` dispatches a :class:`Crafting` to it.  Adding an attack is one
module ending in one ``register(AttackSpec(...))`` line, and one import
line below.

Every loop is compiled once: the inner steps are jitted with the model
function, the norm and the loop lengths static, and ``eps``, step sizes and
keys traced, so that sweeps over epochs, passes and budgets reuse one
compiled program (as long as the caller passes the same ``apply_fn`` object).

>>> universal_names()[:5], NORMS
(('sgd_uap', 'sga_uap', 'sgd_uap_restarts', 'deepfool_uap', 'sv_uap'), ('linf', 'l2'))
"""

from __future__ import annotations


from jacuap.attacks.balls import (
    NORMS,
    ascent_direction,
    check_norm,
    perturbation_norm,
    project,
    random_in_ball,
    scale_to_budget,
)
from jacuap.attacks.registry import (ATTACKS, AttackSpec, Crafting, LayerError, Layers, craft, per_input_names, register,
                                     universal_names)
from jacuap.attacks.result import UAPResult

# The zoo: importing a module registers its attack (registration order is the listing order).
from jacuap.attacks.sgd_uap import default_sgd_step_size, sgd_uap, sgd_uap_epoch, uap_objective
from jacuap.attacks.sga import sga_uap, sga_uap_epoch
from jacuap.attacks.restarts import best_of_restarts, restart_score, sgd_uap_restarts
from jacuap.attacks.deepfool_uap import AGGREGATES, INNER_ATTACKS, deepfool_uap, deepfool_uap_pass
from jacuap.attacks.sv_uap import singular_vector_uap
from jacuap.attacks.layer_max import layer_max_uap
from jacuap.attacks.cosine_uap import cosine_uap
from jacuap.attacks.fg_uap import dominance, feature_gathering, fg_uap
from jacuap.attacks.gd_uap import gd_uap
from jacuap.attacks.gap_uap import gap_uap
from jacuap.attacks.per_input import fgsm, pgd

from jacuap.attacks.objectives import LABEL_LOSSES, LOSSES
from jacuap.attacks.priors import DATA_FREE_PRIORS, PRIORS, prior_inputs
from jacuap.attacks.targeted import TargetedUAPs, class_transfer_matrix, targeted_uap_matrix
from jacuap.models.features import layer_features_fn, layers_features_fn

__all__ = [
    "UAPResult",
    "ATTACKS",
    "AttackSpec",
    "Crafting",
    "Layers",
    "LayerError",
    "register",
    "craft",
    "universal_names",
    "per_input_names",
    "NORMS",
    "LOSSES",
    "LABEL_LOSSES",
    "PRIORS",
    "DATA_FREE_PRIORS",
    "prior_inputs",
    "layer_max_uap",
    "cosine_uap",
    "fg_uap",
    "feature_gathering",
    "dominance",
    "gd_uap",
    "gap_uap",
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
    "layers_features_fn",
]
