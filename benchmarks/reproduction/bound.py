"""The paper's bound claim, measured: a UAP's first-order effect against ``sigma_max(J_X)``, and what it really does.

Notation of :mod:`jacuap.metrics.bounds`: ``f = apply_fn(params, .)`` maps an
input of shape ``S`` (``d = prod(S)`` pixels in ``[0, 1]``) to ``K`` logits,
``J_i = J(x_i)`` is its ``K x d`` input Jacobian at ``x_i`` and
``J_X = [J_1; ...; J_N]`` the stacked Jacobian of a set ``X`` of ``N`` inputs.
For a universal perturbation ``v`` in the ball of radius ``eps``:

    first_order(v) = sum_i ||J_i v||^2 = ||J_X v||^2 <= sigma_max(J_X)^2 ||v||_2^2
                  <= sigma_max(J_X)^2 r^2 = bound(eps),

with ``r = eps sqrt(d)`` for l_inf (``||v||_2 <= sqrt(d) ||v||_inf``) and
``r = eps`` for l2 (:func:`jacuap.metrics.first_order_uap_bound`).  The bound
is on the UNCLIPPED FIRST-ORDER effect; the model sees ``clip(x_i + v, 0, 1)``,
and what the UAP really does is

    observed(v) = sum_i ||f(clip(x_i + v, 0, 1)) - f(x_i)||^2,

which differs from ``first_order`` by the clipping (saturated pixels take
less of ``v``) and by the curvature of ``f``.  Per budget :func:`uap_bound`
reports

* ``tightness = first_order / bound``, in ``[0, 1]`` whenever the bound holds;
  it factors as ``fill * alignment`` with ``fill = ||v||_2^2 / r^2`` (how much
  of the ball's l2 radius ``v`` uses) and ``alignment = ||J_X v||^2 /
  (sigma_max^2 ||v||_2^2)`` (how close ``v`` is to the top right singular vector);
* ``observed / first_order``: the first-order model describes the UAP's
  effect while it stays in :data:`FIRST_ORDER_BAND` ``[0.8, 1.25]`` (25%
  either way, symmetric on a log scale); ``first_order_breaks_at_eps`` is the
  smallest budget whose estimate leaves the band.  Which of the two causes
  breaks it shows in ``unclipped / first_order``, with ``unclipped = sum_i
  ||f(x_i + v) - f(x_i)||^2`` (no clipping: curvature alone, a diagnostic,
  the model evaluated off its input domain);
* the fooling rate the bound allows (:func:`implied_fooling_count`) beside the
  UAP's measured one (:func:`jacuap.metrics.fooling_rate`), on the same inputs.

Intervals are 95% percentile bootstraps over the inputs
(:func:`benchmarks.reproduction.stats.ratio_of_sums_interval`): a replicate
resamples the ``N`` inputs with replacement and recomputes the sums;
``sigma_max(J_X)``, hence ``bound``, is HELD FIXED at its value on ``X`` (it is
not recomputed per replicate), so the intervals cover the per-input terms'
sampling only, and not training noise.

``J_i`` comes from :func:`jacuap.jacobian.logits_and_input_jacobian` (the
kernels of :mod:`jacuap.jacobian`, the one place jacuap differentiates a
model; it has no public JVP kernel): one forward pass and ``K`` VJPs per batch
give the clean logits and every ``J_i``, contracted with every budget's ``v``,
so one Jacobian evaluation serves all budgets.
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.reproduction import stats
from jacuap import jacobian, metrics, parallel
from jacuap.batching import map_batches
from jacuap.checks import check_model_inputs, check_positive_int

__all__ = ["FIRST_ORDER_BAND", "BOUND_RTOL", "Effects", "margins_of", "implied_fooling_count",
           "per_input_effects", "uap_bound"]

#: ``observed / first_order`` inside this band: the first-order model holds (25% either way).
FIRST_ORDER_BAND = (0.8, 1.25)
#: ``first_order <= bound (1 + BOUND_RTOL)``: the float32 error of ``sigma_max`` and of ``J_i v``.
BOUND_RTOL = 1e-4
_NORMS = ("linf", "l2")


def margins_of(logits: Any) -> np.ndarray:
    """Top-1 minus runner-up logit per input, ``(N, K) -> (N,)``, ``>= 0`` (float64).

    >>> margins_of([[3.0, 1.0, 2.5], [0.0, 4.0, -1.0]]).tolist()
    [0.5, 4.0]
    """
    z = np.asarray(logits, np.float64)
    if z.ndim != 2 or z.shape[1] < 2 or not np.all(np.isfinite(z)):
        raise ValueError(f"logits must be a finite (N, K) array with K >= 2, got shape {z.shape}")
    top2 = np.sort(z, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def implied_fooling_count(margins: Any, budget: Any) -> int:
    """The most inputs whose prediction a logit change of total squared size ``budget`` can flip.

    Input ``i`` with clean class ``c`` and margin ``m_i = f_c - max_{j != c} f_j``
    (:func:`margins_of`) can change its prediction to ``j`` only if the logit
    change ``D`` has ``D_j - D_c >= f_c - f_j >= m_i``; since
    ``D_j - D_c <= sqrt(2) sqrt(D_j^2 + D_c^2) <= sqrt(2) ||D||_2``
    (Cauchy-Schwarz), that needs ``||D_i||_2^2 >= m_i^2 / 2``.  A set ``F`` of
    flipped inputs therefore has ``sum_{i in F} m_i^2 / 2 <= sum_i ||D_i||^2 <=
    budget``, and no set is larger than the ``k`` inputs of smallest margins:

        k = max { k : sum of the k smallest m_i^2 / 2 <= budget },

    so the fooling rate is at most ``k / N``.  With ``budget = bound(eps)`` and
    the first-order model ``D_i = J_i v`` this is the fooling rate the bound
    allows; with ``budget = observed(v)`` it bounds the UAP's real fooling rate
    (no approximation).

    Args:
      margins: ``(N,)`` non-negative margins.
      budget: ``>= 0``, the allowed ``sum_i ||D_i||_2^2``.

    >>> implied_fooling_count([1.0, 2.0, 0.0, 4.0], 2.5)  # m^2/2 sorted: 0, 0.5, 2, 8; 0 + 0.5 + 2 <= 2.5
    3
    """
    m = np.asarray(margins, np.float64)
    if m.ndim != 1 or m.size == 0 or not np.all(np.isfinite(m)) or np.any(m < 0):
        raise ValueError(f"margins must be a non-empty 1-D array of finite values >= 0, got shape {m.shape}")
    if isinstance(budget, bool) or not isinstance(budget, numbers.Real) or not float(budget) >= 0:
        raise ValueError(f"budget must be a number >= 0, got {budget!r}")
    costs = np.cumsum(np.sort(np.square(m) / 2))
    return int(np.searchsorted(costs, float(budget), side="right"))


def _checked_uaps(uaps: Any, shape: Tuple[int, ...], norm: str) -> List[Tuple[float, np.ndarray]]:
    """``uaps`` as ``[(eps, v float32 of shape S)]`` by ascending eps; ValueError naming ``uaps`` otherwise."""
    if norm not in _NORMS:
        raise ValueError(f"norm must be one of {_NORMS}, got {norm!r}")
    try:
        pairs = [(e, np.asarray(v)) for e, v in uaps]
    except (TypeError, ValueError):
        raise ValueError("uaps must be a sequence of (eps, v) pairs") from None
    if not pairs:
        raise ValueError("uaps must hold at least one (eps, v) pair")
    out = []
    for e, v in pairs:
        if isinstance(e, bool) or not isinstance(e, numbers.Real) or not (math.isfinite(e) and e >= 0):
            raise ValueError(f"uaps: eps must be a finite number >= 0, got {e!r}")
        if tuple(v.shape) != tuple(shape) or not np.issubdtype(v.dtype, np.floating) or not np.all(np.isfinite(v)):
            raise ValueError(f"uaps: v at eps {e:g} must be a finite float array of shape S = {tuple(shape)}, "
                             f"got {v.dtype} {tuple(v.shape)}")
        size = float(np.max(np.abs(v))) if norm == "linf" else float(np.linalg.norm(v.astype(np.float64)))
        if size > e * (1 + 1e-6):
            raise ValueError(f"uaps: v at eps {e:g} has {norm} norm {size:.6g} > eps: the bound is for the ball")
        out.append((float(e), v.astype(np.float32)))
    if len({e for e, _ in out}) != len(out):
        raise ValueError(f"uaps: one v per eps, got eps {[e for e, _ in out]}")
    return sorted(out, key=lambda p: p[0])


class Effects(NamedTuple):
    """Per input ``i`` and perturbation ``v_e`` (float64): what :func:`per_input_effects` measures."""
    first_order: np.ndarray  # (E, N): ||J_i v_e||^2
    observed: np.ndarray     # (E, N): ||f(clip(x_i + v_e, 0, 1)) - f(x_i)||^2
    unclipped: np.ndarray    # (E, N): ||f(x_i + v_e) - f(x_i)||^2 (the model off its input domain: a diagnostic)
    margins: np.ndarray      # (N,): f_c(x_i) - max_{j != c} f_j(x_i), c the clean top-1 class


@functools.partial(jax.jit, static_argnames="apply_fn")
def _effects_batch(apply_fn: Any, params: Any, xb: jax.Array, vs: jax.Array) -> jax.Array:
    """``(B, 3E + 1)``: the columns of :class:`Effects` for one batch (budgets in order, then the margin)."""
    logits, jac = jacobian.logits_and_input_jacobian(apply_fn, params, xb)
    b, k = logits.shape
    jv = jnp.einsum("bkd,ed->ebk", jac.reshape(b, k, -1), vs.reshape(vs.shape[0], -1),
                    precision=jax.lax.Precision.HIGHEST)
    change = lambda xp: jnp.sum(jnp.square(apply_fn(params, xp) - logits), axis=-1)
    observed = jnp.stack([change(jnp.clip(xb + v, 0.0, 1.0)) for v in vs])
    unclipped = jnp.stack([change(xb + v) for v in vs])
    top2 = jax.lax.top_k(logits, 2)[0]
    return jnp.concatenate([jnp.sum(jnp.square(jv), axis=-1).T, observed.T, unclipped.T,
                            (top2[:, 0] - top2[:, 1])[:, None]], axis=1)


def per_input_effects(apply_fn: Any, params: Any, x: Any, vs: Any, batch_size: int = 256) -> Effects:
    """Per input and perturbation: the first-order and the observed logit change, and the clean margin.

    Args:
      apply_fn, params: the model, ``(B, *S) -> (B, K)`` logits, ``K >= 2``.
      x: ``(N, *S)`` inputs in ``[0, 1]``.
      vs: ``(E, *S)`` perturbations (any size: no budget is checked here).
      batch_size: inputs per compiled step (rounded up to the device count of a sharded model).

    Returns:
      :class:`Effects` ``(first_order (E, N), observed (E, N), unclipped (E, N), margins (N,))``.
    """
    check_model_inputs(apply_fn, params, x)
    check_positive_int(batch_size, "batch_size")
    x = jnp.asarray(x)
    vs = np.asarray(vs)
    if vs.ndim != x.ndim or tuple(vs.shape[1:]) != tuple(x.shape[1:]) or vs.shape[0] == 0:
        raise ValueError(f"vs must be (E, *S) with S = {tuple(x.shape[1:])} and E >= 1, got shape {vs.shape}")
    vs = jnp.asarray(vs, x.dtype)
    cols = map_batches(lambda xb: _effects_batch(apply_fn, params, xb, vs), x, batch_size,
                       parallel.batch_multiple(apply_fn)).astype(np.float64)
    e = vs.shape[0]
    return Effects(cols[:, :e].T, cols[:, e:2 * e].T, cols[:, 2 * e:3 * e].T, cols[:, 3 * e])


def _ratio(a: float, b: float) -> Optional[float]:
    """``a / b``, None when ``b <= 0`` (JSON has no NaN)."""
    return float(a / b) if b > 0 else None


def uap_bound(apply_fn: Any, params: Any, x: Any, uaps: Sequence[Tuple[float, Any]], norm: str = "linf", *,
              key: Any = None, reps: int = 2000, seed: int = 0, level: float = 0.95, batch_size: int = 256
              ) -> Dict[str, Any]:
    """The bound claim for one model on the set ``X``: per budget, the bound beside what its UAP does.

    See the module docstring for every formula.  ``sigma_max(J_X)`` by
    :func:`jacuap.metrics.stacked_sigma_max` (exact from the Gram matrix for
    ``d <= 4096``; otherwise LOBPCG from ``key``, default ``PRNGKey(0)``).

    Args:
      apply_fn, params: the model (``K >= 2`` logits).
      x: ``X``, ``(N, *S)`` in ``[0, 1]`` (the record's metric inputs: the first ``num_inputs`` test inputs).
      uaps: ``[(eps, v)]``, one perturbation of shape ``S`` inside each budget's ball.
      norm: ``"linf"`` or ``"l2"``, the balls' norm.
      reps, seed, level: the bootstrap over inputs (``sigma_max`` held fixed).
      batch_size: inputs per compiled step.

    Returns:
      A JSON-able dict ``{"norm", "num_inputs" N, "input_dim" d, "sigma_max", "band", "rtol",
      "holds" (every budget's), "first_order_breaks_at_eps" (None: never), "budgets": [{
      "eps", "bound", "first_order", "observed", "unclipped", "holds" (first_order <= bound (1 + rtol)),
      "tightness", "observed_over_first_order" and "unclipped_over_first_order" (each
      {"estimate", "low", "high", "level", "reps", "skipped"}),
      "in_band", "v_l2_sq", "fill", "alignment", "implied_fooled", "implied_fooling_rate",
      "implied_fooling_rate_observed", "fooled", "fooling_rate"}]}`` (budgets by ascending eps;
      a ratio with a zero denominator is None).

    Raises:
      ValueError: a bad argument, named (``x`` or the model by :mod:`jacuap.checks`).
    """
    check_model_inputs(apply_fn, params, x)
    x = np.asarray(x)
    budgets = _checked_uaps(uaps, x.shape[1:], norm)
    n, d = int(x.shape[0]), int(np.prod(x.shape[1:]))
    stats.ratio_of_sums_interval([1.0], [1.0], reps=reps, level=level)  # ValueError on reps or level, before the work
    sigma = metrics.stacked_sigma_max(apply_fn, params, x, jax.random.PRNGKey(0) if key is None else key,
                                      batch_size=batch_size)
    vs = np.stack([v for _, v in budgets])
    first, observed, unclipped, margins = per_input_effects(apply_fn, params, x, vs, batch_size)
    rows = []
    for k, (eps, v) in enumerate(budgets):
        bound = float(metrics.first_order_uap_bound(sigma, eps, norm, d))
        fo, ob = float(np.sum(first[k])), float(np.sum(observed[k]))
        v_sq = float(np.sum(np.square(v.astype(np.float64))))
        radius_sq = eps * eps * (d if norm == "linf" else 1)
        tight = stats.ratio_of_sums_interval(first[k], np.full(n, bound / n), reps=reps, seed=seed, level=level)
        linear = stats.ratio_of_sums_interval(observed[k], first[k], reps=reps, seed=seed, level=level)
        curved = stats.ratio_of_sums_interval(unclipped[k], first[k], reps=reps, seed=seed, level=level)
        est = linear["estimate"]
        fooled = int(round(metrics.fooling_rate(apply_fn, params, x, v) * n))
        implied = implied_fooling_count(margins, bound)
        rows.append({
            "eps": eps, "bound": bound, "first_order": fo, "observed": ob,
            "holds": bool(fo <= bound * (1 + BOUND_RTOL)), "tightness": tight, "observed_over_first_order": linear,
            "unclipped": float(np.sum(unclipped[k])), "unclipped_over_first_order": curved,
            "in_band": None if est is None else bool(FIRST_ORDER_BAND[0] <= est <= FIRST_ORDER_BAND[1]),
            "v_l2_sq": v_sq, "fill": _ratio(v_sq, radius_sq), "alignment": _ratio(fo, sigma * sigma * v_sq),
            "implied_fooled": implied, "implied_fooling_rate": implied / n,
            "implied_fooling_rate_observed": implied_fooling_count(margins, ob) / n,
            "fooled": fooled, "fooling_rate": fooled / n,
        })
    breaks = next((r["eps"] for r in rows if r["in_band"] is False), None)
    return {"norm": norm, "num_inputs": n, "input_dim": d, "sigma_max": float(sigma),
            "band": list(FIRST_ORDER_BAND), "rtol": BOUND_RTOL, "holds": all(r["holds"] for r in rows),
            "first_order_breaks_at_eps": breaks, "budgets": rows}
