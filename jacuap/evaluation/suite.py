"""Universal-robustness evaluation: a fixed attack ensemble, its worst case, targeted matrices, brought UAPs.

``attack.py --suite=standard`` (:func:`jacuap.evaluation.run_attacks` with
``AttackRequest(suite="standard")``) runs every member of :data:`SUITES`
``["standard"]`` at every budget: each (attack, seed) crafts one UAP on the
crafting split, is evaluated on the held-out split, and records its UER on
BOTH (``craft_uer``, ``uer``).  The **worst case** of a budget
(:func:`worst_case`) is the UAP with the highest crafting-split UER (the
attacker never sees evaluation inputs), reported with its evaluation-split
UER and fooling rate.  Every setting of a suite lives in :data:`SUITES`, so two
users of ``--suite=standard`` run the same computation; only the set sizes
(``--num_craft``, ``--num_eval``) and the data seed are theirs, and both are
recorded.

A member's seed ``s`` is the row's seed ``request.seed + s`` (its file name,
``<attack>_<norm>_eps<eps>_seed<seed>``, and the PRNG key of its attack); the
crafting and evaluation sets are drawn with ``request.seed`` for every member.

DeepFool-UAP runs with minibatches of 32, not the library's 128: on the
Fashion-MNIST CNN (1,000 crafting inputs, one pass, l_inf eps 0.2,
``benchmarks/deepfool_vs_art.py``) batch 32 reached UER 0.42 in 8.4 s where
128 reached 0.27 in 12.2 s and ART's per-sample ``UniversalPerturbation``
0.21 in 305 s; and at most 3 passes: on the same model (5,000 inputs, eps
0.1) passes 2-5 moved the crafting fooling rate from 0.200 to 0.195.

Gradient budget (:func:`gradient_evaluations`, per budget, counted in
per-input backward passes, ``N`` crafting inputs, ``K`` classes, ``E`` epochs):
``sgd_uap`` and ``layer_max`` ``E N``; ``sga_uap`` ``4 E N`` (4 inner passes);
``sgd_uap_restarts`` ``R E N`` (plus ``R N`` forward passes to pick the best);
``deepfool_uap`` at most ``P 20 K N`` (``P`` passes, 20 DeepFool iterations of
``K`` class gradients; it stops early); ``sv_uap`` at most ``2 * 50 N`` (50
power iterations of a JVP and a VJP, computed once and shared by the budgets);
the targeted matrix ``K E N``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Mapping, Sequence, Tuple

__all__ = [
    "Member", "Suite", "SUITES", "WORST_CASE_BY", "suite_tasks", "gradient_evaluations", "suite_record",
    "worst_case"
]


@dataclasses.dataclass(frozen=True)
class Member:
    """One attack of a suite: run once per seed offset in ``seeds``, with ``settings`` (its spec's settings).

    ``label`` names the rows of a variant (``"sgd_uap_margin"``: SGD-UAP with
    the margin loss) so that two members of one attack keep apart; default:
    the attack's name.
    """

    attack: str
    seeds: Tuple[int, ...] = (0,)
    settings: Tuple[Tuple[str, Any], ...] = ()
    label: str = ""

    @property
    def name(self) -> str:
        return self.label or self.attack


@dataclasses.dataclass(frozen=True)
class Suite:
    """A fixed ensemble: its members, and the epochs of its targeted matrix (0 = no matrix)."""

    name: str
    members: Tuple[Member, ...]
    targeted_epochs: int = 0

SUITES: Dict[str, Suite] = {
    "standard": Suite("standard", (
        Member("sgd_uap", (0, 1), (("num_epochs", 5),)),
        Member("sga_uap", (0, 1), (("num_epochs", 5),)),
        Member("sgd_uap_restarts", (0,), (("num_epochs", 5), ("restarts", 4))),
        Member("deepfool_uap", (0,), (("max_passes", 3), ("batch_size", 32))),
        Member("sv_uap", (0,)),
    ), targeted_epochs=5),
    "quick": Suite("quick", (
        Member("sgd_uap", (0, 1), (("num_epochs", 1),)),
        Member("sga_uap", (0,), (("num_epochs", 1),)),
        Member("sgd_uap_restarts", (0,), (("num_epochs", 1), ("restarts", 2))),
        Member("deepfool_uap", (0,), (("max_passes", 1), ("batch_size", 32))),
        Member("sv_uap", (0,)),
    ), targeted_epochs=1),
    # The standard ensemble, the margin-loss variants and the zoo: data-free (GD-UAP, no data), proxy-data
    # (Cosine-UAP on the range prior), label-free on data (Cosine-UAP, FG-UAP), generative (GAP).
    "strong": Suite("strong", (
        Member("sgd_uap", (0, 1), (("num_epochs", 5),)),
        Member("sgd_uap", (0, 1), (("num_epochs", 5), ("loss", "margin")), label="sgd_uap_margin"),
        Member("sga_uap", (0,), (("num_epochs", 5),)),
        Member("sga_uap", (0,), (("num_epochs", 5), ("loss", "margin")), label="sga_uap_margin"),
        Member("sgd_uap_restarts", (0,), (("num_epochs", 5), ("restarts", 4), ("loss", "margin")),
               label="sgd_uap_restarts_margin"),
        Member("deepfool_uap", (0,), (("max_passes", 3), ("batch_size", 32))),
        Member("sv_uap", (0,)),
        Member("cosine_uap", (0,), (("num_epochs", 5),)),
        Member("cosine_uap", (0,), (("num_epochs", 5), ("prior", "range")), label="cosine_uap_range"),
        Member("fg_uap", (0,), (("num_epochs", 5),)),
        Member("gd_uap", (0,), (("num_epochs", 5), ("prior", "none"))),
        Member("gap_uap", (0,), (("num_epochs", 10), ("batch_size", 32))),
    ), targeted_epochs=0),
}

# The standard suite without DeepFool-UAP, its slowest member after SGA that has not yet been a worst case
# in the reproduction's records: what the reproduction's CNN models are evaluated with.
SUITES["standard_without_deepfool"] = Suite(
    "standard_without_deepfool", tuple(m for m in SUITES["standard"].members if m.attack != "deepfool_uap"),
    targeted_epochs=SUITES["standard"].targeted_epochs)

# Every attack and variant of the zoo once, with one seed (the request's): what benchmarks/attack_zoo.py runs
# under several seeds to rank the attacks.
SUITES["zoo"] = Suite("zoo", (
    Member("sgd_uap", (0,), (("num_epochs", 5),)),
    Member("sgd_uap", (0,), (("num_epochs", 5), ("loss", "margin")), label="sgd_uap_margin"),
    Member("sga_uap", (0,), (("num_epochs", 5),)),
    Member("sga_uap", (0,), (("num_epochs", 5), ("loss", "margin")), label="sga_uap_margin"),
    Member("sgd_uap_restarts", (0,), (("num_epochs", 5), ("restarts", 4))),
    Member("sgd_uap_restarts", (0,), (("num_epochs", 5), ("restarts", 4), ("loss", "margin")),
           label="sgd_uap_restarts_margin"),
    Member("deepfool_uap", (0,), (("max_passes", 3), ("batch_size", 32))),
    Member("sv_uap", (0,)),
    Member("layer_max", (0,), (("num_epochs", 5),)),
    Member("cosine_uap", (0,), (("num_epochs", 5),)),
    Member("cosine_uap", (0,), (("num_epochs", 5), ("prior", "range")), label="cosine_uap_range"),
    Member("fg_uap", (0,), (("num_epochs", 5),)),
    Member("gd_uap", (0,), (("num_epochs", 5), ("prior", "none"))),
    Member("gd_uap", (0,), (("num_epochs", 5), ("prior", "range")), label="gd_uap_range"),
    Member("gd_uap", (0,), (("num_epochs", 5), ("prior", "data")), label="gd_uap_data"),
    Member("gap_uap", (0,), (("num_epochs", 10), ("batch_size", 32))),
))


def suite_tasks(name: str, seed: int) -> List[Tuple[str, int, Dict[str, Any]]]:
    """``(row name, row seed, settings)`` of every member of suite ``name``, member-major.

    A labelled variant's settings carry its attack under ``"attack"``.

    >>> [(a, s) for a, s, _ in suite_tasks("quick", 3)][:3]
    [('sgd_uap', 3), ('sgd_uap', 4), ('sga_uap', 3)]
    >>> suite_tasks("strong", 0)[2]
    ('sgd_uap_margin', 0, {'num_epochs': 5, 'loss': 'margin', 'attack': 'sgd_uap'})
    """
    return [(m.name, seed + s, {**dict(m.settings), **({"attack": m.attack} if m.label else {})})
            for m in SUITES[name].members for s in m.seeds]


def gradient_evaluations(attack: str, settings: Mapping[str, Any], num_craft: int, num_classes: int) -> int:
    """Upper bound on the per-input backward passes of one budget of ``attack`` (its spec's count).

    ``settings`` are a member's; the spec's defaults fill the rest.

    >>> gradient_evaluations("sgd_uap_restarts", {"num_epochs": 5, "restarts": 4}, 1000, 10)
    20000
    """
    from jacuap import attacks  # JAX: the suites' names and members are read before it loads (attack.py --help)

    n, k = int(num_craft), int(num_classes)
    if attack == "targeted":
        return k * int(settings.get("num_epochs", 5)) * n
    spec = attacks.ATTACKS[attack]
    return int(spec.gradient_evaluations(spec.resolve({k_: v for k_, v in settings.items() if k_ != "attack"}), n, k))


def suite_record(name: str, num_craft: int, num_classes: int) -> Dict[str, Any]:
    """What ``results.json["suite"]`` holds: the members, their settings and gradient budgets."""
    suite = SUITES[name]
    members = [{"attack": m.attack, **({"label": m.label} if m.label else {}), "seeds": list(m.seeds),
                "settings": dict(m.settings),
                "gradient_evaluations_per_budget": gradient_evaluations(m.attack, dict(m.settings), num_craft,
                                                                        num_classes) * len(m.seeds)}
               for m in suite.members]
    if suite.targeted_epochs:
        members.append({"attack": "targeted", "seeds": [0], "settings": {"num_epochs": suite.targeted_epochs},
                        "gradient_evaluations_per_budget": gradient_evaluations(
                            "targeted", {"num_epochs": suite.targeted_epochs}, num_craft, num_classes)})
    return {"name": name, "members": members,
            "gradient_evaluations_per_budget": sum(m["gradient_evaluations_per_budget"] for m in members)}


#: The metrics a budget's worst case can be chosen by (on the crafting split): results.json keys.
WORST_CASE_BY = {"uer": "worst_case", "fooling_rate": "worst_case_by_fooling_rate"}


def worst_case(rows: Sequence[Mapping[str, Any]], eps: Sequence[float], by: str = "uer") -> List[Dict[str, Any]]:
    """Per budget, the universal row with the highest crafting-split ``by`` (the first on a tie), or nothing.

    ``by="uer"`` ranks by ``craft_uer``, ``by="fooling_rate"`` by
    ``craft_fooling_rate``: the attacker never sees evaluation inputs.  The
    chosen row's ``uer``/``fooling_rate`` are the evaluation split's.

    >>> rows = [dict(attack="a", seed=0, eps=0.1, universal=True, craft_uer=0.5, craft_fooling_rate=0.45,
    ...              uer=0.4, fooling_rate=0.3, file="a.npy"),
    ...         dict(attack="b", seed=0, eps=0.1, universal=True, craft_uer=0.6, craft_fooling_rate=0.4,
    ...              uer=0.2, fooling_rate=0.1, file="b.npy")]
    >>> [(w["attack"], w["uer"]) for w in worst_case(rows, [0.1])]
    [('b', 0.2)]
    >>> [w["attack"] for w in worst_case(rows, [0.1], by="fooling_rate")]
    ['a']
    """
    if by not in WORST_CASE_BY:
        raise ValueError(f"by must be one of {', '.join(WORST_CASE_BY)}, got {by!r}")
    score = "craft_uer" if by == "uer" else "craft_fooling_rate"
    out = []
    for e in eps:
        best = None
        for row in rows:
            if row.get("universal") and row.get("eps") == e and row.get(score) is not None:
                if best is None or row[score] > best[score]:
                    best = row
        if best is not None:
            out.append({"eps": e, "by": by, **{k: best.get(k) for k in (
                "attack", "seed", "uer", "fooling_rate", "craft_uer", "craft_fooling_rate", "file",
                "source_workdir")}})
    return out
