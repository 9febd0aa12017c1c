"""The targeted matrix of an attack run: one targeted SGD-UAP per class and budget, its K x K success
matrix (source class x target class) and its heat map."""

from __future__ import annotations

import os
import time
from typing import Any, Dict, List, Mapping, Sequence

import jax
import numpy as np

from jacuap import attacks, io, metrics
from jacuap.evaluation import store

__all__ = ["targeted_figure_name", "targeted_row", "targeted_rows", "plot_targeted"]


def targeted_figure_name(eps: float) -> str:
    """The heat map of one budget's targeted matrix.

    >>> targeted_figure_name(0.1)
    'targeted_eps0.1.png'
    """
    return f"targeted_eps{store.canonical_eps(eps):.{store.EPS_DIGITS}g}.png"


def targeted_row(matrix: np.ndarray, success: np.ndarray, clean: np.ndarray, class_names: Sequence[str],
                 **fields: Any) -> Dict[str, Any]:
    """The row of one targeted matrix: ``matrix[s][t]`` (source s, target t; diagonal null), by class name."""
    return {**fields, "class_names": list(class_names), "matrix": np.asarray(matrix).tolist(),
            "success": {str(c): float(r) for c, r in zip(class_names, success)},
            "clean": np.asarray(clean).tolist(), "figure": targeted_figure_name(fields["eps"])}


def targeted_rows(request: Any, model: Any, crafter: Any, sets: Sequence[Any],
                  class_names: Sequence[Any], epochs: int, source: Mapping[str, Any]) -> List[Dict[str, Any]]:
    """One targeted matrix per budget of ``request`` (:func:`jacuap.attacks.targeted_uap_matrix`), resumable.

    The ``K`` targeted SGD-UAPs (``epochs`` epochs) are crafted with
    ``crafter`` on the crafting set and evaluated with ``model`` (both with
    ``apply_fn`` and ``params``: :class:`~jacuap.evaluation.restoring.AttackedModel`) on the
    evaluation set; row ``targeted_<norm>_eps<eps>_seed<seed>`` (its ``.npy``
    holds the ``(K, *S)`` UAPs), figure ``targeted_eps<eps>.png``.  Budget
    ``b`` is keyed by ``fold_in(PRNGKey(seed), 2**20 + b)``.
    """
    apply_fn, params = model.apply_fn, model.params
    x_craft, y_craft, x_eval, y_eval = sets
    k = len(class_names)
    names = [str(c) for c in class_names]
    out: List[Dict[str, Any]] = []
    clean_pred = None
    for b, eps in enumerate(request.eps):
        stem = store.stem("targeted", request.norm, eps, request.seed)
        figure = os.path.join(request.out, targeted_figure_name(eps))
        row = store.load_row(request.out, stem, {"attack": "targeted", "norm": request.norm, "eps": eps,
                                                        "seed": request.seed})
        if row is None:
            store.remove_results(request.out)
            start = time.time()
            key = jax.random.fold_in(jax.random.PRNGKey(request.seed), 2**20 + b)
            r = attacks.targeted_uap_matrix(crafter.apply_fn, crafter.params, x_craft, y_craft, x_craft[:1], y_craft[:1],
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
            store.save_row(request.out, stem, row, uaps)
            row = store.finite_or_null(row)
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
