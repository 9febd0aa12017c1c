"""The attack registry and the contract every attack in it keeps: return type, budget, box, keys, dispatch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jacuap import attacks, models

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
    ("layer_max", "linf"): (400, dict(num_epochs=1, batch_size=32, features="dense0")),
    ("layer_max", "l2"): (400, dict(num_epochs=1, batch_size=100, features="dense0")),
    ("cosine_uap", "linf"): (400, dict(num_epochs=1, batch_size=32)),
    ("cosine_uap", "l2"): (400, dict(num_epochs=1, batch_size=100)),
    ("fg_uap", "linf"): (400, dict(num_epochs=1, batch_size=32, features="dense0")),
    ("fg_uap", "l2"): (400, dict(num_epochs=1, batch_size=100, features="dense0")),
    ("gd_uap", "linf"): (400, dict(num_epochs=1, batch_size=32, prior="data", features=("dense0",))),
    ("gd_uap", "l2"): (400, dict(num_epochs=1, batch_size=100, prior="data", features=("dense0",))),
    ("gap_uap", "linf"): (400, dict(num_epochs=1, batch_size=32)),
    ("gap_uap", "l2"): (400, dict(num_epochs=1, batch_size=100)),
}
EPS = {"linf": 0.2, "l2": 2.0}
PER_INPUT_EPS = {"linf": 0.1, "l2": 1.0}


def _features(model, settings):
    settings = dict(settings)
    layer = settings.pop("features", None)
    if isinstance(layer, tuple):
        settings["features_fn"] = models.layers_features_fn(model, layer)
    elif layer:
        settings["features_fn"] = models.layer_features_fn(model, layer)
    return settings


def test_registry_names_and_specs():
    assert set(attacks.universal_names()) == {"sgd_uap", "sv_uap", "deepfool_uap", "sga_uap", "sgd_uap_restarts",
                                              "layer_max", "cosine_uap", "fg_uap", "gd_uap", "gap_uap"}
    assert set(attacks.per_input_names()) == {"pgd", "fgsm"}
    assert set(attacks.universal_names()) | set(attacks.per_input_names()) == set(attacks.ATTACKS)
    assert attacks.ATTACKS["sv_uap"].fn is attacks.singular_vector_uap
    assert attacks.NORMS == ("linf", "l2")
    # What the programs read from a spec, for the attacks whose answer is known.
    assert not attacks.ATTACKS["gd_uap"].needs_data and not attacks.ATTACKS["gd_uap"].needs_labels
    assert attacks.ATTACKS["cosine_uap"].needs_data and not attacks.ATTACKS["cosine_uap"].needs_labels
    assert attacks.ATTACKS["gd_uap"].layers == "many" and attacks.ATTACKS["fg_uap"].layers == "one"
    assert {n for n, s in attacks.ATTACKS.items() if s.targeted} == {"sgd_uap", "sga_uap", "sgd_uap_restarts",
                                                                       "gap_uap"}
    for spec in attacks.ATTACKS.values():
        assert spec.summary, spec.name


@pytest.mark.parametrize("name,norm", sorted(UNIVERSAL_CASES))
def test_universal_attacks_return_uap_result_in_budget(digits, name, norm):
    d = digits
    n, settings = UNIVERSAL_CASES[name, norm]
    x, y, eps = d["xa"][:n], d["ya"][:n], EPS[norm]
    result = attacks.ATTACKS[name](d["apply_fn"], d["params"], x, y, eps=eps, norm=norm, key=KEY,
                                   **_features(d["model"], settings))
    assert isinstance(result, attacks.UAPResult)
    assert result.v.shape == x.shape[1:]
    assert isinstance(result.history, np.ndarray) and result.history.ndim == 1 and result.history.size > 0
    assert np.all(np.isfinite(np.asarray(result.v))) and np.any(np.asarray(result.v) != 0)
    assert float(attacks.perturbation_norm(result.v, norm)) <= eps * (1 + 1e-5)
    x_adv = jnp.clip(x + result.v, 0.0, 1.0)
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    assert float(attacks.perturbation_norm(x_adv - x, norm, batched=True).max()) <= eps * (1 + 1e-5)


def test_every_universal_attack_is_covered():
    assert {name for name, _ in UNIVERSAL_CASES} == set(attacks.universal_names())
    assert {norm for _, norm in UNIVERSAL_CASES} == set(attacks.NORMS)


@pytest.mark.parametrize("norm", attacks.NORMS)
@pytest.mark.parametrize("name", attacks.per_input_names())
def test_per_input_attacks_stay_in_budget_and_box(digits, name, norm):
    d = digits
    x, y, eps = d["xe"], d["ye"], PER_INPUT_EPS[norm]
    x_adv = attacks.ATTACKS[name](d["apply_fn"], d["params"], x, y, eps=eps, norm=norm, key=KEY)
    assert x_adv.shape == x.shape
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    assert float(attacks.perturbation_norm(x_adv - x, norm, batched=True).max()) <= eps * (1 + 1e-5)


@pytest.mark.parametrize("name,settings", [
    ("sgd_uap", {}), ("sv_uap", dict(method="power")), ("deepfool_uap", {}), ("pgd", {}), ("cosine_uap", {}),
    ("gap_uap", {}), ("gd_uap", dict(prior="data", features=("dense0",))),
])
def test_attacks_that_draw_random_numbers_require_a_key(digits, name, settings):
    d = digits
    x, y = d["xa"][:16], d["ya"][:16]
    with pytest.raises(ValueError, match="key"):
        attacks.ATTACKS[name](d["apply_fn"], d["params"], x, y, eps=0.1, **_features(d["model"], settings))


def test_craft_dispatches_through_the_registry_with_layers(digits):
    """``craft`` finds the layer attacks' default layers by name, and a toy attack runs by registration alone."""
    d = digits
    layers = attacks.Layers(lambda: models.layer_names(d["model"], d["params"], d["xa"][:1]),
                            lambda names: models.layers_features_fn(d["model"], names))
    assert layers.names() == ["Normalize_0", "dense0", "logits"]

    def crafting(settings):
        return attacks.Crafting(d["apply_fn"], d["params"], d["xa"][:64], d["ya"][:64], 0.1, "linf", KEY,
                                settings, layers=layers)

    fg = crafting(attacks.ATTACKS["fg_uap"].resolve({"num_epochs": 1, "batch_size": 32}))
    assert fg.layer_names("fg_uap", "penultimate") == ["dense0"]
    gd = crafting(attacks.ATTACKS["gd_uap"].resolve({"num_epochs": 1}))
    assert gd.layer_names("gd_uap", "hidden") == ["dense0"]  # Normalize_0 has no parameters
    assert attacks.craft("fg_uap", fg).v.shape == (8, 8, 1)
    with pytest.raises(ValueError, match="no setting 'epochs'"):
        attacks.ATTACKS["fg_uap"].resolve({"epochs": 1})

    toy = attacks.AttackSpec("toy_registry_uap", lambda apply_fn, params, x, y, *, eps, norm, key, sign:
                             attacks.UAPResult(sign * eps * jnp.ones(x.shape[1:]), np.zeros(1)),
                             settings={"sign": 1.0}, summary="v = sign * eps * 1")
    attacks.register(toy)
    try:
        v = attacks.craft("toy_registry_uap", crafting(toy.resolve({"sign": -1.0}))).v
        assert float(v.min()) == float(v.max()) == pytest.approx(-0.1)
        with pytest.raises(ValueError, match="registered already"):
            attacks.register(attacks.AttackSpec("toy_registry_uap", lambda *a, **k: None))
    finally:
        del attacks.ATTACKS["toy_registry_uap"]


def test_a_model_without_hidden_layers_is_a_layer_error():
    """GD-UAP's default (the hidden layers with parameters) on a linear model: a LayerError, which the
    evaluation job words as a one-line user error before any work."""
    params = {"logits": {"kernel": jnp.ones((4, 3)), "bias": jnp.zeros(3)}}
    layers = attacks.Layers(lambda: ["Normalize_0", "logits"], lambda names: None)
    crafting = attacks.Crafting(lambda p, x: x.reshape(len(x), -1) @ p["logits"]["kernel"], params,
                                jnp.zeros((1, 2, 2, 1)), None, 0.1, "linf", KEY, {}, layers=layers)
    with pytest.raises(attacks.LayerError, match="no hidden layer to attack"):
        crafting.layer_names("gd_uap", "hidden")
    assert crafting.layer_names("fg_uap", "penultimate") == ["Normalize_0"]
    with pytest.raises(attacks.LayerError, match="no layer 'dense9'"):
        layers.features(["dense9"])
