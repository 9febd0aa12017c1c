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

__all__ = ["output_files", "output_failure", "plot_uaps", "fooled_first", "save_uap_images", "print_results", "print_extras"]


def output_files(results: Mapping[str, Any]) -> List[str]:
    """The files of a finished run that a user reads: results.json, uaps.png when written, each UAP (.npy, .png)."""
    npys = [r["file"] for r in results.get("results", []) if r.get("file")]
    return [RESULTS_NAME] + ([FIGURE_NAME] if npys else []) + npys + [f[:-4] + ".png" for f in npys]


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


def fooled_first(y: np.ndarray, clean: np.ndarray, perturbed: np.ndarray, k: int) -> np.ndarray:
    """Indices of ``k`` inputs to show for one UAP: those it fools first, then any others, in input order.

    First the inputs classified correctly that ``v`` makes wrong (what a UAP
    does), then those wrong either way with a changed prediction, then the rest.

    >>> fooled_first(np.array([0, 1, 2, 3]), np.array([0, 1, 0, 3]), np.array([0, 2, 1, 1]), 3).tolist()
    [1, 3, 2]
    """
    y, clean, perturbed = (np.asarray(a) for a in (y, clean, perturbed))
    flipped = (clean == y) & (perturbed != y)
    changed = ~flipped & (perturbed != clean)
    order = np.concatenate([np.flatnonzero(flipped), np.flatnonzero(changed), np.flatnonzero(~flipped & ~changed)])
    return order[:k]


def plot_uaps(uaps: Dict[str, np.ndarray], apply_fn, params, x: np.ndarray, path: str,
              y: Optional[np.ndarray] = None, class_names: Optional[Sequence[Any]] = None,
              per_row: int = 4, note: str = "") -> None:
    """Saves a figure with one row per UAP: ``v`` with a colour bar in pixel units, then ``per_row`` inputs ``x + v``.

    The inputs of a row are those of ``x`` that its UAP fools
    (:func:`fooled_first`), each titled ``true -> predicted`` (red when
    fooled; class names where given; without ``y``, the clean prediction
    stands for the true class).  ``note`` (e.g. the split and set size the
    inputs come from) goes under the title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per_row = max(1, min(int(per_row), len(x)))
    rows, cols = len(uaps), 1 + per_row
    fig, axes = plt.subplots(rows, cols, figsize=(1.9 * cols + 0.6, 2.0 * rows + 0.7), squeeze=False)
    try:
        clean = metrics.predict(apply_fn, params, x)
        truth = np.asarray(y) if y is not None else clean
        name = (lambda k: str(class_names[int(k)])) if class_names else (lambda k: str(int(k)))
        for r, (label, v) in enumerate(uaps.items()):
            v = np.asarray(v, np.float32)
            perturbed = np.clip(x + v, 0.0, 1.0)
            pred = metrics.predict(apply_fn, params, perturbed)
            _show_uap(fig, axes[r, 0], v, label)
            for c, i in enumerate(fooled_first(truth, clean, pred, per_row)):
                fooled = pred[i] != truth[i]
                _show(axes[r, c + 1], perturbed[i], f"{name(truth[i])} ->\n{name(pred[i])}",
                      color="tab:red" if fooled else "black")
        fig.suptitle("each UAP v (colour bar: pixel units), then x + v titled true class -> prediction "
                     "(red: fooled)" + (f"\n{note}" if note else ""), fontsize=8)
        fig.tight_layout(rect=(0, 0, 1, 0.97 if not note else 0.95))
        io.save_figure_atomic(fig, path, dpi=90)
    finally:
        plt.close(fig)


def _show_uap(fig, ax, v: np.ndarray, label: str) -> None:
    """``v`` at its own scale: grey images on a diverging map with a colour bar; colour ones amplified to [0, 1]."""
    bound = max(float(np.max(np.abs(v))), 1e-12)
    title = "\n".join(label[i:i + 22] for i in range(0, len(label), 22))  # long names wrap, not cut
    if v.shape[-1] == 1:
        im = ax.imshow(v[..., 0], cmap="RdBu_r", vmin=-bound, vmax=bound)
        bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        bar.ax.tick_params(labelsize=6)
    else:
        ax.imshow(np.clip(0.5 + 0.5 * v / bound, 0.0, 1.0))
        title += f"\n(x{0.5 / bound:.3g})"
    ax.set_title(title, fontsize=7)
    ax.axis("off")


def save_uap_images(uaps: Mapping[str, np.ndarray], folder: str) -> List[str]:
    """Saves each UAP as ``<stem>.png`` (pixel for pixel, at its own scale: ``0.5 + 0.5 v / max|v|``); returns the names.

    ``uaps`` maps a file stem (the row's ``.npy`` without ``.npy``) to ``v``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    for stem, v in uaps.items():
        v = np.asarray(v, np.float32)
        image = np.clip(0.5 + 0.5 * v / max(float(np.max(np.abs(v))), 1e-12), 0.0, 1.0)
        path = os.path.join(folder, f"{stem}.png")
        image = image[..., 0] if image.shape[-1] == 1 else image
        io.atomic_write(path, lambda f: plt.imsave(f, image, cmap="gray", vmin=0.0, vmax=1.0, format="png"))
        names.append(f"{stem}.png")
    return names


def _show(ax, image: np.ndarray, title: str, color: str = "black") -> None:
    image = np.clip(image, 0.0, 1.0)
    if image.shape[-1] == 1:
        ax.imshow(image[..., 0], cmap="gray", vmin=0, vmax=1)
    else:
        ax.imshow(image)
    ax.set_title(title, fontsize=7, color=color)
    ax.axis("off")


def print_results(results: Dict[str, Any]) -> None:
    """Prints the result table of :func:`run_attacks`, saying on which split and how many inputs, then the metrics.

    >>> print_results({"config": {"num_eval": 50, "eval_split": "test", "num_craft": 64, "craft_split": "train"},
    ...     "results": [dict(attack="sgd_uap", norm="linf", eps=0.1, uer=0.25, fooling_rate=0.2,
    ...     clean_accuracy=0.9, seconds=1.5, seed=0)], "metrics": {"universality_ratio": 0.5, "num_inputs": 20}})
    UER, fooling rate and clean accuracy on 50 test inputs; UAPs crafted on 64 train inputs
    attack            seed  norm      eps     UER  fooling  clean acc  seconds
    sgd_uap              0  linf    0.100   0.250    0.200      0.900      1.5
    Jacobian metrics on the first 20 test inputs:
      universality_ratio: 0.5
    """
    num = lambda v, spec: "n/a" if v is None else format(v, spec)
    config = results.get("config") or {}
    if "num_eval" in config:
        crafted = f"; UAPs crafted on {config['num_craft']} {config.get('craft_split', 'train')} inputs" \
            if any(r.get("universal", True) for r in results["results"]) else ""
        print(f"UER, fooling rate and clean accuracy on {config['num_eval']} {config.get('eval_split', 'test')} "
              f"inputs{crafted}")
    print(f"{'attack':<18}{'seed':>4}  {'norm':<6}{'eps':>7}{'UER':>8}{'fooling':>9}{'clean acc':>11}{'seconds':>9}")
    for row in results["results"]:
        print(f"{row['attack']:<18}{row.get('seed', ''):>4}  {row['norm']:<6}{row['eps']:>7.3f}{num(row['uer'], '.3f'):>8}"
              f"{num(row['fooling_rate'], '.3f'):>9}{num(row['clean_accuracy'], '.3f'):>11}{row['seconds']:>9.1f}")
    m = results.get("metrics") or {}
    shown = [k for k in METRIC_NAMES if k in m and not isinstance(m[k], (list, dict))]
    if shown:
        n = m.get("num_inputs")
        print(f"Jacobian metrics on the first {n if n is not None else 'n/a'} {config.get('eval_split', 'test')} inputs:")
    for key in shown:
        print(f"  {METRIC_NAMES[key]}: {num(m[key], '.4g')}")


#: The metrics the table prints, each with what it is (``stacked_spectral_norm`` grows with the set it stacks).
METRIC_NAMES = {
    "mean_frobenius_sq": "mean_frobenius_sq (mean over inputs of ||J(x)||_F^2)",
    "stacked_spectral_norm": "stacked_spectral_norm (sigma_max of the inputs' Jacobians stacked, not per input)",
    "universality_ratio": "universality_ratio",
    "shared_perturbation_strength": "shared_perturbation_strength",
    "jacobian_cosine": "jacobian_cosine",
    "gram_cosine": "gram_cosine",
}


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
