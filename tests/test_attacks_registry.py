"""The attack registry and the contract every attack in it keeps: return type, budget, box, keys."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jacuap import attacks

KEY = jax.random.PRNGKey(0)
# Per (attack, norm): the crafting-set size and settings of the attack's own
# tests (tests/test_attacks_*.py), cut to one epoch or pass, so that the
# compiled programs (static: shapes, batch sizes, loop lengths) are reused.
UNIVERSAL_CASES = {
    ("sgd_uap", "linf"): (400, dict(num_epochs=1, batch_size=32)),
    ("sgd_uap", "l2"): (400, dict(num_epochs=1, batch_size=100)),
    ("sv_uap", "linf"): (400, dict(method="power", num_iters=5)),
    ("sv_uap", "l2"): (400, dict(method="power", num_iters=5)),
    ("deepfool_uap", "linf"): (400, dict(max_passes=1)),
    ("deepfool_uap", "l2"): (200, dict(max_passes=1, batch_size=64, num_classes=5, aggregate="sequential")),
    ("sga_uap", "linf"): (400, dict(num_epochs=1, batch_size=32)),
    ("sga_uap", "l2"): (400, dict(num_epochs=1, batch_size=100)),
    ("sgd_uap_restarts", "linf"): (400, dict(num_epochs=1, batch_size=32, restarts=2)),
    ("sgd_uap_restarts", "l2"): (400, dict(num_epochs=1, batch_size=100, restarts=2)),
}
EPS = {"linf": 0.2, "l2": 2.0}
PER_INPUT_EPS = {"linf": 0.1, "l2": 1.0}


def test_registry_names():
    assert set(attacks.ATTACKS) == {"sgd_uap", "sv_uap", "deepfool_uap", "sga_uap", "sgd_uap_restarts", "pgd", "fgsm"}
    assert set(attacks.UNIVERSAL_ATTACKS) | set(attacks.PER_INPUT_ATTACKS) == set(attacks.ATTACKS)
    assert not set(attacks.UNIVERSAL_ATTACKS) & set(attacks.PER_INPUT_ATTACKS)
    assert attacks.ATTACKS["sv_uap"] is attacks.singular_vector_uap
    assert attacks.NORMS == ("linf", "l2")


@pytest.mark.parametrize("name,norm", sorted(UNIVERSAL_CASES))
def test_universal_attacks_return_uap_result_in_budget(digits, name, norm):
    d = digits
    n, settings = UNIVERSAL_CASES[name, norm]
    x, y, eps = d["xa"][:n], d["ya"][:n], EPS[norm]
    result = attacks.ATTACKS[name](d["apply_fn"], d["params"], x, y, eps=eps, norm=norm, key=KEY, **settings)
    assert isinstance(result, attacks.UAPResult)
    assert result.v.shape == x.shape[1:]
    assert isinstance(result.history, np.ndarray) and result.history.ndim == 1 and result.history.size > 0
    assert float(attacks.perturbation_norm(result.v, norm)) <= eps * (1 + 1e-5)
    x_adv = jnp.clip(x + result.v, 0.0, 1.0)
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    assert float(attacks.perturbation_norm(x_adv - x, norm, batched=True).max()) <= eps * (1 + 1e-5)


def test_every_universal_attack_is_covered():
    assert {name for name, _ in UNIVERSAL_CASES} == set(attacks.UNIVERSAL_ATTACKS)
    assert {norm for _, norm in UNIVERSAL_CASES} == set(attacks.NORMS)


@pytest.mark.parametrize("norm", attacks.NORMS)
@pytest.mark.parametrize("name", attacks.PER_INPUT_ATTACKS)
def test_per_input_attacks_stay_in_budget_and_box(digits, name, norm):
    d = digits
    x, y, eps = d["xe"], d["ye"], PER_INPUT_EPS[norm]
    x_adv = attacks.ATTACKS[name](d["apply_fn"], d["params"], x, y, eps=eps, norm=norm, key=KEY)
    assert x_adv.shape == x.shape
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    assert float(attacks.perturbation_norm(x_adv - x, norm, batched=True).max()) <= eps * (1 + 1e-5)


@pytest.mark.parametrize("name,settings", [
    ("sgd_uap", {}), ("sv_uap", dict(method="power")), ("deepfool_uap", {}), ("pgd", {}),
])
def test_attacks_that_draw_random_numbers_require_a_key(digits, name, settings):
    d = digits
    x, y = d["xa"][:16], d["ya"][:16]
    with pytest.raises(ValueError, match="key"):
        attacks.ATTACKS[name](d["apply_fn"], d["params"], x, y, eps=0.1, **settings)
