"""The claims table's bound row: "the UAP's effect is bounded by norms of data-dependent Jacobians", per arch.

Read from the records' ``test.bound`` (:mod:`.bound_records`, :func:`.bound.uap_bound`):
per model and suite budget, ``bound = sigma_max(J_X)^2 r^2`` beside the
worst-case UAP's first-order effect ``sum_i ||J_i v||^2`` and its real logit
change, on the record's metric inputs.  The row gives

* ``estimate``: the median over models of ``tightness = first_order / bound``
  at eps 0.1 (else the middle budget), with a 95% percentile bootstrap
  interval over MODELS (:func:`.stats.median_interval`; each model's own
  interval, over test inputs with ``sigma_max`` held fixed, is in ``detail``);
* whether the bound held at every (model, eps) (``first_order <= bound`` up to
  the float32 error ``rtol``: it is a theorem, so a violation is a finding);
* the fooling rate the bound allows against the measured one;
* from which eps the first-order approximation breaks: the smallest budget
  where the median over models of ``observed / first_order`` leaves the band
  (``[0.8, 1.25]``, :data:`.bound.FIRST_ORDER_BAND`).

Verdict rules: "holds" when the bound held at every measured (model, eps),
the real logit change is within it too, and the fooling rate it implies is
at least the measured one everywhere; "holds partly" when the bound held
everywhere but somewhere the real logit change exceeds it or the measured
fooling rate exceeds the implied one (the first-order bound does not bound
what the attack achieves there); "does not hold" when the bound was exceeded beyond float
error somewhere; "not measured (M records without test.bound)" when no record
of the arch has it.  Records without ``test.bound`` (their model's workdir
was not on the machine) are counted in ``where``, never an error.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from benchmarks.reproduction import stats

__all__ = ["CLAIM", "analyse_bound", "bound_table", "draw_bound_vs_observed"]

CLAIM = "The UAP's effect is bounded by norms of data-dependent Jacobians"


def _ek(eps: float) -> float:
    """An eps as a dict key (rounded: two programs' 8/255 need not agree to the last bit)."""
    return round(float(eps), 6)


def _f(v: Any) -> str:
    """A number in 3 significant digits, "-" for None."""
    return "-" if v is None else f"{v:.3g}"


def _median(values: Sequence[Any]) -> Optional[float]:
    """The median of the values that are not None; None when there are none."""
    vals = [float(v) for v in values if v is not None]
    return float(np.median(vals)) if vals else None


def _points(recs: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """One point per (model, budget) of the records holding ``test.bound``."""
    out = []
    for r in recs:
        b = r["test"].get("bound")
        for row in (b or {}).get("budgets") or []:
            out.append({"id": r["id"], "method": r["method"], "eps": float(row["eps"]), "bound": row["bound"],
                        "first_order": row["first_order"], "observed": row["observed"], "holds": bool(row["holds"]),
                        "tightness": row["tightness"]["estimate"], "tightness_ci": [row["tightness"]["low"],
                                                                                    row["tightness"]["high"]],
                        "linearity": row["observed_over_first_order"]["estimate"],
                        "unclipped_linearity": (row.get("unclipped_over_first_order") or {}).get("estimate"),
                        "implied_fooling_rate": row["implied_fooling_rate"], "fooling_rate": row["fooling_rate"],
                        "band": b.get("band")})
    return out


def analyse_bound(recs: Sequence[Dict[str, Any]], reps: int = 2000, seed: int = 0) -> Dict[str, Any]:
    """The bound row of one arch's records: ``{"estimate", "ci95", "verdict", "where", "detail"}``.

    ``detail``: ``{"n_records", "n_measured", "not_measured" (ids), "num_inputs" (N, the metric inputs),
    "eps" (the estimate's), "band",
    "violations" (points whose first-order effect is above the bound), "observed_exceeded" (points whose real
    logit change is), "fr_exceeded" (points whose measured FR > implied FR),
    "breaks_at_eps", "per_eps": [{"eps", "n_models", "held", "tightness" (median interval over models),
    "linearity", "unclipped_linearity", "implied_fooling_rate", "fooling_rate" (medians), "fr_bound_held",
    "observed_held" (the real logit change <= bound), "observed_over_bound" (median)}],
    "points": [one per (model, budget)]}``.
    """
    if isinstance(recs, dict) or not all(isinstance(r, dict) and isinstance(r.get("test"), dict) for r in recs):
        raise ValueError("recs must be a list of record dicts (each with a test part)")
    measured = [r for r in recs if r["test"].get("bound")]
    missing = [r["id"] for r in recs if not r["test"].get("bound")]
    points = _points(measured)
    detail: Dict[str, Any] = {"n_records": len(recs), "n_measured": len(measured), "not_measured": missing,
                              "num_inputs": sorted({int(r["test"]["bound"]["num_inputs"]) for r in measured}),
                              "points": points, "per_eps": [], "violations": [], "fr_exceeded": [],
                              "breaks_at_eps": None, "eps": None, "band": None}
    if not points:
        return {"estimate": None, "ci95": [None, None], "verdict": f"not measured ({len(missing)} records without "
                f"test.bound)", "where": "", "detail": detail}
    band = next((p["band"] for p in points if p["band"]), None) or [0.8, 1.25]
    grid = sorted({_ek(p["eps"]) for p in points})
    for e in grid:
        at = [p for p in points if _ek(p["eps"]) == e]
        tight = [p["tightness"] for p in at if p["tightness"] is not None]
        lin = _median([p["linearity"] for p in at])
        detail["per_eps"].append({
            "eps": e, "n_models": len(at), "held": sum(p["holds"] for p in at),
            "tightness": stats.median_interval(tight, reps=reps, seed=seed) if tight else None,
            "linearity": lin, "unclipped_linearity": _median([p["unclipped_linearity"] for p in at]),
            "implied_fooling_rate": _median([p["implied_fooling_rate"] for p in at]),
            "fooling_rate": _median([p["fooling_rate"] for p in at]),
            "fr_bound_held": sum(p["implied_fooling_rate"] >= p["fooling_rate"] for p in at),
            # The bound is on the first-order effect; whether it also covers the real logit change is empirical.
            "observed_held": sum(p["observed"] <= p["bound"] for p in at),
            "observed_over_bound": _median([p["observed"] / p["bound"] for p in at if p["bound"] > 0])})
    detail.update(band=band, violations=[p for p in points if not p["holds"]],
                  fr_exceeded=[p for p in points if p["fooling_rate"] > p["implied_fooling_rate"]],
                  breaks_at_eps=next((x["eps"] for x in detail["per_eps"] if x["linearity"] is not None
                                      and not band[0] <= x["linearity"] <= band[1]), None))
    ref = next((x for x in detail["per_eps"] if x["eps"] == 0.1), detail["per_eps"][len(grid) // 2])
    detail["eps"] = ref["eps"]
    head = ref["tightness"] or {}
    detail["observed_exceeded"] = [p for p in points if p["observed"] > p["bound"]]
    verdict = ("does not hold" if detail["violations"] else
               "holds partly" if detail["fr_exceeded"] or detail["observed_exceeded"] else "holds")
    n = len(points)
    brk = next((x for x in detail["per_eps"] if x["eps"] == detail["breaks_at_eps"]), None)
    parts = [f"bound held at {n - len(detail['violations'])}/{n} (model, eps)",
             "median tightness " + ", ".join(f"{_f(x['tightness'] and x['tightness']['estimate'])} (eps {x['eps']:g})"
                                             for x in detail["per_eps"]),
             f"the real logit change within the bound at {sum(x['observed_held'] for x in detail['per_eps'])}/{n} "
             "(median observed/bound " + ", ".join(f"{_f(x['observed_over_bound'])} (eps {x['eps']:g})"
                                                   for x in detail["per_eps"]) + ")",
             f"implied FR >= measured FR at {n - len(detail['fr_exceeded'])}/{n} (eps {ref['eps']:g}: median "
             f"{_f(ref['implied_fooling_rate'])} vs {_f(ref['fooling_rate'])})",
             (f"first order breaks from eps {brk['eps']:g} (median observed/first-order {_f(brk['linearity'])} "
              f"outside [{band[0]:g}, {band[1]:g}]; without clipping {_f(brk['unclipped_linearity'])})"
              if brk is not None else
              f"first order within [{band[0]:g}, {band[1]:g}] at every eps")]
    if missing:
        parts.append(f"{len(missing)} of {len(recs)} records not measured (no test.bound: their workdirs were not "
                     f"where the bound step ran)")
    return {"estimate": head.get("estimate"), "ci95": [head.get("low"), head.get("high")], "verdict": verdict,
            "where": "; ".join(parts), "detail": detail}


def bound_table(detail: Dict[str, Any]) -> List[str]:
    """Markdown lines: the bound per eps (medians over models), from :func:`analyse_bound`'s ``detail``."""
    if not detail["per_eps"]:
        return ["", f"Not measured: none of the {detail['n_records']} records has test.bound."]
    rows = [[f"{x['eps']:g}", x["n_models"], f"{x['held']}/{x['n_models']}",
             "-" if not x["tightness"] else f"{_f(x['tightness']['estimate'])} [{_f(x['tightness']['low'])}, "
                                            f"{_f(x['tightness']['high'])}]",
             _f(x["linearity"]), _f(x["unclipped_linearity"]),
             f"{_f(x.get('observed_over_bound'))} ({x.get('observed_held', '-')}/{x['n_models']})",
             _f(x["implied_fooling_rate"]), _f(x["fooling_rate"]),
             f"{x['fr_bound_held']}/{x['n_models']}"] for x in detail["per_eps"]]
    header = ["eps", "models", "bound held", "tightness [95%, over models]", "observed / first order",
              "unclipped / first order", "observed / bound (<= 1)", "implied FR", "measured FR",
              "implied >= measured"]
    lines = ["", "| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    if detail["not_measured"]:
        lines += ["", f"Not measured (no test.bound: their workdirs were not where the bound step ran): "
                      f"{len(detail['not_measured'])} of {detail['n_records']} records."]
    return lines


def draw_bound_vs_observed(ax: Any, points: Sequence[Dict[str, Any]], title: str) -> None:
    """Log-log: per (model, budget) the bound (x) against the real logit change (filled) and the first-order
    effect (hollow), coloured by eps, with the line y = x (points below it are under the bound)."""
    ok = [p for p in points if p["bound"] > 0 and p["observed"] > 0 and p["first_order"] > 0]
    for k, e in enumerate(sorted({_ek(p["eps"]) for p in ok})):
        at = [p for p in ok if _ek(p["eps"]) == e]
        ax.scatter([p["bound"] for p in at], [p["observed"] for p in at], s=16, color=f"C{k}",
                   label=f"eps {e:g}: observed")
        ax.scatter([p["bound"] for p in at], [p["first_order"] for p in at], s=16, facecolors="none",
                   edgecolors=f"C{k}", label=f"eps {e:g}: first order")
    if ok:
        values = [v for p in ok for v in (p["bound"], p["observed"], p["first_order"])]
        lo, hi = min(values) / 2, max(values) * 2
        ax.plot([lo, hi], [lo, hi], color="grey", lw=0.8, label="y = x")
        ax.set_xscale("log")
        ax.set_yscale("log")
    else:
        ax.text(0.5, 0.5, "not measured (no record has test.bound)", ha="center", va="center",
                transform=ax.transAxes)
    ax.set(xlabel="bound sigma_max(J_X)^2 r^2", ylabel="sum_i ||logit change||^2", title=title)
