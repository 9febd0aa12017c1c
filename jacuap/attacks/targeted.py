"""Per-class targeted UAPs: one universal perturbation per target class, and the K x K matrix of their success.

:func:`targeted_uap_matrix` crafts ``UAP_t`` for every class ``t`` with a
targeted universal attack (:func:`~jacuap.attacks.sgd_uap.sgd_uap` by
default, or :func:`~jacuap.attacks.sga.sga_uap`, ``targeted=t``) and
measures, on an evaluation set, which source classes each one sends to its
target.  All ``K`` attacks share one compiled program (same model, shapes
and norm; the target is a label array, not a static argument).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jacuap.attacks.balls import check_norm
from jacuap.attacks.result import UAPResult
from jacuap.attacks.sgd_uap import sgd_uap
from jacuap.checks import InputError, check_budget, check_images, check_key, check_labels, check_model_inputs
from jacuap.jacobian import ApplyFn
from jacuap.metrics.rates import predict

__all__ = ["TargetedUAPs", "class_transfer_matrix", "targeted_uap_matrix"]


class TargetedUAPs(NamedTuple):
    """The result of :func:`targeted_uap_matrix` (``K`` classes, inputs of shape ``S``).

    Attributes:
      matrix: ``(K, K)`` NumPy: ``matrix[s, t]`` is the share of evaluation
        inputs of true class ``s`` classified as ``t`` under ``UAP_t``, for
        ``s != t``.  The diagonal is NaN (``UAP_s`` sending class ``s`` to
        ``s`` is no attack; the clean per-class accuracy is ``clean[s, s]``),
        and so is every entry of a row ``s`` without evaluation inputs.
      uaps: ``(K, *S)``: ``uaps[t]`` is ``UAP_t``, within the budget.
      clean: ``(K, K)`` NumPy, the row-normalised confusion matrix without a
        perturbation: ``clean[s, t]`` is the share of class-``s`` inputs
        classified as ``t`` (its diagonal the clean accuracy of each class),
        the baseline of ``matrix``.
      success: ``(K,)`` NumPy: ``success[t]`` is the share of ALL evaluation
        inputs of a class other than ``t`` that ``UAP_t`` sends to ``t``
        (the targeted success rate; weights the rows of ``matrix`` by class
        size).
      clean_success: ``(K,)`` NumPy: the same share without a perturbation.
      histories: ``(K, T)`` NumPy: each attack's ``history``.
    """

    matrix: np.ndarray
    uaps: jax.Array
    clean: np.ndarray
    success: np.ndarray
    clean_success: np.ndarray
    histories: np.ndarray


def class_transfer_matrix(y: Any, predictions: Any, num_classes: int) -> np.ndarray:
    """``(K, K)``: entry ``[s, t]`` is the share of inputs of true class ``s`` predicted ``t``.

    ``predictions`` is ``(N,)`` (one prediction per input: a confusion
    matrix, rows normalised) or ``(K, N)`` (``predictions[t]`` the
    predictions under perturbation ``t``: entry ``[s, t]`` reads column
    ``t`` of it).  A row without inputs is NaN.

    >>> class_transfer_matrix(np.array([0, 0, 1]), np.array([0, 1, 1]), 2).tolist()
    [[0.5, 0.5], [0.0, 1.0]]
    """
    y = np.asarray(y)
    predictions = np.asarray(predictions)
    if predictions.ndim == 1:
        predictions = np.broadcast_to(predictions, (num_classes,) + predictions.shape)
    out = np.full((num_classes, num_classes), np.nan)
    for s in range(num_classes):
        rows = y == s
        if np.any(rows):
            out[s] = np.mean(predictions[:, rows] == np.arange(num_classes)[:, None], axis=1)
    return out


def _success(y: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """``(K,)``: share of the inputs with ``y != t`` predicted ``t`` (``predictions`` ``(K, N)``); NaN if none."""
    out = np.full((num_classes,), np.nan)
    for t in range(num_classes):
        others = y != t
        if np.any(others):
            out[t] = float(np.mean(predictions[t, others] == t))
    return out


def targeted_uap_matrix(
    apply_fn: ApplyFn,
    params: Any,
    x_craft: jax.Array,
    y_craft: Optional[jax.Array],
    x_eval: jax.Array,
    y_eval: jax.Array,
    *,
    eps: float,
    key: Optional[jax.Array] = None,
    norm: str = "linf",
    num_classes: Optional[int] = None,
    attack: Callable[..., UAPResult] = sgd_uap,
    **attack_kwargs: Any,
) -> TargetedUAPs:
    """One targeted UAP per class and the ``K x K`` matrix of where they send each source class.

    For every target ``t`` (key ``split(key, K)[t]``)::

        UAP_t = attack(apply_fn, params, x_craft, eps=eps, norm=norm, targeted=t)
              ~ argmin_{||v||_p <= eps} mean_i min(CE(f(clip(x_i + v, 0, 1)), t), beta)   (sgd_uap)
        M[s, t] = #{i : y_i = s, argmax f(clip(x_i + UAP_t, 0, 1)) = t} / #{i : y_i = s},  s != t

    over the evaluation set ``(x_eval, y_eval)``; ``M[t, t] = NaN`` (see
    :class:`TargetedUAPs`, whose ``clean`` holds the unperturbed baseline
    ``C[s, t]``, with the clean per-class accuracy on its diagonal).

    UAPs are crafted on ALL of ``x_craft`` (inputs already of class ``t``
    cost little gradient, and one set shape means one compiled program for
    all ``K`` targets); ``y_craft`` is only checked (it may be None).

    Args:
      apply_fn: ``(params, x) -> logits``, ``(B, *S) -> (B, K)``.
      params: model parameters.
      x_craft: crafting set ``(N, *S)`` in ``[0, 1]``.
      y_craft: its labels ``(N,)`` or None.
      x_eval, y_eval: evaluation set ``(M, *S)`` and labels ``(M,)``.
      eps: budget radius in pixel units.
      key: PRNG key (required).
      norm: ``"linf"`` or ``"l2"``.
      num_classes: ``K``; default (and checked against) the model's output size.
      attack: a universal attack taking ``targeted`` (``sgd_uap``, ``sga_uap``).
      **attack_kwargs: passed on (``num_epochs``, ``batch_size``, ...).

    Returns:
      :class:`TargetedUAPs` ``(matrix, uaps, clean, success, clean_success, histories)``.

    A linear model on two pixels whose logits are the pixels: the targeted
    UAPs push every input across the diagonal:

    >>> import jax, jax.numpy as jnp
    >>> apply_fn = lambda w, x: x.reshape(len(x), -1) @ w
    >>> x = jnp.array([[0.6, 0.4], [0.7, 0.5], [0.4, 0.6], [0.45, 0.6]])
    >>> y = jnp.array([0, 0, 1, 1])
    >>> r = targeted_uap_matrix(apply_fn, jnp.eye(2), x, y, x, y, eps=0.2, key=jax.random.PRNGKey(0), num_epochs=3)
    >>> r.matrix.tolist(), r.clean.tolist(), r.uaps.shape
    ([[nan, 1.0], [1.0, nan]], [[1.0, 0.0], [0.0, 1.0]], (2, 2))
    """
    check_norm(norm)
    check_key(key, why="by targeted_uap_matrix (the attacks' shuffles)")
    check_budget(eps, norm)
    if "targeted" in attack_kwargs:
        raise ValueError("targeted_uap_matrix sets targeted=t itself, for every class t; do not pass targeted")
    k = check_model_inputs(apply_fn, params, x_craft, "x_craft")
    k_eval = check_model_inputs(apply_fn, params, x_eval, "x_eval")
    k = k if k is not None else k_eval
    if num_classes is not None and k is not None and int(num_classes) != k:
        raise InputError(f"num_classes={num_classes} but the model returns {k} logits")
    k = int(num_classes) if k is None else k
    if y_craft is not None:
        check_labels(y_craft, np.shape(x_craft)[0], k, "y_craft")
    check_images(x_eval, "x_eval")
    check_labels(y_eval, np.shape(x_eval)[0], k, "y_eval")
    x_craft, x_eval = jnp.asarray(x_craft), jnp.asarray(x_eval)
    y_eval = np.asarray(y_eval)

    uaps, histories, preds = [], [], []
    for t, t_key in enumerate(jax.random.split(key, k)):
        v, history = attack(apply_fn, params, x_craft, None, eps=eps, norm=norm, key=t_key, targeted=t,
                            **attack_kwargs)
        uaps.append(v)
        histories.append(np.asarray(history))
        preds.append(predict(apply_fn, params, jnp.clip(x_eval + jnp.asarray(v, x_eval.dtype), 0.0, 1.0)))
    preds = np.stack(preds)
    clean_preds = predict(apply_fn, params, x_eval)
    matrix = class_transfer_matrix(y_eval, preds, k)
    np.fill_diagonal(matrix, np.nan)
    clean_stack = np.broadcast_to(clean_preds, preds.shape)
    return TargetedUAPs(
        matrix=matrix,
        uaps=jnp.stack(uaps),
        clean=class_transfer_matrix(y_eval, clean_preds, k),
        success=_success(y_eval, preds, k),
        clean_success=_success(y_eval, clean_stack, k),
        histories=np.stack(histories),
    )
