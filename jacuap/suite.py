"""Universal-robustness evaluation: a fixed attack ensemble, its worst case, targeted matrices, brought UAPs.

``attack.py --suite=standard`` (:func:`jacuap.attack_run.run_attacks` with
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
import os
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import jax
import numpy as np

from jacuap import attack_store, attacks, io, metrics, models
from jacuap.errors import AttackError

__all__ = ["Member", "Suite", "SUITES", "WORST_CASE_BY", "suite_tasks", "gradient_evaluations", "suite_record",
           "worst_case",
           "targeted_row", "targeted_rows", "plot_targeted", "targeted_figure_name", "load_uap_file", "layer_names",
           "check_layer", "print_extras"]


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


def targeted_figure_name(eps: float) -> str:
    """The heat map of one budget's targeted matrix.

    >>> targeted_figure_name(0.1)
    'targeted_eps0.1.png'
    """
    return f"targeted_eps{attack_store.canonical_eps(eps):.{attack_store.EPS_DIGITS}g}.png"


def targeted_row(matrix: np.ndarray, success: np.ndarray, clean: np.ndarray, class_names: Sequence[str],
                 **fields: Any) -> Dict[str, Any]:
    """The row of one targeted matrix: ``matrix[s][t]`` (source s, target t; diagonal null), by class name."""
    return {**fields, "class_names": list(class_names), "matrix": np.asarray(matrix).tolist(),
            "success": {str(c): float(r) for c, r in zip(class_names, success)},
            "clean": np.asarray(clean).tolist(), "figure": targeted_figure_name(fields["eps"])}


def targeted_rows(request: Any, model: Tuple[Any, Any], crafter: Tuple[Any, Any], sets: Sequence[Any],
                  class_names: Sequence[Any], epochs: int, source: Mapping[str, Any]) -> List[Dict[str, Any]]:
    """One targeted matrix per budget of ``request`` (:func:`jacuap.attacks.targeted_uap_matrix`), resumable.

    The ``K`` targeted SGD-UAPs (``epochs`` epochs) are crafted with
    ``crafter`` on the crafting set and evaluated with ``model`` on the
    evaluation set; row ``targeted_<norm>_eps<eps>_seed<seed>`` (its ``.npy``
    holds the ``(K, *S)`` UAPs), figure ``targeted_eps<eps>.png``.  Budget
    ``b`` is keyed by ``fold_in(PRNGKey(seed), 2**20 + b)``.
    """
    apply_fn, params = model
    x_craft, y_craft, x_eval, y_eval = sets
    k = len(class_names)
    names = [str(c) for c in class_names]
    out: List[Dict[str, Any]] = []
    clean_pred = None
    for b, eps in enumerate(request.eps):
        stem = attack_store.stem("targeted", request.norm, eps, request.seed)
        figure = os.path.join(request.out, targeted_figure_name(eps))
        row = attack_store.load_row(request.out, stem, {"attack": "targeted", "norm": request.norm, "eps": eps,
                                                        "seed": request.seed})
        if row is None:
            attack_store.remove_results(request.out)
            start = time.time()
            key = jax.random.fold_in(jax.random.PRNGKey(request.seed), 2**20 + b)
            r = attacks.targeted_uap_matrix(crafter[0], crafter[1], x_craft, y_craft, x_craft[:1], y_craft[:1],
                                            eps=eps, key=key, norm=request.norm, num_epochs=epochs)
            uaps = np.asarray(r.uaps)[:k]
            if clean_pred is None:
                clean_pred = metrics.predict(apply_fn, params, x_eval)
            preds = np.stack([metrics.predict(apply_fn, params, np.clip(x_eval + u, 0.0, 1.0)) for u in uaps])
            matrix = attacks.class_transfer_matrix(y_eval, preds, k)
            np.fill_diagonal(matrix, np.nan)
            success = [float(np.mean(preds[t][y_eval != t] == t)) if np.any(y_eval != t) else float("nan")
                       for t in range(len(uaps))]
            row = targeted_row(matrix, success, attacks.class_transfer_matrix(y_eval, clean_pred, k), names,
                               attack="targeted", norm=request.norm, eps=eps, seed=request.seed, universal=False,
                               file=f"{stem}.npy", num_epochs=int(epochs), num_craft=len(x_craft),
                               craft_split=request.craft_split, seconds=time.time() - start, **source)
            attack_store.save_row(request.out, stem, row, uaps)
            row = attack_store.finite_or_null(row)
            if os.path.exists(figure):
                os.unlink(figure)
        if not os.path.exists(figure):
            plot_targeted(np.array(row["matrix"], dtype=float), names,
                          f"targeted UAP success, {request.norm} eps={eps:g} (row: source, column: target)", figure)
        out.append(row)
    return out


def plot_targeted(matrix: np.ndarray, class_names: Sequence[str], title: str, path: str) -> None:
    """A heat map of a targeted matrix (rows: source class, columns: target class; the diagonal blank)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(class_names)
    fig, ax = plt.subplots(figsize=(1.0 + 0.45 * k, 0.8 + 0.45 * k))
    try:
        image = ax.imshow(np.ma.masked_invalid(np.asarray(matrix, float)), vmin=0, vmax=1, cmap="viridis")
        ax.set_xticks(range(k), [str(c) for c in class_names], rotation=90, fontsize=7)
        ax.set_yticks(range(k), [str(c) for c in class_names], fontsize=7)
        ax.set_xlabel("target class")
        ax.set_ylabel("source class")
        ax.set_title(title, fontsize=8)
        fig.colorbar(image, ax=ax, fraction=0.046)
        fig.tight_layout()
        io.save_figure_atomic(fig, path, dpi=80)
    finally:
        plt.close(fig)


def load_uap_file(path: str, shape: Sequence[int], norm: str, eps: float) -> np.ndarray:
    """The perturbation in ``path`` (``.npy``), checked: one input's ``shape``, finite, ``||v|| <= eps`` (1e-6 rel.)."""
    try:
        v = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise AttackError(f"--uap_file {path} cannot be read as a .npy array ({type(exc).__name__})") from None
    if tuple(v.shape) != tuple(shape):
        raise AttackError(f"--uap_file {path} has shape {tuple(v.shape)}; the model's inputs have shape {tuple(shape)}")
    if not np.issubdtype(v.dtype, np.floating) or not np.all(np.isfinite(v)):
        raise AttackError(f"--uap_file {path} must hold finite floating-point numbers, got {v.dtype}")
    size = float(np.max(np.abs(v))) if norm == "linf" else float(np.linalg.norm(v))
    if size > eps * (1 + 1e-6):
        raise AttackError(f"--uap_file {path} has {norm} norm {size:.6g} > eps {eps:g}; "
                          f"give a budget at least its norm (--eps)")
    return v.astype(np.float32)


def layer_names(model: Any, params: Any, x: Any) -> List[str]:
    """The ``/``-separated names of ``model``'s submodules (what ``--layer`` accepts), in call order."""
    return models.layer_names(model, params, x)


def check_layer(model: Any, params: Any, x: Any, layer: str) -> None:
    """AttackError (one line, listing the valid names) unless ``layer`` names a submodule of ``model``."""
    names = layer_names(model, params, x)
    if layer.strip("/") not in names:
        raise AttackError(f"no layer {layer!r} in the model; choose from {', '.join(names)}")


def _name(class_names: Optional[Sequence[str]], k: Any) -> str:
    return str(class_names[k]) if class_names and isinstance(k, int) and 0 <= k < len(class_names) else str(k)


def print_extras(results: Mapping[str, Any]) -> None:
    """Prints the worst case of each budget and each targeted matrix's success per target class (by name)."""
    for by, key in WORST_CASE_BY.items():
        for w in results.get(key) or []:
            chosen = w.get("craft_uer" if by == "uer" else "craft_fooling_rate")
            print(f"worst case by {'UER' if by == 'uer' else 'fooling rate'} eps={w['eps']:g}: {w['attack']} seed "
                  f"{w['seed']}  UER {w['uer']:.3f}  fooling {w['fooling_rate']:.3f}  (chosen on the crafting "
                  f"split: {'n/a' if chosen is None else format(chosen, '.3f')})  {w['file']}")
    for t in results.get("targeted") or []:
        shown = ", ".join(f"{c}: {'n/a' if r is None else format(r, '.2f')}" for c, r in t["success"].items())
        print(f"targeted eps={t['eps']:g} success per target class: {shown}")
