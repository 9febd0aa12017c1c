"""What a finished attack run shows its user: the printed table, the figure of the UAPs, the files, and
the one line for a failed write."""

from __future__ import annotations

import errno
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from jacuap import io, metrics
from jacuap.evaluation.store import FIGURE_NAME, METRICS_NAME, RESULTS_NAME, ROWS_DIR
from jacuap.evaluation.suite import WORST_CASE_BY

__all__ = ["output_files", "output_failure", "plot_uaps", "print_results", "print_extras"]


def output_files(results: Mapping[str, Any]) -> List[str]:
    """The files of a finished run that a user reads: results.json, uaps.png when written, each UAP."""
    npys = [r["file"] for r in results.get("results", []) if r.get("file")]
    return [RESULTS_NAME] + ([FIGURE_NAME] if npys else []) + npys


_READ_ONLY = (errno.EACCES, errno.EPERM, errno.EROFS)
_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def output_failure(exc: BaseException, out: str) -> Optional[str]:
    """The one line for a failed write into ``out`` (a full disk, a read-only folder), else None."""
    if not isinstance(exc, OSError) or exc.errno not in _READ_ONLY + _FULL:
        return None
    out_abs = os.path.abspath(out)
    names = [os.path.abspath(n) for n in (exc.filename, exc.filename2) if n]
    if names and not any(os.path.commonpath([n, out_abs]) in (n, out_abs) for n in names):
        return None  # not about the output folder (e.g. an unreadable checkpoint)
    rows_dir = os.path.join(out, ROWS_DIR)
    kept = sum(1 for n in os.listdir(rows_dir) if n != METRICS_NAME and n.endswith(".json")) \
        if os.path.isdir(rows_dir) else 0
    resume = f"{kept} finished rows are kept; " if kept else ""
    if exc.errno in _FULL:
        return f"{exc.strerror} writing {out}; {resume}free space and rerun the same command to resume"
    return (f"cannot write to {out}: {exc.strerror}; {resume}make it writable and rerun the same command, "
            f"or choose another --out")


def plot_uaps(uaps: Dict[str, np.ndarray], apply_fn, params, x: np.ndarray, path: str,
              y: Optional[np.ndarray] = None, class_names: Optional[Sequence[Any]] = None) -> None:
    """Saves a figure with one row per UAP: the UAP (amplified to the full grey range), then ``x + v``.

    Each perturbed input is titled ``true -> predicted`` (class names where
    given; without ``y``, the clean prediction stands for the true class).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, cols = len(uaps), 1 + len(x)
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.7 * rows), squeeze=False)
    try:
        truth = np.asarray(y) if y is not None else metrics.predict(apply_fn, params, x)
        name = (lambda k: str(class_names[int(k)])) if class_names else (lambda k: str(int(k)))
        for r, (label, v) in enumerate(uaps.items()):
            scale = max(float(np.max(np.abs(v))), 1e-12)
            _show(axes[r, 0], 0.5 + 0.5 * v / scale, f"{label}\n(amplified)")
            perturbed = np.clip(x + v, 0.0, 1.0)
            pred = metrics.predict(apply_fn, params, perturbed)
            for c in range(len(x)):
                _show(axes[r, c + 1], perturbed[c], f"{name(truth[c])} ->\n{name(pred[c])}")
        fig.tight_layout()
        io.save_figure_atomic(fig, path, dpi=80)
    finally:
        plt.close(fig)


def _show(ax, image: np.ndarray, title: str) -> None:
    image = np.clip(image, 0.0, 1.0)
    if image.shape[-1] == 1:
        ax.imshow(image[..., 0], cmap="gray", vmin=0, vmax=1)
    else:
        ax.imshow(image)
    ax.set_title(title, fontsize=7)
    ax.axis("off")


def print_results(results: Dict[str, Any]) -> None:
    """Prints the result table of :func:`run_attacks`: one row per (attack, eps), then the metrics.

    >>> print_results({"results": [dict(attack="sgd_uap", norm="linf", eps=0.1, uer=0.25,
    ...     fooling_rate=0.2, clean_accuracy=0.9, seconds=1.5, seed=0)], "metrics": {"universality_ratio": 0.5}})
    attack            seed  norm      eps     UER  fooling  clean acc  seconds
    sgd_uap              0  linf    0.100   0.250    0.200      0.900      1.5
      universality_ratio: 0.5
    """
    num = lambda v, spec: "n/a" if v is None else format(v, spec)
    print(f"{'attack':<18}{'seed':>4}  {'norm':<6}{'eps':>7}{'UER':>8}{'fooling':>9}{'clean acc':>11}{'seconds':>9}")
    for row in results["results"]:
        print(f"{row['attack']:<18}{row.get('seed', ''):>4}  {row['norm']:<6}{row['eps']:>7.3f}{num(row['uer'], '.3f'):>8}"
              f"{num(row['fooling_rate'], '.3f'):>9}{num(row['clean_accuracy'], '.3f'):>11}{row['seconds']:>9.1f}")
    m = results.get("metrics") or {}
    for key in ("mean_frobenius_sq", "stacked_spectral_norm", "universality_ratio",
                "shared_perturbation_strength", "jacobian_cosine", "gram_cosine"):
        if key in m and not isinstance(m[key], (list, dict)):
            print(f"  {key}: {num(m[key], '.4g')}")


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
