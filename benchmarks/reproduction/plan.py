"""What the sweep trains, in what order, and how each defence's strength is chosen.

The sweep is data (:func:`full_plan`, :func:`quick_plan`): per dataset, the
architectures with their schedules, the methods with their strength grids,
the evaluation budgets.  It runs in stages, each ending in files under
``results/<dataset>/`` so that a later run, on any machine, starts where the
last one stopped:

1. **schedule** (``schedule.json``): per architecture, the undefended model
   (``jr_lambda=0``, seed 0) trained for ``E`` and ``2E`` epochs from
   ``Arch.epochs``, doubling ``E`` until the two validation accuracies differ
   by less than ``Plan.converged_points`` (0.3 points) or ``E`` reaches
   ``Arch.max_epochs``.  The cosine schedule spans the whole run, so each
   count is its own run, not a prefix of a longer one.
2. **grid** (seed 0): every method at every strength of its grid, each
   evaluated in full (a model record).
3. **selection** (``selection.json``), from the validation split only:
   JR's ``lambda*`` is the largest lambda whose validation accuracy is within
   ``Plan.accuracy_tolerance`` (1 point) of lambda 0's; every other defence
   takes the strength with the lowest validation SGD-UAP UER among those
   within the same tolerance (the most accurate one when none is).
4. **seeds**: ``lambda = 0``, ``lambda*`` and every defence at its chosen
   strength get ``Plan.claim_seeds`` seeds (the claims are decided there).

Model ids and record paths are :mod:`.records`'.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from benchmarks.reproduction import records


@dataclasses.dataclass(frozen=True)
class Arch:
    """An architecture and its training schedule (``epochs`` is the first of the schedule search).

    ``suite`` names the attack suite of its models' evaluation ("" = the plan's).
    """
    name: str
    epochs: int
    max_epochs: int
    overrides: Tuple[Tuple[str, Any], ...] = ()
    suite: str = ""


# The CNN's evaluation drops DeepFool-UAP, the standard suite's slowest member after SGA (about a quarter of a
# CNN model's attack time), on evidence: before the cut it was never the worst case of any record and budget,
# chosen by UER or by fooling rate (RESULTS.md, "One cut, on evidence", has the counts).  Records say which
# suite made them (test.suite); a model whose suite run had started under another suite finishes under it.
CNN_SUITE = "standard_without_deepfool"  # jacuap.evaluation.suite.SUITES


@dataclasses.dataclass(frozen=True)
class Method:
    """A training method: the config field its strength sets, its grid, and its fixed settings."""
    name: str
    field: str
    grid: Tuple[float, ...]
    overrides: Tuple[Tuple[str, Any], ...] = ()

    def config(self, strength: float) -> Dict[str, Any]:
        """The train.py overrides of this method at ``strength``."""
        return {**dict(self.overrides), self.field: float(strength)}


# The methods of the defences issue, one strength knob each.  Adversarial
# training's knob is its l_inf budget (TRADES': its KL weight beta at eps 0.1).
METHODS: Dict[str, Method] = {m.name: m for m in (
    Method("jr", "jr_lambda", (0.0, 0.01, 0.05, 0.1, 0.5, 1.0), (("jr_num_proj", 1),)),
    # sigma_max(J_B)^2 / |B| <= mean ||J_i||_F^2: the same lambda penalises less than Frobenius JR.
    Method("stacked_spectral", "jr_lambda", (0.1, 1.0), (("jr_mode", "stacked_spectral"), ("jr_num_proj", None))),
    Method("uat", "adv_eps", (0.05, 0.1), (("jr_lambda", 0.0), ("adv_training", "uat"))),
    Method("cw_uat", "adv_eps", (0.05, 0.1), (("jr_lambda", 0.0), ("adv_training", "cw_uat"))),
    Method("sat", "adv_eps", (0.05, 0.1), (("jr_lambda", 0.0), ("adv_training", "sat"), ("adv_steps", 3))),
    Method("pgd", "adv_eps", (0.05, 0.1), (("jr_lambda", 0.0), ("adv_training", "pgd"), ("adv_steps", 3))),
    Method("trades", "trades_beta", (1.0, 6.0),
           (("jr_lambda", 0.0), ("adv_training", "trades"), ("adv_eps", 0.1), ("adv_steps", 5))),
)}


@dataclasses.dataclass(frozen=True)
class Plan:
    """One dataset's sweep."""
    dataset: str
    archs: Tuple[Arch, ...]
    methods: Tuple[str, ...]
    grids: Tuple[Tuple[str, Tuple[float, ...]], ...] = ()  # per-method grid overrides
    claim_seeds: Tuple[int, ...] = (0, 1, 2)
    num_validation: int = 5000
    suite: str = "standard"
    worst_case_eps: Tuple[float, ...] = (0.05, 0.1, 0.2)
    sgd_eps: Tuple[float, ...] = (0.02, 0.05, 0.075, 0.1, 0.125, 0.15, 0.2, 0.25, 0.3)
    selection_eps: float = 0.1
    num_craft: int = 5000
    num_eval: int = 10000
    num_metrics: int = 1000
    accuracy_tolerance: float = 1.0  # points
    converged_points: float = 0.3

    def suite_of(self, arch: Arch) -> str:
        """The attack suite ``arch``'s models are evaluated with."""
        return arch.suite or self.suite

    def grid(self, method: str) -> Tuple[float, ...]:
        """The strengths ``method`` is trained at in the grid stage."""
        return dict(self.grids).get(method, METHODS[method].grid)


def full_plan(dataset: str) -> Plan:
    """The sweep RESULTS.md reports: MLP and CNN (ResNet on CIFAR-10), every method."""
    if dataset == "cifar10":
        archs = (Arch("resnet", 30, 120, (("optimizer", "sgd"), ("learning_rate", 0.1))),)
        return Plan(dataset, archs, tuple(METHODS), worst_case_eps=(2 / 255, 4 / 255, 8 / 255),
                    sgd_eps=(1 / 255, 2 / 255, 4 / 255, 6 / 255, 8 / 255, 12 / 255, 16 / 255),
                    selection_eps=4 / 255,
                    grids=tuple((m, (2 / 255, 8 / 255)) for m in ("uat", "cw_uat", "sat", "pgd")))
    return Plan(dataset, (Arch("mlp", 10, 80), Arch("cnn", 8, 64, suite=CNN_SUITE)), tuple(METHODS))


def quick_plan(dataset: str = "digits") -> Plan:
    """The whole pipeline at toy sizes (the end-to-end test): an MLP, three methods, two seeds."""
    return Plan(dataset, (Arch("mlp", 4, 8),), ("jr", "uat"),
                grids=(("jr", (0.0, 0.1, 1.0)), ("uat", (0.1,))), claim_seeds=(0, 1), num_validation=200,
                suite="quick", worst_case_eps=(0.1,), sgd_eps=(0.05, 0.1, 0.2), selection_eps=0.1,
                num_craft=200, num_eval=300, num_metrics=60, converged_points=100.0)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One model of the sweep."""
    dataset: str
    arch: Arch
    method: str
    strength: float
    seed: int
    epochs: int

    @property
    def id(self) -> str:
        return records.model_id(self.dataset, self.arch.name, self.method, self.strength, self.seed)

    def config_overrides(self, plan: Plan) -> Dict[str, Any]:
        """Every train.py field this model sets (the rest are jacuap/configs/default.py's)."""
        return {"dataset": self.dataset, "model": self.arch.name, "num_epochs": self.epochs, "seed": self.seed,
                "num_validation": plan.num_validation, **dict(self.arch.overrides),
                **METHODS[self.method].config(self.strength)}


def schedule_runs(plan: Plan, arch: Arch, done: Mapping[int, float]) -> Tuple[Optional[int], List[int]]:
    """``(chosen epochs or None, epoch counts still to train)`` given ``done`` ({epochs: validation accuracy}).

    >>> schedule_runs(quick_plan(), Arch("mlp", 4, 16), {})
    (None, [4, 8])
    >>> schedule_runs(Plan("d", (), ()), Arch("mlp", 4, 16), {4: 0.900, 8: 0.910, 16: 0.912})
    (8, [])
    >>> schedule_runs(Plan("d", (), ()), Arch("mlp", 4, 8), {4: 0.90, 8: 0.92})
    (8, [])
    """
    e = arch.epochs
    while True:
        missing = [n for n in (e, 2 * e) if n not in done and n <= arch.max_epochs]
        if missing:
            return None, missing
        if 2 * e > arch.max_epochs:
            return e, []  # the cap: RESULTS.md says when the schedule was capped rather than converged
        if 100 * abs(done[2 * e] - done[e]) < plan.converged_points:
            return e, []
        e *= 2


def choose(plan: Plan, method: str, candidates: Sequence[Mapping[str, Any]], base_accuracy: float) -> Dict[str, Any]:
    """The selection rule of ``method`` over ``candidates`` ({strength, validation_accuracy, validation_uer}).

    >>> c = [dict(strength=s, validation_accuracy=a, validation_uer=u)
    ...      for s, a, u in ((0.01, 0.90, 0.40), (0.1, 0.894, 0.30), (1.0, 0.85, 0.20))]
    >>> choose(Plan("d", (), ()), "jr", c, 0.90)["chosen"]
    0.1
    """
    tolerance = plan.accuracy_tolerance / 100
    within = [c for c in candidates if c["validation_accuracy"] >= base_accuracy - tolerance]
    if method == "jr":
        rule = (f"the largest lambda whose validation accuracy is within {plan.accuracy_tolerance:g} point of "
                f"lambda 0's ({base_accuracy:.4f})")
        positive = [c for c in within if c["strength"] > 0]
        pick = max(positive, key=lambda c: c["strength"]) if positive else None
    else:
        rule = (f"the lowest validation SGD-UAP UER (eps {plan.selection_eps:g}) among the strengths within "
                f"{plan.accuracy_tolerance:g} point of lambda 0's validation accuracy ({base_accuracy:.4f}); "
                f"the most accurate when none is")
        pick = min(within, key=lambda c: (c["validation_uer"], -c["validation_accuracy"])) if within else None
    if pick is None:
        pick = max(candidates, key=lambda c: c["validation_accuracy"])
        rule += " (none was within: the most accurate taken)"
    return {"chosen": float(pick["strength"]), "rule": rule, "candidates": [dict(c) for c in candidates]}


def grid_models(plan: Plan, arch: Arch, epochs: int) -> List[ModelSpec]:
    """Stage 2: seed 0 of every (method, strength); the undefended model first."""
    return [ModelSpec(plan.dataset, arch, m, s, 0, epochs) for m in plan.methods for s in plan.grid(m)]


def seed_models(plan: Plan, arch: Arch, epochs: int, chosen: Mapping[str, float]) -> List[ModelSpec]:
    """Stage 4: the claims' extra seeds: lambda 0, lambda*, each defence at its chosen strength."""
    groups = [("jr", 0.0)] + [(m, s) for m, s in chosen.items()]
    return [ModelSpec(plan.dataset, arch, m, s, seed, epochs) for seed in plan.claim_seeds if seed != 0
            for m, s in groups]
