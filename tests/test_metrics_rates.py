"""Prediction rates (jacuap.metrics.rates) against direct argmax references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jacuap import metrics
from jacuap.metrics import rates

SHAPE = (8, 8, 1)


@pytest.fixture(scope="module")
def digits(trained_digits):
    """The shared trained MLP (conftest.py); its 397 held-out inputs."""
    d = trained_digits
    return dict(apply_fn=d["apply_fn"], params=d["params"], x=d["xe"], y=d["ye"])


def test_predict_pads_the_last_batch(digits):
    d = digits
    expected = np.argmax(d["apply_fn"](d["params"], d["x"]), axis=-1)
    # 397 inputs in batches of 100: the last batch is padded, one compiled step.
    np.testing.assert_array_equal(metrics.predict(d["apply_fn"], d["params"], d["x"], batch_size=100), expected)
    size = rates._predict_batch._cache_size()
    np.testing.assert_array_equal(
        metrics.predict(d["apply_fn"], d["params"], d["x"][:250], batch_size=100), expected[:250]
    )
    assert rates._predict_batch._cache_size() == size
    acc = metrics.accuracy(d["apply_fn"], d["params"], d["x"], d["y"], batch_size=100)
    assert acc == pytest.approx(np.mean(expected == np.asarray(d["y"]))) and acc > 0.9


def test_rates_at_zero_and_under_a_perturbation(digits):
    d = digits
    zero = jnp.zeros(SHAPE)
    acc = metrics.accuracy(d["apply_fn"], d["params"], d["x"], d["y"])
    assert metrics.universal_evasion_rate(d["apply_fn"], d["params"], d["x"], d["y"], zero) == pytest.approx(1 - acc)
    assert metrics.fooling_rate(d["apply_fn"], d["params"], d["x"], zero) == 0.0
    v = 0.4 * jnp.sign(jax.random.normal(jax.random.PRNGKey(0), SHAPE))
    perturbed = np.argmax(d["apply_fn"](d["params"], jnp.clip(d["x"] + v, 0, 1)), axis=-1)
    clean = np.argmax(d["apply_fn"](d["params"], d["x"]), axis=-1)
    uer = metrics.universal_evasion_rate(d["apply_fn"], d["params"], d["x"], d["y"], v, batch_size=100)
    assert uer == pytest.approx(np.mean(perturbed != np.asarray(d["y"])))
    fool = metrics.fooling_rate(d["apply_fn"], d["params"], d["x"], v, batch_size=100)
    assert fool == pytest.approx(np.mean(perturbed != clean)) and fool > 0
