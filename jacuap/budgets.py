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

__all__ = ["budget_problem", "budget_rule"]


def budget_rule(name: str = "eps") -> str:
    return f"{name} must be a finite number >= 0 (<= 1 for linf)"


def budget_problem(eps: float, norm: str, name: str = "eps") -> Optional[str]:
    """None when ``eps`` is a valid ``norm`` budget, else the one-line message naming ``name``."""
    if isinstance(eps, bool) or not isinstance(eps, (int, float)):
        return f"{budget_rule(name)}, got {eps!r}"
    ok = math.isfinite(eps) and eps >= 0.0 and (norm != "linf" or eps <= 1.0)
    return None if ok else f"{budget_rule(name)}, got {eps!r}"
