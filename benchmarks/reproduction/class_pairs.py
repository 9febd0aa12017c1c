"""The project's class-pair claim: the class pairs with a larger shared perturbation are the ones targeted UAPs cross.

Per record (one trained model) and class pair, two numbers:

* ``s_ij``: the mean shared perturbation strength
  ``sigma_max([J_a; J_b])^2 / (sigma_max(J_a)^2 + sigma_max(J_b)^2)`` over
  pairs of metric inputs ``a`` of class ``i`` and ``b`` of class ``j``
  (``test.metrics.shared_perturbation_strength_by_class``, symmetric);
* the success of the targeted ``i -> j`` UAP at one budget: the fraction of
  class-``i`` test inputs it sends to ``j`` (``test.targeted``).

The claim is a rank correlation between the two over the ordered pairs
``i != j``.  The points are not independent: ``s_ij = s_ji``, so the two
directions of an unordered pair share their x, and the seeds of one
defence share their classes.  The interval therefore resamples unordered
pairs (with both directions) and seeds, never single points
(:func:`.stats.cluster_correlation_interval`): with K = 10 classes and three
seeds, 45 pairs and 3 seeds rather than 270 points.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from . import stats

__all__ = ["class_pair_points", "class_pair_correlation"]


def _known(v: Any) -> bool:
    return v is not None and not isinstance(v, bool) and math.isfinite(float(v))


def _targeted(record: Dict[str, Any], eps: float) -> Optional[Dict[str, Any]]:
    return next((t for t in record["test"].get("targeted") or [] if round(float(t["eps"]), 6) == round(eps, 6)), None)


def class_pair_points(recs: Sequence[Dict[str, Any]], eps: Optional[float]) -> Dict[str, Any]:
    """The class-pair points of ``recs`` (the seeds of one model) at the targeted budget ``eps``.

    Returns ``{"x", "y"}``: flat lists, one point per record and ordered pair
    ``i != j`` (for the plot), and ``{"pairs", "cluster_x", "cluster_y"}``: the
    unordered pairs ``[i, j]`` (``i < j``) whose four numbers (both directions'
    ``s`` and success) every record knows, with arrays of shape
    ``(records, pairs, 2)`` (direction ``i -> j``, then ``j -> i``), what the
    bootstrap resamples.  Records without the table or the budget are left out.

    >>> r = {"test": {"metrics": {"shared_perturbation_strength_by_class": [[1, .6, .7], [.6, 1, .8], [.7, .8, 1]]},
    ...               "targeted": [{"eps": 0.1, "success": [[None, .1, .2], [.1, None, .3], [.2, .4, None]]}]}}
    >>> p = class_pair_points([r], 0.1)
    >>> p["pairs"], p["cluster_x"].shape, p["x"][:2], p["y"][:2]
    ([[0, 1], [0, 2], [1, 2]], (1, 3, 2), [0.6, 0.7], [0.1, 0.2])
    """
    usable = []
    for r in recs:
        table = (r["test"].get("metrics") or {}).get("shared_perturbation_strength_by_class")
        target = _targeted(r, eps) if eps is not None else None
        if table is not None and target is not None:
            usable.append((table, target["success"]))
    xs: List[float] = []
    ys: List[float] = []
    for table, success in usable:
        for i, row in enumerate(success):
            for j, value in enumerate(row):
                if i != j and _known(value) and _known(table[i][j]):
                    xs.append(float(table[i][j]))
                    ys.append(float(value))
    k = len(usable[0][1]) if usable else 0
    pairs = [[i, j] for i in range(k) for j in range(i + 1, k)
             if all(_known(t[a][b]) and _known(s[a][b]) for t, s in usable for a, b in ((i, j), (j, i)))]
    cx = np.array([[[t[i][j], t[j][i]] for i, j in pairs] for t, _ in usable], np.float64).reshape(len(usable), len(pairs), 2)
    cy = np.array([[[s[i][j], s[j][i]] for i, j in pairs] for _, s in usable], np.float64).reshape(len(usable), len(pairs), 2)
    return {"x": xs, "y": ys, "pairs": pairs, "cluster_x": cx, "cluster_y": cy}


def class_pair_correlation(points: Dict[str, Any], reps: int, seed: int, level: float) -> Optional[Dict[str, Any]]:
    """Spearman and Pearson of :func:`class_pair_points`' complete pairs, unordered pairs and seeds resampled.

    None when fewer than 3 unordered pairs are complete.
    """
    if points["cluster_x"].shape[1] < 3:
        return None
    return stats.cluster_correlation_interval(points["cluster_x"], points["cluster_y"], reps=reps, seed=seed,
                                              level=level)
