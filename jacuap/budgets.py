"""The budget rule, written once: a radius ``eps`` of ``||v||_p <= eps`` in pixel units.

``eps`` is a finite number ``>= 0``, and ``<= 1`` for ``linf`` (pixels live in
``[0, 1]``, so a larger l_inf radius means nothing more).  The library's
argument checks (:func:`jacuap.checks.check_budget`), the attack request and
the training config all ask :func:`budget_problem`; this module imports no
JAX, so that the programs can check their flags before loading it.

>>> budget_problem(0.1, "linf") is None, budget_problem(3.0, "l2") is None
(True, True)
>>> budget_problem(1.5, "linf")
'eps must be a finite number >= 0 (<= 1 for linf), got 1.5'
"""

from __future__ import annotations

import math
from typing import Optional

__all__ = ["NORMS", "EPS_DIGITS", "budget_problem", "budget_rule", "canonical_eps"]

#: The budgets' norms: ``linf`` (``max_i |v_i| <= eps``) and ``l2`` (``sqrt(sum_i v_i^2) <= eps``).
NORMS = ("linf", "l2")
#: Budgets are compared, recorded and name files to this many significant digits.
EPS_DIGITS = 6


def budget_rule(name: str = "eps") -> str:
    return f"{name} must be a finite number >= 0 (<= 1 for linf)"


def budget_problem(eps: float, norm: str, name: str = "eps") -> Optional[str]:
    """None when ``eps`` is a valid ``norm`` budget, else the one-line message naming ``name``."""
    if isinstance(eps, bool) or not isinstance(eps, (int, float)):
        return f"{budget_rule(name)}, got {eps!r}"
    ok = math.isfinite(eps) and eps >= 0.0 and (norm != "linf" or eps <= 1.0)
    return None if ok else f"{budget_rule(name)}, got {eps!r}"


def canonical_eps(eps: float) -> float:
    """``eps`` rounded to :data:`EPS_DIGITS` significant digits: the budget a run records and names files by.

    >>> canonical_eps(0.1000001), canonical_eps(0.05)
    (0.1, 0.05)
    """
    return float(f"{float(eps):.{EPS_DIGITS}g}")
