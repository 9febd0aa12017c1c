"""The reproduction's verdicts, tables and plots from a set of model records (:mod:`.records`).

:func:`analyse` takes the records of one dataset (one or more architectures)
and the strengths chosen on validation data, and tests the paper's claims per
architecture against the undefended model (``jr`` at strength 0), with the
bootstrap intervals of :mod:`.stats` (seeds and test inputs resampled):

* ``robustness``: the chosen JR lambda makes the model up to 4x more robust:
  worst-case UER ratio ``UER(base) / UER(JR)`` per eps (headline: the largest),
  fooling-rate ratio, and eps-at-50%-UER ratio on the SGD-UAP grid;
* ``accuracy``: clean accuracy is maintained: cost ``100 (acc(base) - acc(JR))``
  in points for every lambda (headline: the chosen one), tolerance 1 point;
* ``correlation``: each Jacobian metric against worst-case UER at eps 0.1,
  one point per record (headline: ``shared_perturbation_strength``; a positive
  correlation means a larger metric goes with a less robust model);
* ``bound``: the paper's upper bound on a UAP's first-order effect,
  ``sigma_max(J_X)^2 r^2``, against what the worst-case UAP does, from the
  records' ``test.bound`` (:mod:`.bound_claim`: tightness, whether it held,
  the fooling rate it implies, where the first-order approximation breaks);
* ``class_pairs``: per ordered class pair ``i != j``, the mean ``s_ij`` between
  inputs of classes i and j against the targeted i -> j success rate, the
  base's and the chosen JR's points pooled separately (headline: the base's).

Every other defence at its chosen strength gets the robustness comparison and
its accuracy cost too (``defences``, not claims).  :mod:`.render` writes the
analysis out: ``<dataset>.md``, ``<dataset>.json``, plots and RESULTS.md's blocks.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from . import bound_claim, class_pairs
from . import records as rec
from . import stats

__all__ = ["analyse", "fooling_rate_part", "CLAIMS", "METRICS", "PLOTS", "FR_WORST_CASE"]

SCHEMA = "jacuap.reproduction.analysis/1"
METRICS = ("mean_frobenius_sq", "stacked_spectral_norm", "mean_spectral_norm_sq", "universality_ratio",
           "shared_perturbation_strength", "jacobian_cosine", "gram_cosine")
CLAIMS = {
    "robustness": "JR makes models up to 4x more robust to UAPs",
    "accuracy": "Clean accuracy is maintained",
    "correlation": "The shared-perturbation metric correlates highly with observed robustness",
    "bound": bound_claim.CLAIM,
    "class_pairs": "Class pairs with larger shared perturbation s_ij are the ones targeted UAPs push between",
}
PLOTS = ("frontier", "uer_vs_eps", "metrics_vs_uer", "class_pairs", "bound_vs_observed")
_ORDER = ("jr", "stacked_spectral", "uat", "cw_uat", "sat", "pgd", "trades")
_LEVEL = 0.95


def _ek(eps: float) -> float:
    return round(float(eps), 6)  # eps keys: 8/255 written by two programs need not agree to the last bit


def _finite(v: Any) -> bool:
    return v is not None and not isinstance(v, bool) and math.isfinite(float(v))


def _mean(values: Sequence[Any]) -> Optional[float]:
    vals = [float(v) for v in values if _finite(v)]
    return float(np.mean(vals)) if vals else None


def _std(values: Sequence[Any]) -> Optional[float]:
    vals = [float(v) for v in values if _finite(v)]
    return float(np.std(vals, ddof=1)) if len(vals) > 1 else None  # over seeds: undefined for one


def _entry(r: Dict[str, Any], part: str, eps: float) -> Optional[Dict[str, Any]]:
    return next((e for e in r["test"].get(part) or [] if _ek(e["eps"]) == _ek(eps)), None)


def _eps(recs: Sequence[Dict[str, Any]], part: str, common: bool = True) -> List[float]:
    """The eps values of ``part`` held by every record (``common``) or by any, ascending."""
    per = [{_ek(e["eps"]): float(e["eps"]) for e in r["test"].get(part) or []} for r in recs]
    keys = set.intersection(*map(set, per)) if (common and per) else set().union(*per)
    value = {k: v for d in reversed(per) for k, v in d.items()}
    return [value[k] for k in sorted(keys)]


def _ref_eps(grid: Sequence[float]) -> Optional[float]:
    """0.1 if on the grid, else the grid's middle eps."""
    grid = sorted(grid)
    return next((e for e in grid if _ek(e) == 0.1), grid[len(grid) // 2] if grid else None)


def _bits(r: Dict[str, Any], text: str, n: int) -> np.ndarray:
    return rec.unpack_bits(text, int(r["test"]["num_eval"]))[:n]


def _n(*groups: Sequence[Dict[str, Any]]) -> int:
    # Every record is evaluated on the first num_eval test inputs: truncating to the shortest aligns them.
    return min(int(r["test"]["num_eval"]) for g in groups for r in g)


def _seeds(recs: Sequence[Dict[str, Any]]) -> List[int]:
    return [int(r["seed"]) for r in recs]


def _group(recs: Sequence[Dict[str, Any]]) -> Dict[tuple, List[Dict[str, Any]]]:
    groups: Dict[tuple, List[Dict[str, Any]]] = {}
    for r in recs:
        groups.setdefault((r["method"], rec.strength_tag(r["strength"])), []).append(r)
    rank = lambda k: (_ORDER.index(k[0]) if k[0] in _ORDER else len(_ORDER), k[0], float(k[1]))
    return {k: sorted(groups[k], key=lambda r: int(r["seed"])) for k in sorted(groups, key=rank)}


FR_WORST_CASE = "worst_case_by_fooling_rate"


def fooling_rate_part(recs: Sequence[Dict[str, Any]]) -> str:
    """Where the fooling rate's worst case is read: the one chosen by fooling rate when every record of
    ``recs`` has it (:data:`FR_WORST_CASE`), else the one chosen by UER (``"worst_case"``, older records)."""
    return FR_WORST_CASE if recs and all(r["test"].get(FR_WORST_CASE) for r in recs) else "worst_case"


def _compare(base: List[Dict[str, Any]], model: List[Dict[str, Any]], reps: int, seed: int) -> Dict[str, Any]:
    """Robustness ratios, base over model: worst-case UER and fooling rate per eps, SGD-UAP eps50.

    The UER ratio compares the worst cases chosen by UER; the fooling-rate ratio those chosen by fooling
    rate where both sides' records have them (``fooling_rate_worst_case_by`` says which was used).
    """
    n, paired = _n(base, model), _seeds(base) == _seeds(model)
    kw = dict(reps=reps, seed=seed, level=_LEVEL, paired=paired)
    fr_part = fooling_rate_part(base + model)
    out: Dict[str, Any] = {"seeds_base": _seeds(base), "seeds_model": _seeds(model), "paired": paired,
                           "uer_ratio": [], "fooling_rate_ratio": [], "eps50_ratio": None,
                           "fooling_rate_worst_case_by": "fooling_rate" if fr_part == FR_WORST_CASE else "uer"}
    for key, name, part in (("wrong", "uer_ratio", "worst_case"), ("changed", "fooling_rate_ratio", fr_part)):
        for e in _eps(base + model, part):
            xb, xm = ([_bits(r, _entry(r, part, e)[key], n) for r in g] for g in (base, model))
            out[name].append({"eps": e, **stats.rate_ratio_interval(np.stack(xb), np.stack(xm), **kw)})
    grid = _eps(base + model, "sgd_uap")
    if grid:
        xb, xm = (np.stack([[_bits(r, _entry(r, "sgd_uap", e)["wrong"], n) for e in grid] for r in g])
                  for g in (base, model))
        out["eps50_ratio"] = {"eps": grid, **stats.eps50_ratio_interval(grid, xb, xm, **kw)}
    return out


_RATIOS = ("seeds_model", "paired", "uer_ratio", "fooling_rate_ratio", "eps50_ratio", "fooling_rate_worst_case_by")


def _accuracy_cost(base: List[Dict[str, Any]], model: List[Dict[str, Any]], reps: int, seed: int) -> Dict[str, Any]:
    """Clean accuracy cost in points, ``100 (acc(base) - acc(model))``, on clean_correct bits."""
    n, paired = _n(base, model), _seeds(base) == _seeds(model)
    xb, xm = (np.stack([_bits(r, r["test"]["clean_correct"], n) for r in g]) for g in (base, model))
    d = stats.difference_interval(xb, xm, reps=reps, seed=seed, level=_LEVEL, paired=paired)
    low, high = (None if d[k] is None else 100 * d[k] for k in ("low", "high"))
    return {"seeds": _seeds(model), "paired": paired, "estimate": 100 * d["estimate"], "low": low, "high": high,
            "verdict": stats.verdict_accuracy(low, high)}


def _row(key: tuple, recs: List[Dict[str, Any]], chosen: bool) -> Dict[str, Any]:
    acc = [float(_bits(r, r["test"]["clean_correct"], _n(recs)).mean()) for r in recs]
    test_acc = [(r.get("train") or {}).get("test_accuracy") for r in recs]
    row: Dict[str, Any] = {"method": key[0], "strength": float(key[1]), "chosen": chosen, "seeds": _seeds(recs),
                           "clean_accuracy": {"mean": _mean(acc), "std": _std(acc)},
                           "test_accuracy": {"mean": _mean(test_acc), "std": _std(test_acc)}, "worst_case": []}
    for e in _eps(recs, "worst_case", common=False):
        ents = [x for x in (_entry(r, "worst_case", e) for r in recs) if x is not None]
        uer = [x.get("uer") for x in ents]
        by_fr = [x for x in (_entry(r, FR_WORST_CASE, e) for r in recs) if x is not None]
        row["worst_case"].append({"eps": e, "uer": _mean(uer), "uer_std": _std(uer), "n_seeds": len(ents),
                                  "fooling_rate": _mean([x.get("fooling_rate") for x in ents]),
                                  # the fooling rate of the worst case chosen by fooling rate, where every seed has it
                                  "fooling_rate_by_fooling_rate": _mean([x.get("fooling_rate") for x in by_fr])
                                  if len(by_fr) == len(recs) else None})
    grid = _eps(recs, "sgd_uap", common=False)
    curve = [_mean([(_entry(r, "sgd_uap", e) or {}).get("uer") for r in recs]) for e in grid]
    ok = [(e, u) for e, u in zip(grid, curve) if u is not None]
    e50 = stats.eps_at_half([e for e, _ in ok], [u for _, u in ok]) if ok else None
    row["sgd_uap"] = {"eps": grid, "uer": curve, "eps50": e50, "eps50_censored": bool(ok) and e50 is None}
    row["metrics"] = {m: _mean([(r["test"].get("metrics") or {}).get(m) for r in recs]) for m in METRICS}
    return row


def _f(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    return "inf" if v == math.inf else f"{v:.{digits}g}"


def _ci(x: Optional[Dict[str, Any]]) -> str:
    if not x or x.get("estimate") is None:
        return "-"
    # A censored eps50 bounds the ratio: the model's from below, the base's from above.
    bound = ">= " if x.get("censored_model") else "<= " if x.get("censored_base") else ""
    return f"{bound}{_f(x['estimate'])} [{_f(x['low'])}, {_f(x['high'])}]"


def _claim(kind: str, arch: str, head: Optional[Dict[str, Any]], verdict: Optional[str],
           detail: Dict[str, Any], where: str = "") -> Dict[str, Any]:
    if head is None or head.get("estimate") is None:
        head, verdict = {}, "not measured"
    return {"id": kind, "claim": CLAIMS[kind], "arch": arch, "estimate": head.get("estimate"),
            "ci95": [head.get("low"), head.get("high")], "verdict": verdict, "where": where, "detail": detail}


def _where_robustness(per_lambda: Sequence[Dict[str, Any]], costs: Optional[Dict[float, Dict[str, Any]]] = None) -> str:
    """The (lambda, ratio, eps) whose interval reaches 4x (verdict "holds"), each with that lambda's accuracy
    cost in points when ``costs`` (strength -> :func:`_accuracy_cost`) has it, or that none does."""
    hits = []
    for x in per_lambda:
        cost = (costs or {}).get(x["strength"])
        paid = f" (accuracy cost {_ci(cost)} points)" if cost and cost.get("estimate") is not None else ""
        by = "fooling rate" if x.get("fooling_rate_worst_case_by") == "fooling_rate" else "UER"
        for name, label in (("uer_ratio", "UER ratio"), ("fooling_rate_ratio", f"fooling rate ratio (worst case by {by})")):
            for y in x[name]:
                if stats.verdict_robustness(y["low"], y["high"]) == "holds":
                    hits.append(f"{label} at lambda {x['strength']:g}, eps {_f(y['eps'])}: {_ci(y)}{paid}")
        e50 = x.get("eps50_ratio")
        if e50 and stats.verdict_robustness(e50["low"], e50["high"]) == "holds":
            hits.append(f"eps50 ratio at lambda {x['strength']:g}: {_ci(e50)}{paid}")
    if not per_lambda:
        return ""
    return ("4x within the interval: " + "; ".join(hits)) if hits else "4x excluded at every lambda, eps and ratio"


def _where_accuracy(lambdas: Sequence[Dict[str, Any]]) -> str:
    """The lambdas by verdict: within 1 point, not excluded, excluded."""
    parts = []
    for verdict, label in (("holds", "cost <= 1 point"), ("holds partly", "1 point not excluded"),
                           ("does not hold", "cost > 1 point")):
        ls = [f"{c['strength']:g}" for c in lambdas if c["verdict"] == verdict]
        if ls:
            parts.append(f"{label} at lambda {', '.join(ls)}")
    return "; ".join(parts)


# Below this many models the correlation claim gets no verdict: the percentile bootstrap of a rank
# correlation over a handful of points degenerates (4 monotone points give rho = 1 with interval [1, 1]).
MIN_CORRELATION_MODELS = 6


def _headline_ratio(cmp: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    known = [x for x in cmp["uer_ratio"] if x["estimate"] is not None]
    return max(known, key=lambda x: x["estimate"]) if known else None


def _correlations(x: Sequence[Any], y: Sequence[Any], reps: int, seed: int) -> Optional[Dict[str, Any]]:
    pairs = [(a, b) for a, b in zip(x, y) if _finite(a) and _finite(b)]
    if len(pairs) < 3:
        return None
    x, y = zip(*pairs)
    return stats.correlation_interval(x, y, reps=reps, seed=seed, level=_LEVEL)


def _versus_base(arch: str, method: str, choice: Optional[Dict[str, Any]], base: Optional[list], model: Optional[list],
                 reps: int, seed: int) -> Dict[str, Any]:
    """A defence at its chosen strength against the base: robustness ratios, headline, verdict, accuracy cost."""
    entry: Dict[str, Any] = {"arch": arch, "method": method, **(choice or {"strength": None, "rule": None}),
                             "base_missing": not base, "model_missing": not model, "headline": None,
                             "verdict": "not measured", "accuracy_cost": None}
    if base and model:
        entry.update(_compare(base, model, reps, seed), accuracy_cost=_accuracy_cost(base, model, reps, seed))
        head = entry["headline"] = _headline_ratio(entry)
        entry["verdict"] = stats.verdict_robustness(head["low"], head["high"]) if head else "not measured"
    return entry


def _analyse_arch(arch: str, recs: List[Dict[str, Any]], choice: Dict[str, Any], reps: int, seed: int,
                  claims: List[Dict[str, Any]], defences: List[Dict[str, Any]]) -> Dict[str, Any]:
    first = len(claims)
    groups = _group(recs)
    chosen = {m: {"strength": float(c["chosen"]), "rule": c.get("rule")}
              for m, c in choice.items() if c.get("chosen") is not None}
    for method, tag in groups:  # a defence measured at one strength needs no choice (JR's one would be the base)
        if method not in chosen and method != "jr" and sum(k[0] == method for k in groups) == 1:
            chosen[method] = {"strength": float(tag), "rule": "only strength measured"}
    pick = lambda m: groups.get((m, rec.strength_tag(chosen[m]["strength"]))) if m in chosen else None
    base, jr = groups.get(("jr", "0")), pick("jr")
    missing = {"base_missing": not base, "chosen_jr_missing": not jr, "chosen_jr": chosen.get("jr"),
               "chosen_jr_is_base": bool(jr) and jr is base}  # no lambda kept accuracy: no JR model to judge

    rob = _versus_base(arch, "jr", chosen.get("jr"), base, jr, reps, seed)
    # "Up to 4x": where on the grid, if anywhere, each ratio gets there (the verdict is lambda*'s).
    grid = [(float(k[1]), g) for k, g in groups.items() if base and k[0] == "jr" and k[1] != "0"]
    rob["lambdas"] = [{"strength": s, **{key: (rob if g is jr else _compare(base, g, reps, seed))[key]
                                         for key in _RATIOS}} for s, g in grid]
    lambdas = [{"strength": s, **_accuracy_cost(base, g, reps, seed)} for s, g in grid]
    claims.append(_claim("robustness", arch, rob["headline"], rob["verdict"], rob,
                         _where_robustness(rob["lambdas"], {c["strength"]: c for c in lambdas})))

    head = next((c for c in lambdas if jr and c["strength"] == float(rec.strength_tag(chosen["jr"]["strength"]))), None)
    claims.append(_claim("accuracy", arch, head, head and head["verdict"],
                         {**missing, "tolerance_points": 1.0, "lambdas": lambdas}, _where_accuracy(lambdas)))

    ref = _ref_eps(_eps(recs, "worst_case", common=False))
    held = [(r, _entry(r, "worst_case", ref)) for r in recs if ref is not None and _entry(r, "worst_case", ref)]
    points: Dict[str, Any] = {"ids": [r["id"] for r, _ in held], "methods": [r["method"] for r, _ in held],
                              "uer": [e.get("uer") for _, e in held],
                              **{m: [(r["test"].get("metrics") or {}).get(m) for r, _ in held] for m in METRICS}}
    corr = {m: _correlations(points[m], points["uer"], reps, seed) for m in METRICS}
    head = (corr["shared_perturbation_strength"] or {}).get("spearman")
    verdict = head and stats.verdict_correlation(head["low"], head["estimate"])
    if head and len(points["ids"]) < MIN_CORRELATION_MODELS:
        verdict = f"not measured ({len(points['ids'])} models < {MIN_CORRELATION_MODELS})"
    # The paper's setting is JR's own lambda grid; across defences other mechanisms move UER.
    in_jr = [k for k, (r, _) in enumerate(held) if r["method"] == "jr"]
    corr_jr = {m: _correlations([points[m][k] for k in in_jr], [points["uer"][k] for k in in_jr], reps, seed)
               for m in METRICS}
    head_jr = (corr_jr["shared_perturbation_strength"] or {}).get("spearman")
    # Seeds of one lambda are not independent points: the same correlation on the per-lambda means.
    by_lambda: Dict[float, List[int]] = {}
    for k in in_jr:
        by_lambda.setdefault(float(held[k][0]["strength"]), []).append(k)
    per_lambda = lambda key: [_mean([points[key][k] for k in ks]) for ks in by_lambda.values()]
    corr_lambda = {m: _correlations(per_lambda(m), per_lambda("uer"), reps, seed) for m in METRICS}
    head_lambda = (corr_lambda["shared_perturbation_strength"] or {}).get("spearman")
    where = ""
    if head_jr and len(in_jr) >= MIN_CORRELATION_MODELS and len(in_jr) < len(held):
        where = (f"JR models only ({len(in_jr)}): Spearman {_ci(head_jr)}, "
                 f"{stats.verdict_correlation(head_jr['low'], head_jr['estimate'])}")
        if head_lambda and len(by_lambda) < len(in_jr):
            where += f"; averaged per lambda ({len(by_lambda)} points): Spearman {_ci(head_lambda)}"
    claims.append(_claim("correlation", arch, head, verdict,
                         {"eps": ref, "n_records": len(points["ids"]), "metrics": corr,
                          "jr_only": {"n_records": len(in_jr), "metrics": corr_jr},
                          "jr_per_lambda": {"n_points": len(by_lambda), "metrics": corr_lambda}}, where))

    claims.append({"id": "bound", "claim": CLAIMS["bound"], "arch": arch, **bound_claim.analyse_bound(recs, reps, seed)})

    t_ref = _ref_eps(_eps((base or []) + (jr or []), "targeted", common=False))
    pair_points = {"base": class_pairs.class_pair_points(base or [], t_ref),
                   "jr": class_pairs.class_pair_points(jr or [], t_ref)}
    pair_corr = {k: class_pairs.class_pair_correlation(p, reps, seed, _LEVEL) for k, p in pair_points.items()}
    head = (pair_corr["base"] or {}).get("spearman")
    head_jr = (pair_corr["jr"] or {}).get("spearman")
    where = (f"lambda*'s class pairs: Spearman {_ci(head_jr)}, "
             f"{stats.verdict_correlation(head_jr['low'], head_jr['estimate'])}") if head_jr else ""
    claims.append(_claim("class_pairs", arch, head, head and stats.verdict_correlation(head["low"], head["estimate"]),
                         {**missing, "eps": t_ref, "pools": pair_corr}, where))

    versus = f"{len(base or [])} vs {len(jr or [])} seeds" if base and jr else "-"
    pools = [(k, pair_corr[p]) for k, p in (("base", "base"), ("lambda*", "jr")) if pair_corr[p]]
    for c in claims[first:]:  # what each estimate rests on: a row with one seed ignores training noise
        c["sample"] = {"robustness": versus, "accuracy": versus,
                       "correlation": f"{len(points['ids'])} models, one point each",
                       "bound": f"{c['detail'].get('n_measured', 0)} of {c['detail'].get('n_records', 0)} models",
                       "class_pairs": "; ".join(f"{k}: {x['clusters']} unordered pairs x {x['seeds']} "
                                                f"seed{'s' * (x['seeds'] > 1)}"
                                                for k, x in pools) or "-"}[c["id"]]

    for method in sorted(chosen, key=lambda m: (_ORDER.index(m) if m in _ORDER else len(_ORDER), m)):
        if method != "jr" and pick(method):
            defences.append(_versus_base(arch, method, chosen[method], base, pick(method), reps, seed))

    keys_chosen = {(m, rec.strength_tag(c["strength"])) for m, c in chosen.items()}
    return {"base": {"method": "jr", "strength": 0.0, "seeds": _seeds(base)} if base else None,
            "chosen": chosen, "reference_eps": {"worst_case": ref, "targeted": t_ref},
            "table": [_row(k, g, k in keys_chosen) for k, g in groups.items()],
            "metric_points": points,
            "class_pair_points": {k: {"x": p["x"], "y": p["y"], "pairs": p["pairs"]} for k, p in pair_points.items()}}


def analyse(records: Sequence[Dict[str, Any]], selection: Optional[Dict[str, Any]], reps: int = 2000,
            seed: int = 0) -> Dict[str, Any]:
    """The claims, tables and comparisons of one dataset's records; see the module docstring.

    Returns ``{"schema", "dataset", "reps", "seed", "level", "archs": {arch: {"base",
    "chosen", "reference_eps", "table", "metric_points", "class_pair_points"}},
    "claims": [{"id", "claim", "arch", "estimate", "ci95", "verdict", "detail"}],
    "defences": [...]}``.  Interval bounds may be ``inf`` (a zero rate);
    :func:`.render.write_report`'s JSON writes them as null.
    """
    if isinstance(records, dict) or not all(isinstance(r, dict) for r in records):
        raise ValueError("records must be a list of record dicts")
    datasets = sorted({r["dataset"] for r in records})
    if len(datasets) > 1:
        raise ValueError(f"records hold more than one dataset: {datasets}")
    choices = (selection or {}).get("archs") or {}
    by_arch: Dict[str, List[Dict[str, Any]]] = {a: [] for a in choices}
    for r in records:
        by_arch.setdefault(r["arch"], []).append(r)
    claims: List[Dict[str, Any]] = []
    defences: List[Dict[str, Any]] = []
    archs = {a: _analyse_arch(a, by_arch[a], choices.get(a) or {}, reps, seed, claims, defences)
             for a in sorted(by_arch)}
    return {"schema": SCHEMA, "dataset": datasets[0] if datasets else None, "reps": reps, "seed": seed,
            "level": _LEVEL, "selection": selection, "archs": archs, "claims": claims, "defences": defences}
