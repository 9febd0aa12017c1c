"""An attack run's results in TensorBoard: ``OUT/tensorboard`` (:mod:`jacuap.summaries`).

:func:`log_attack_results` logs a finished :func:`jacuap.evaluation.run_attacks`:

* scalars ``uer/<row>`` and ``fooling_rate/<row>`` (``<row>``: the attack,
  and ``_seed<s>`` when its rows have several seeds) at step
  ``round(1000 * eps)`` (:func:`eps_step`), so that each chart is the rate
  against the budget, in thousandths; the worst case of each budget as
  ``uer/worst_case`` and ``fooling_rate/worst_case_by_fooling_rate``; the
  Jacobian metrics as ``metrics/<name>`` at step 0;
* the results table as markdown text, ``results`` (:func:`markdown_table`);
* each UAP as an image ``uap/<label>`` (a tag as :func:`jacuap.summaries.tag`
  makes it: ``uap/sgd_uap_eps_0.1``), mapped to [0, 1] by its own range
  (:func:`uap_image`).

The new event file replaces the folder's older ones (removed once it is
written), so the folder shows the latest run only; a rerun with the same
results (every row reused) writes nothing.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any, Dict, Mapping

import numpy as np

from jacuap import io, summaries
from jacuap.evaluation.suite import WORST_CASE_BY

__all__ = ["EPS_SCALE", "eps_step", "markdown_table", "uap_image", "log_attack_results"]

#: A budget is logged at step ``round(EPS_SCALE * eps)``.
EPS_SCALE = 1000


def eps_step(eps: float) -> int:
    """The TensorBoard step of budget ``eps``: ``round(EPS_SCALE * eps)``, eps in thousandths.

    >>> eps_step(0.05), eps_step(2.0)
    (50, 2000)
    """
    return int(round(EPS_SCALE * float(eps)))


def markdown_table(results: Mapping[str, Any]) -> str:
    """The rows of ``results`` as a markdown table (n/a for a null rate).

    >>> print(markdown_table({"results": [dict(attack="sgd_uap", seed=0, norm="linf", eps=0.1, uer=0.25,
    ...     fooling_rate=None, clean_accuracy=0.9, seconds=1.5)]}))
    | attack | seed | norm | eps | UER | fooling rate | clean accuracy | seconds |
    |---|---|---|---|---|---|---|---|
    | sgd_uap | 0 | linf | 0.1 | 0.250 | n/a | 0.900 | 1.5 |
    """
    num = lambda v, spec: "n/a" if v is None else format(v, spec)
    lines = ["| attack | seed | norm | eps | UER | fooling rate | clean accuracy | seconds |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results.get("results", []):
        lines.append(f"| {r['attack']} | {r.get('seed', '')} | {r['norm']} | {r['eps']:g} | {num(r['uer'], '.3f')} | "
                     f"{num(r['fooling_rate'], '.3f')} | {num(r['clean_accuracy'], '.3f')} | "
                     f"{num(r.get('seconds'), '.1f')} |")
    return "\n".join(lines)


def uap_image(v: Any) -> np.ndarray:
    """``v`` mapped to [0, 1] by its own range: ``(v - min) / (max - min)`` (0.5 everywhere if constant).

    >>> uap_image(np.array([[-0.1, 0.0, 0.3]])).tolist()
    [[0.0, 0.25, 1.0]]
    """
    v = np.asarray(v, np.float64)
    low, high = float(np.min(v)), float(np.max(v))
    if high - low <= 0:
        return np.full(v.shape, 0.5)
    return (v - low) / (high - low)


def _row_name(row: Mapping[str, Any], seeds: Dict[str, set]) -> str:
    return row["attack"] + (f"_seed{row.get('seed')}" if len(seeds[row["attack"]]) > 1 else "")


def log_attack_results(results: Mapping[str, Any], out: str, uaps: Mapping[str, Any]) -> None:
    """Logs ``results`` (:func:`jacuap.evaluation.run_attacks`'s) and ``uaps`` (label: array) in ``out/tensorboard``.

    What is logged: the module docstring.  Process 0 writes; the file is
    named by a digest of ``results``, and one of that name there already
    means that nothing changed.  Raises ValueError for a UAP that is not an
    H x W x C (C 1, 3 or 4) or H x W image.
    """
    logdir = summaries.logdir(out)
    digest = hashlib.sha256(io.to_json(results).encode("utf-8")).hexdigest()[:16]
    old = summaries.event_files(logdir)
    if any(path.endswith("." + digest) for path in old):
        return
    rows = results.get("results") or []
    seeds: Dict[str, set] = {}
    for r in rows:
        seeds.setdefault(r["attack"], set()).add(r.get("seed"))
    images = {label: uap_image(v) for label, v in uaps.items()}
    with summaries.Writer(logdir, label=digest) as writer:
        for r in rows:
            name = _row_name(r, seeds)
            writer.scalars(eps_step(r["eps"]), {f"uer/{name}": r.get("uer"),
                                                f"fooling_rate/{name}": r.get("fooling_rate")})
        for by, key in WORST_CASE_BY.items():
            for w in results.get(key) or []:
                writer.scalars(eps_step(w["eps"]), {f"{by}/{key}": w.get(by)})
        metrics = results.get("metrics") or {}
        writer.scalars(0, {f"metrics/{k}": v for k, v in metrics.items()
                           if isinstance(v, (int, float)) and not isinstance(v, bool)})
        writer.text("results", 0, markdown_table(results))
        for label, image in images.items():
            writer.image(f"uap/{label}", 0, image)
    if io.is_primary():
        for path in old:
            os.unlink(path)
