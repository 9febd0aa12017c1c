"""The crafting and evaluation sets of an attack run: disjoint, fixed by the request's seed."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from jacuap import data
from jacuap.errors import AttackError

__all__ = ["Sets", "craft_and_eval_sets"]


class Sets(NamedTuple):
    """The crafting set (the attacker's) and the evaluation set (held out), disjoint."""

    x_craft: Any
    y_craft: Any
    x_eval: Any
    y_eval: Any


def craft_and_eval_sets(dataset: data.Dataset, request: Any) -> Sets:
    """``Sets(x_craft, y_craft, x_eval, y_eval)``: disjoint, fixed by ``request.seed``.

    The evaluation set is the first ``num_eval`` test inputs (validation
    inputs with ``eval_split="validation"``); the crafting set ``num_craft``
    random training inputs, or (``craft_split="test"``) random test inputs
    after the evaluation ones (which then take at most half the test split).
    The training split of a model trained with ``num_validation`` lacks the
    held-out inputs: a UAP is never crafted on the inputs it is chosen by.
    """
    rng = np.random.default_rng(request.seed)
    n_test = len(dataset.test_images)
    if getattr(request, "eval_split", "test") == "validation":
        if dataset.validation_images is None:
            raise AttackError("eval_split=validation needs a model trained with a validation split "
                              "(--config.num_validation > 0)")
        idx = rng.permutation(len(dataset.train_images))[: request.num_craft]
        n = min(request.num_eval, len(dataset.validation_images))
        return Sets(dataset.train_images[idx], dataset.train_labels[idx],
                     dataset.validation_images[:n], dataset.validation_labels[:n])
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
    return Sets(x_craft, y_craft, dataset.test_images[eval_idx], dataset.test_labels[eval_idx])
