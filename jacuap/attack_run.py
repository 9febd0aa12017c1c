"""The attack job of ``attack.py``: craft perturbations on one split, evaluate them on another, record.

What ``attack.py``, ``benchmarks/reproduce.py`` and the notebook share.  For
each attack and budget of an :class:`AttackRequest`, a perturbation is
crafted on ``num_craft`` inputs of the crafting split and evaluated on
``num_eval`` test inputs, disjoint from them:

* universal attacks (``jacuap.attacks.UNIVERSAL_ATTACKS``: ``sgd_uap``,
  ``sv_uap``, ``deepfool_uap``) give ONE ``v``; ``uer`` is the universal
  evasion rate ``P[argmax f(clip(x + v, 0, 1)) != y]`` and ``fooling_rate``
  ``P[argmax f(clip(x + v, 0, 1)) != argmax f(x)]``;
* per-input attacks (``pgd``, ``fgsm``) perturb each evaluation input on its
  own; ``uer`` is then their evasion rate, the per-input reference.

Results are written once, complete, through :mod:`jacuap.io` (temporary
file, fsync, rename): the ``.npy`` files and the PNG first, ``results.json``
last, so a killed run leaves whole files or none.  Every local device is
used: the model is :func:`jacuap.parallel.batch_sharded_apply`-wrapped and
its parameters replicated, so each batch of every attack and metric is split
over the devices.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from jacuap import attacks, batching, data, io, jacobian, metrics, parallel
from jacuap.train import checkpoints
from jacuap.errors import AttackError, CheckpointError

__all__ = ["AttackRequest", "craft_and_eval_sets", "craft", "run_attacks", "plot_uaps", "print_results"]

# Per-input attacks run on the evaluation set in batches of this many inputs.
_PER_INPUT_BATCH = 500


@dataclasses.dataclass(frozen=True)
class AttackRequest:
    """Everything one attack run needs; validated on construction (``AttackError``, one line).

    ``attacks`` are names of ``jacuap.attacks.ATTACKS``, ``norm`` one of
    ``jacuap.attacks.NORMS``, ``eps`` the budgets in pixel units (l_inf
    ``eps`` in ``[0, 1]``); ``out`` is the output folder.

    >>> AttackRequest(workdir="w", attacks=["sgd_uap"], norm="linf", eps=[0.1], out="o").num_craft
    5000
    >>> AttackRequest(workdir="w", attacks=["carlini"], norm="linf", eps=[0.1], out="o")
    Traceback (most recent call last):
    jacuap.errors.AttackError: unknown attack carlini; choose from sgd_uap, sv_uap, deepfool_uap, pgd, fgsm
    """

    workdir: str
    attacks: Sequence[str]
    norm: str
    eps: Sequence[float]
    out: str
    num_craft: int = 5000
    num_eval: int = 10000
    craft_split: str = "train"
    num_metrics: int = 500
    sgd_epochs: int = 5
    deepfool_passes: int = 5
    seed: int = 0
    progress: bool = True

    def __post_init__(self):
        unknown = [a for a in self.attacks if a not in attacks.ATTACKS]
        if unknown or not self.attacks:
            raise AttackError(f"unknown attack {', '.join(unknown) or '(none)'}; "
                              f"choose from {', '.join(attacks.ATTACKS)}")
        if self.norm not in attacks.NORMS:
            raise AttackError(f"unknown norm {self.norm!r}; choose {' or '.join(attacks.NORMS)}")
        if not self.eps:
            raise AttackError("give at least one eps")
        for e in self.eps:
            if not math.isfinite(e) or e < 0:
                raise AttackError(f"eps must be a finite number >= 0, got {e}")
            if self.norm == "linf" and e > 1:
                raise AttackError(f"linf eps must be in [0, 1] (pixel units), got {e}")
        for name in ("num_craft", "num_eval", "sgd_epochs", "deepfool_passes"):
            if getattr(self, name) <= 0:
                raise AttackError(f"{name} must be positive, got {getattr(self, name)}")
        if self.num_metrics < 0:
            raise AttackError(f"num_metrics must be >= 0, got {self.num_metrics}")
        if self.craft_split not in ("train", "test"):
            raise AttackError(f"craft_split must be train or test, got {self.craft_split!r}")

    @classmethod
    def from_flags(cls, flags) -> "AttackRequest":
        """The request of ``attack.py``'s flags (``--eps`` a comma list of numbers)."""
        try:
            eps = [float(e) for e in flags.eps]
        except ValueError:
            raise AttackError(f"eps must be a comma list of numbers, got {','.join(flags.eps)!r}") from None
        return cls(
            workdir=flags.workdir,
            attacks=[a.strip() for a in flags.attack if a.strip()],
            norm=flags.norm,
            eps=eps,
            out=flags.out or os.path.join(flags.workdir, "attack"),
            num_craft=flags.num_craft,
            num_eval=flags.num_eval,
            craft_split=flags.craft_split,
            num_metrics=flags.num_metrics,
            sgd_epochs=flags.sgd_epochs,
            deepfool_passes=flags.deepfool_passes,
            seed=flags.seed,
            progress=flags.progress,
        )


def craft_and_eval_sets(dataset: data.Dataset, request: AttackRequest):
    """``(x_craft, y_craft, x_eval, y_eval)``: disjoint, fixed by ``request.seed``.

    The evaluation set is the first ``num_eval`` test inputs; the crafting
    set ``num_craft`` random training inputs, or (``craft_split="test"``)
    random test inputs after the evaluation ones (which then take at most
    half the test split).
    """
    rng = np.random.default_rng(request.seed)
    n_test = len(dataset.test_images)
    if request.craft_split == "train":
        idx = rng.permutation(len(dataset.train_images))[: request.num_craft]
        x_craft, y_craft = dataset.train_images[idx], dataset.train_labels[idx]
        eval_idx = np.arange(min(request.num_eval, n_test))
    else:
        if n_test < 2:
            raise AttackError("the test split is too small to hold disjoint craft and eval sets")
        num_eval = min(request.num_eval, n_test // 2)
        eval_idx = np.arange(num_eval)
        rest = num_eval + rng.permutation(n_test - num_eval)[: request.num_craft]
        x_craft, y_craft = dataset.test_images[rest], dataset.test_labels[rest]
    return x_craft, y_craft, dataset.test_images[eval_idx], dataset.test_labels[eval_idx]


def craft(name: str, apply_fn, params, x, y, eps: float, request: AttackRequest, key,
          progress: Optional[Callable[[int, float], None]] = None,
          cache: Optional[Dict[str, Any]] = None) -> np.ndarray:
    """The universal perturbation of attack ``name`` crafted on ``(x, y)``: shape of one input.

    ``key`` seeds the attack's randomness; ``progress(pass, fooling_rate)``
    is called by DeepFool-UAP.  ``cache`` (a dict kept across the budgets of
    one crafting set) holds the singular vector of ``sv_uap``, which depends
    on the model and the set but not on ``eps``.
    """
    if name == "sgd_uap":
        result = attacks.sgd_uap(apply_fn, params, x, y, eps=eps, norm=request.norm, key=key,
                                 num_epochs=request.sgd_epochs)
    elif name == "sv_uap":
        cache = {} if cache is None else cache
        if "sv_direction" not in cache:
            batch = batching.round_up(min(256, len(x)), parallel.batch_multiple(apply_fn))
            _, cache["sv_direction"] = jacobian.stacked_spectral_norm(
                apply_fn, params, jnp.asarray(x), key, batch_size=batch, method="auto", loop="host")
        result = attacks.singular_vector_uap(apply_fn, params, x, y, eps=eps, norm=request.norm,
                                             direction=cache["sv_direction"])
    elif name == "deepfool_uap":
        result = attacks.deepfool_uap(apply_fn, params, x, y, eps=eps, norm=request.norm, key=key,
                                      max_passes=request.deepfool_passes, progress=progress)
    else:
        raise AttackError(f"{name} is not a universal attack; choose from {', '.join(attacks.UNIVERSAL_ATTACKS)}")
    return np.asarray(result.v)


def _per_input_predictions(name, apply_fn, params, x, y, eps, norm, key) -> np.ndarray:
    """Predictions on per-input adversarial examples, batch by batch (pgd's key folded with the offset)."""
    preds = []
    for start in range(0, len(x), _PER_INPUT_BATCH):
        xb = jnp.asarray(x[start:start + _PER_INPUT_BATCH])
        yb = jnp.asarray(y[start:start + _PER_INPUT_BATCH])
        if name == "pgd":
            x_adv = attacks.pgd(apply_fn, params, xb, yb, eps=eps, norm=norm, key=jax.random.fold_in(key, start))
        else:
            x_adv = attacks.fgsm(apply_fn, params, xb, yb, eps=eps, norm=norm)
        preds.append(metrics.predict(apply_fn, params, x_adv))
    return np.concatenate(preds)


def _restore(request: AttackRequest):
    """The newest checkpoint of ``request.workdir`` on every local device, and its dataset."""
    restored = checkpoints.restore_model(request.workdir)
    config = restored.config
    dataset = data.load_dataset(config.dataset, config.data_dir or None, seed=config.seed)
    expected = restored.meta["model_spec"]["image_shape"]
    if tuple(dataset.image_shape) != tuple(expected):
        raise CheckpointError(f"the checkpoint expects inputs {expected}, "
                              f"the dataset gives {list(dataset.image_shape)}")
    mesh = parallel.make_mesh(jax.local_devices())
    apply_fn = parallel.batch_sharded_apply(restored.apply_fn, mesh)
    return restored, dataset, apply_fn, parallel.replicate(restored.params, mesh)


def run_attacks(request: AttackRequest) -> Dict[str, Any]:
    """Runs every (attack, eps) of ``request``; writes ``request.out`` and returns the results dict.

    The dict (also ``out/results.json``) has ``config`` (what was run),
    ``results`` (one row per (attack, eps): ``uer``, ``fooling_rate``,
    ``clean_accuracy``, ``perturbation_norm``, ``seconds``, the ``.npy``
    ``file`` of a UAP) and ``metrics`` (:func:`jacuap.metrics.jacobian_metrics`
    on the first ``num_metrics`` evaluation inputs).  Raises CheckpointError
    (before writing anything) for a workdir without a usable checkpoint.
    """
    restored, dataset, apply_fn, params = _restore(request)
    x_craft, y_craft, x_eval, y_eval = craft_and_eval_sets(dataset, request)
    os.makedirs(request.out, exist_ok=True)
    key = jax.random.PRNGKey(request.seed)
    rows, uaps = _attack_rows(request, apply_fn, params, x_craft, y_craft, x_eval, y_eval, key)

    metric_values: Dict[str, Any] = {}
    if request.num_metrics:
        n = min(request.num_metrics, len(x_eval))
        metric_values = metrics.jacobian_metrics(apply_fn, params, x_eval[:n], y_eval[:n], key,
                                                 num_pairs_inputs=min(200, n))
        metric_values["num_inputs"] = n
    if uaps:
        plot_uaps(uaps, apply_fn, params, x_eval[:4], os.path.join(request.out, "uaps.png"))
    config = restored.config
    results = {
        "config": {
            "workdir": os.path.abspath(request.workdir),
            "dataset": config.dataset,
            "model": config.model,
            "jr_lambda": float(config.jr_lambda),
            "checkpoint_step": restored.step,
            "attacks": list(request.attacks),
            "norm": request.norm,
            "eps": list(request.eps),
            "num_craft": len(x_craft),
            "num_eval": len(x_eval),
            "craft_split": request.craft_split,
            "seed": request.seed,
        },
        "results": rows,
        "metrics": metric_values,
    }
    io.write_json_atomic(os.path.join(request.out, "results.json"), results)
    return results


def _attack_rows(request, apply_fn, params, x_craft, y_craft, x_eval, y_eval,
                 key) -> Tuple[List[Dict[str, Any]], Dict[str, np.ndarray]]:
    """One result row per (attack, eps), and the UAPs by label; each UAP saved as ``.npy``."""
    from tqdm.auto import tqdm

    clean_pred = metrics.predict(apply_fn, params, x_eval)
    clean_accuracy = float(np.mean(clean_pred == y_eval))
    tasks = [(a, e) for a in request.attacks for e in request.eps]
    rows: List[Dict[str, Any]] = []
    uaps: Dict[str, np.ndarray] = {}
    cache: Dict[str, Any] = {}
    bar = tqdm(tasks, desc="attacks", disable=not request.progress, dynamic_ncols=True)
    for name, eps in bar:
        bar.set_postfix_str(f"{name} eps={eps:g}")
        task_key = jax.random.fold_in(key, len(rows))
        start = time.time()
        universal = name in attacks.UNIVERSAL_ATTACKS
        if universal:
            progress = (lambda i, rate: bar.set_postfix_str(
                f"{name} eps={eps:g} pass {i + 1} fooling {rate:.3f}"))
            v = craft(name, apply_fn, params, x_craft, y_craft, eps, request, task_key, progress, cache)
            pred = metrics.predict(apply_fn, params, np.clip(x_eval + v, 0.0, 1.0))
            file = f"{name}_{request.norm}_eps{eps:g}.npy"
            io.save_npy_atomic(os.path.join(request.out, file), v)
            uaps[f"{name} eps={eps:g}"] = v
            norm_of_v = float(np.max(np.abs(v)) if request.norm == "linf" else np.linalg.norm(v))
        else:
            pred = _per_input_predictions(name, apply_fn, params, x_eval, y_eval, eps, request.norm, task_key)
            file, norm_of_v = None, None
        rows.append({
            "attack": name,
            "norm": request.norm,
            "eps": eps,
            "universal": universal,
            "uer": float(np.mean(pred != y_eval)),
            "fooling_rate": float(np.mean(pred != clean_pred)),
            "clean_accuracy": clean_accuracy,
            "perturbation_norm": norm_of_v,
            "seconds": time.time() - start,
            "file": file,
        })
    bar.close()
    return rows, uaps


def plot_uaps(uaps: Dict[str, np.ndarray], apply_fn, params, x: np.ndarray, path: str) -> None:
    """Saves a figure with one row per UAP: the UAP (amplified to the full grey range), then ``x + v``.

    Each perturbed input is titled ``clean prediction -> perturbed prediction``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, cols = len(uaps), 1 + len(x)
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.7 * rows), squeeze=False)
    clean = metrics.predict(apply_fn, params, x)
    for r, (label, v) in enumerate(uaps.items()):
        scale = max(float(np.max(np.abs(v))), 1e-12)
        _show(axes[r, 0], 0.5 + 0.5 * v / scale, f"{label}\n(amplified)")
        perturbed = np.clip(x + v, 0.0, 1.0)
        pred = metrics.predict(apply_fn, params, perturbed)
        for c in range(len(x)):
            _show(axes[r, c + 1], perturbed[c], f"{clean[c]} -> {pred[c]}")
    fig.tight_layout()
    try:
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
    ...     fooling_rate=0.2, clean_accuracy=0.9, seconds=1.5)], "metrics": {"universality_ratio": 0.5}})
    attack        norm      eps     UER  fooling  clean acc  seconds
    sgd_uap       linf    0.100   0.250    0.200      0.900      1.5
      universality_ratio: 0.5
    """
    print(f"{'attack':<14}{'norm':<6}{'eps':>7}{'UER':>8}{'fooling':>9}{'clean acc':>11}{'seconds':>9}")
    for row in results["results"]:
        print(f"{row['attack']:<14}{row['norm']:<6}{row['eps']:>7.3f}{row['uer']:>8.3f}"
              f"{row['fooling_rate']:>9.3f}{row['clean_accuracy']:>11.3f}{row['seconds']:>9.1f}")
    m = results.get("metrics") or {}
    for key in ("mean_frobenius_sq", "stacked_spectral_norm", "universality_ratio",
                "shared_perturbation_strength", "jacobian_cosine", "gram_cosine"):
        if key in m and not isinstance(m[key], (list, dict)):
            print(f"  {key}: {m[key]:.4g}")
