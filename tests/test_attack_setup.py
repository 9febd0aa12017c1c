"""evaluation.craft: the universal attacks of the programs, with their status lines."""

import types

import jax
import numpy as np
import pytest

from jacuap import attacks, evaluation

KEY = jax.random.PRNGKey(0)
REQUEST = types.SimpleNamespace(norm="linf", sgd_epochs=2, deepfool_passes=1)


@pytest.mark.parametrize("name,settings,expected", [
    ("sgd_uap", {}, ["epoch 1/2", "epoch 2/2"]),
    ("sga_uap", {"num_epochs": 1}, ["epoch 1/1"]),
    ("sgd_uap_restarts", {"num_epochs": 1, "restarts": 2},
     ["restart 1/2 epoch 1/1", "restart 1/2 crafting UER", "restart 2/2 epoch 1/1", "restart 2/2 crafting UER"]),
    ("deepfool_uap", {}, ["pass 1 fooling rate"]),
])
def test_craft_reports_each_epoch_restart_and_pass(digits, name, settings, expected):
    d = digits
    messages = []
    v, _, used = evaluation.craft(name, d["apply_fn"], d["params"], d["xa"][:200], d["ya"][:200], 0.1, REQUEST,
                                    KEY, messages.append, settings=settings)
    assert {k: used[k] for k in settings} == settings  # a member's settings win over the request's
    assert len(messages) == len(expected)
    assert all(m.startswith(e) for m, e in zip(messages, expected)), messages
    quiet, _, _ = evaluation.craft(name, d["apply_fn"], d["params"], d["xa"][:200], d["ya"][:200], 0.1, REQUEST,
                                     KEY, None, settings=settings)
    np.testing.assert_array_equal(v, quiet)
    assert float(attacks.perturbation_norm(v, "linf")) <= 0.1 * (1 + 1e-6)
