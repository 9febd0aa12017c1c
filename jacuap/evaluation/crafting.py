"""One perturbation of an attack run: a universal attack crafted by registry lookup, per-input
predictions, or a perturbation the user brings (``--uap_file``)."""

from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from jacuap import attacks, metrics
from jacuap.errors import AttackError

__all__ = ["craft", "per_input_predictions", "load_uap_file"]

# Per-input attacks run on the evaluation set in batches of this many inputs.
_PER_INPUT_BATCH = 500


def craft(name: str, apply_fn, params, x, y, eps: float, request: Any, key,
          progress: Optional[Callable[[str], None]] = None,
          cache: Optional[Dict[str, Any]] = None, settings: Optional[Mapping[str, Any]] = None,
          layers: Optional[attacks.Layers] = None) -> Tuple[np.ndarray, Dict[str, Any], Dict[str, Any]]:
    """``(v, report, settings)``: universal attack ``name`` crafted on ``(x, y)``, by registry lookup.

    The attack's settings are its spec's defaults, then the request's fields
    (``request.sgd_epochs`` fills ``num_epochs``, ``request.layer`` the
    layer, ...), then ``settings`` (a suite member's); they come back as run.
    ``key`` seeds the attack's randomness; ``progress(message)`` receives a
    short status after each epoch, restart or pass; ``cache`` (a dict kept
    across the budgets of one crafting set) holds what does not depend on
    ``eps`` (SV-UAP's singular vector); ``layers`` names the model's hidden
    layers for the attacks that read them.  ``report`` holds the spec's extra
    numbers (FG-UAP's feature dominance).
    """
    spec = attacks.ATTACKS[name]
    if not spec.universal:
        raise AttackError(f"{name} is not a universal attack; choose from {', '.join(attacks.universal_names())}")
    resolved = spec.resolve(settings or {}, request)
    crafting = attacks.Crafting(apply_fn, params, x, y, eps, request.norm, key, resolved, progress,
                                {} if cache is None else cache, layers)
    v = np.asarray(attacks.craft(name, crafting).v)
    report = spec.report(crafting, v) if spec.report is not None else {}
    if spec.layers:
        report.setdefault("layer", ",".join(crafting.layer_names(name, "penultimate" if spec.layers == "one"
                                                                 else "hidden")))
    return v, report, resolved


def per_input_predictions(name, apply_fn, params, x, y, eps, norm, key) -> np.ndarray:
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


def load_uap_file(path: str, shape: Sequence[int], norm: str, eps: float) -> np.ndarray:
    """The perturbation in ``path`` (``.npy``), checked: one input's ``shape``, finite, ``||v|| <= eps`` (1e-6 rel.)."""
    try:
        v = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise AttackError(f"--uap_file {path} cannot be read as a .npy array ({type(exc).__name__})") from None
    if tuple(v.shape) != tuple(shape):
        raise AttackError(f"--uap_file {path} has shape {tuple(v.shape)}; the model's inputs have shape {tuple(shape)}")
    if not np.issubdtype(v.dtype, np.floating) or not np.all(np.isfinite(v)):
        raise AttackError(f"--uap_file {path} must hold finite floating-point numbers, got {v.dtype}")
    size = float(np.max(np.abs(v))) if norm == "linf" else float(np.linalg.norm(v))
    if size > eps * (1 + 1e-6):
        raise AttackError(f"--uap_file {path} has {norm} norm {size:.6g} > eps {eps:g}; "
                          f"give a budget at least its norm (--eps)")
    return v.astype(np.float32)
