"""The zoo beyond SGD-UAP: Cosine-UAP, FG-UAP, GD-UAP, GAP, on models whose answer is known or checkable.

* Cosine-UAP on a 4-class linear model of 2 pixels, where the best UER of ANY
  shared shift in the l_inf box is found by a 401 x 401 grid: with real and
  with proxy (range-prior) data it must come within 0.02 of it.  (On a
  binary model the two logits are collinear and the cosine has no gradient.)
* The data-free attacks never read data: the crafting set handed to them
  raises on any access but its shape and length.
* FG-UAP gathers the features it attacks (the dominance rises); GD-UAP
  raises the layers' norms; targeted GAP raises its target's share.
* Hidden layers by name on an NNX model equal the hand-computed ones.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jacuap import attacks, metrics, models

KEY = jax.random.PRNGKey(0)


def _linear_problem():
    rng = np.random.RandomState(0)
    k, d, n = 4, 2, 400
    w = rng.normal(size=(d, k)).astype(np.float32)
    b = (-(0.5 * np.ones(d)) @ w + 0.05 * rng.normal(size=k)).astype(np.float32)  # every class near x = 0.5
    x = rng.uniform(0.3, 0.7, size=(n, d)).astype(np.float32)
    params = (jnp.asarray(w), jnp.asarray(b))
    y = np.argmax(x @ w + b, axis=-1)
    return params, x, y


def _linear_apply(params, x):
    return x.reshape(len(x), -1) @ params[0] + params[1]


@functools.lru_cache(maxsize=None)
def _grid_best(eps):
    """The best UER of v on a 401 x 401 grid of the l_inf box (inputs stay inside [0, 1]: no clipping)."""
    params, x, y = _linear_problem()
    w, b = (np.asarray(p, np.float64) for p in params)
    g = np.linspace(-eps, eps, 401)
    v = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)
    best = 0.0
    for chunk in np.array_split(v, 40):  # 4,000 shifts x 400 inputs x 4 classes at a time
        logits = (x[None].astype(np.float64) + chunk[:, None]) @ w + b
        best = max(best, float(np.max(np.mean(np.argmax(logits, -1) != y[None], axis=1))))
    return best


@pytest.mark.parametrize("attack", ["cosine_uap", "cosine_uap_range", "fg_uap"])
@pytest.mark.parametrize("eps", [0.05, 0.1])
def test_cosine_attacks_reach_the_best_shared_shift_of_a_linear_model(attack, eps):
    """Cosine-UAP on data and on the range prior; FG-UAP with the logits as its layer (the same objective)."""
    params, x, y = _linear_problem()
    assert len(set(y.tolist())) == 4  # a multi-class problem: the cosine has a gradient
    best = _grid_best(eps)
    if attack == "fg_uap":
        v, _ = attacks.fg_uap(_linear_apply, params, x, eps=eps, key=KEY, features_fn=_linear_apply, batch_size=50)
    else:
        prior = "range" if attack == "cosine_uap_range" else "data"
        v, _ = attacks.cosine_uap(_linear_apply, params, x if prior == "data" else None, eps=eps, key=KEY,
                                  prior=prior, input_shape=(2,), num_inputs=len(x), batch_size=50)
    assert float(jnp.max(jnp.abs(v))) <= eps * (1 + 1e-6)
    uer = metrics.universal_evasion_rate(_linear_apply, params, x, y, v)
    assert best - 0.02 <= uer <= best + 0.01, (attack, eps, uer, best)


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 0.5)])
def test_cosine_attacks_start_at_a_random_point_of_the_ball(norm, eps):
    """cos(f(x + v), f(x)) is at its maximum at v = 0, so its gradient there is rounding noise (exactly 0 under
    some compilers, which left v at 0): the attack starts at a keyed random point of the ball instead."""
    params, x, _ = _linear_problem()
    run = lambda key: attacks.cosine_uap(_linear_apply, params, x, eps=eps, norm=norm, key=key, step_size=0.0,
                                         num_epochs=1, batch_size=50).v  # no step: v is the start
    v, again, other = run(KEY), run(KEY), run(jax.random.PRNGKey(1))
    size = float(jnp.max(jnp.abs(v))) if norm == "linf" else float(jnp.linalg.norm(v))
    assert 0 < size <= eps * (1 + 1e-6)
    assert bool(jnp.all(v == again)) and not bool(jnp.all(v == other))


class _Untouchable:
    """A stand-in crafting set that has a shape and a length, and raises on anything that reads its values."""

    def __init__(self, shape):
        self.shape = tuple(shape)

    def __len__(self):
        return self.shape[0]

    def _refuse(self, *args, **kwargs):
        raise AssertionError("a data-free attack read the crafting data")

    __getitem__ = __array__ = __iter__ = __jax_array__ = _refuse


@pytest.mark.parametrize("name,settings", [("gd_uap", {"prior": "none"}), ("gd_uap", {"prior": "range"}),
                                           ("cosine_uap", {"prior": "range"}), ("cosine_uap", {"prior": "none"})])
def test_data_free_attacks_never_read_the_data(digits, name, settings):
    d = digits
    layers = attacks.Layers(lambda: models.layer_names(d["model"], d["params"], d["xa"][:1]),
                            lambda names: models.layers_features_fn(d["model"], names))
    spec = attacks.ATTACKS[name]
    crafting = attacks.Crafting(d["apply_fn"], d["params"], _Untouchable((64, 8, 8, 1)), _Untouchable((64,)), 0.2,
                                "linf", KEY, spec.resolve({"num_epochs": 1, "batch_size": 32, **settings}),
                                layers=layers)
    v = attacks.craft(name, crafting).v
    assert v.shape == (8, 8, 1) and float(jnp.max(jnp.abs(v))) <= 0.2 + 1e-6 and float(jnp.max(jnp.abs(v))) > 0
    with pytest.raises(ValueError, match="data-free"):  # and the library refuses data it would not use
        attacks.prior_inputs(settings["prior"], d["xa"], KEY, shape=(8, 8, 1), num_inputs=4)


def test_gd_uap_raises_the_layer_norms_without_data(digits):
    d = digits
    features_fn = models.layers_features_fn(d["model"], ["dense0"])
    v, history = attacks.gd_uap(d["apply_fn"], d["params"], eps=0.2, key=KEY, features_fn=features_fn,
                                input_shape=(8, 8, 1), num_inputs=400, num_epochs=2)
    norm = lambda z: float(jnp.mean(jnp.linalg.norm(features_fn(d["params"], z)[0], axis=1)))
    grey = jnp.full((1, 8, 8, 1), 0.5)  # what the no-data prior crafts on
    assert norm(jnp.clip(grey + v, 0, 1)) > 5 * norm(grey)
    assert norm(jnp.clip(d["xe"] + v, 0, 1)) > norm(d["xe"])  # and the real inputs' layer grows too
    assert history[-1] > history[0] + 2.0  # the log norm


def test_fg_uap_gathers_the_features_it_attacks(digits):
    d = digits
    features_fn = models.layer_features_fn(d["model"], "dense0")
    v, _ = attacks.fg_uap(d["apply_fn"], d["params"], d["xa"], eps=0.3, key=KEY, features_fn=features_fn)
    gathering = attacks.feature_gathering(features_fn, d["params"], d["xe"], v)
    assert gathering["perturbed"] > gathering["clean"] + 0.1, gathering
    clean_cos = attacks.LOSSES["cosine"].fn(features_fn(d["params"], d["xe"]), features_fn(d["params"], d["xe"]),
                                            None, 0.0, False)
    assert float(jnp.mean(clean_cos)) == pytest.approx(-1.0, abs=1e-5)  # cos(a, a) = 1


def test_targeted_gap_raises_the_targets_share(digits):
    d = digits
    target = 3
    share = lambda v: float(np.mean(metrics.predict(d["apply_fn"], d["params"], jnp.clip(d["xe"] + v, 0, 1))
                                    == target))
    v, _ = attacks.gap_uap(d["apply_fn"], d["params"], d["xa"], eps=0.3, key=KEY, targeted=target, num_epochs=10,
                           batch_size=32)
    assert share(v) > share(jnp.zeros((8, 8, 1))) + 0.2


def test_layers_of_an_nnx_model_by_name():
    from flax import nnx

    class Net(nnx.Module):
        def __init__(self, num_classes, *, rngs):
            self.hidden = nnx.Linear(4, 5, rngs=rngs)
            self.head = nnx.Linear(5, num_classes, rngs=rngs)

        def __call__(self, x):
            return self.head(jax.nn.relu(self.hidden(x.reshape(len(x), -1))))

    model = models.NNXClassifier(Net, 3)
    x = jax.random.uniform(KEY, (6, 2, 2, 1))
    assert models.layer_names(model, model.params, x[:1]) == ["hidden", "head"]
    (hidden,) = models.layers_features_fn(model, ["hidden"])(model.params, x)
    w, b = model.params["hidden"]["kernel"], model.params["hidden"]["bias"]
    np.testing.assert_allclose(hidden, x.reshape(6, -1) @ w + b, rtol=1e-6)
    # The NNX model's layers drive the layer attacks (a second budget reuses the compiled epoch).
    features_fn = models.layer_features_fn(model, "hidden")
    v, _ = attacks.fg_uap(model.apply_fn, model.params, x, eps=0.1, key=KEY, features_fn=features_fn, num_epochs=1)
    assert v.shape == (2, 2, 1)
