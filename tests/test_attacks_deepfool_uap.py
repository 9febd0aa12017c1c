"""DeepFool-UAP on a small MLP trained on sklearn's digits: budget, strength, stopping, variants."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jacuap import attacks, metrics

SHAPE = (8, 8, 1)
KEY = jax.random.PRNGKey(0)


def test_deepfool_uap_fools_within_budget(digits):
    d = digits
    eps = 0.2
    seen = []
    result = attacks.deepfool_uap(
        d["apply_fn"], d["params"], d["xa"], d["ya"], eps=eps, max_passes=4, key=KEY,
        target_fooling_rate=1.0, progress=lambda i, rate: seen.append((i, rate)),
    )
    assert isinstance(result, attacks.UAPResult)
    v, history = result
    assert v.shape == SHAPE and float(attacks.perturbation_norm(v, "linf")) <= eps + 1e-6
    assert history.shape == (4,)
    assert [i for i, _ in seen] == [0, 1, 2, 3]
    np.testing.assert_allclose([r for _, r in seen], history)
    # The history is the fooling rate on the crafting set.
    np.testing.assert_allclose(
        history[-1], metrics.fooling_rate(d["apply_fn"], d["params"], d["xa"], v), atol=1e-6
    )
    assert history[-1] > 0.25
    rand = eps * jnp.sign(jax.random.normal(jax.random.PRNGKey(3), SHAPE))
    assert metrics.fooling_rate(d["apply_fn"], d["params"], d["xe"], v) > (
        metrics.fooling_rate(d["apply_fn"], d["params"], d["xe"], rand) + 0.15
    )


def test_deepfool_uap_stops_at_target_fooling_rate(digits):
    d = digits
    v, history = attacks.deepfool_uap(
        d["apply_fn"], d["params"], d["xa"], d["ya"], eps=0.3, max_passes=5, target_fooling_rate=0.05, key=KEY
    )
    assert history.shape == (1,) and history[0] >= 0.05


@pytest.mark.parametrize(
    "inner,norm,aggregate,eps",
    [
        ("deepfool", "l2", "sequential", 2.0),
        ("fgsm", "linf", "mean", 0.2),
        ("pgd", "l2", "mean", 2.0),
    ],
)
def test_deepfool_uap_variants_run_within_budget(digits, inner, norm, aggregate, eps):
    d = digits
    v, history = attacks.deepfool_uap(
        d["apply_fn"], d["params"], d["xa"][:200], None, eps=eps, norm=norm, inner=inner,
        aggregate=aggregate, max_passes=2, target_fooling_rate=1.0, batch_size=64, num_classes=5, key=KEY,
    )
    assert float(attacks.perturbation_norm(v, norm)) <= eps * (1 + 1e-5)
    assert history.shape == (2,)
    assert history.max() > 0.05, history


def test_deepfool_uap_argument_errors(digits):
    d = digits
    x = d["xa"][:8]
    with pytest.raises(ValueError, match="key"):
        attacks.deepfool_uap(d["apply_fn"], d["params"], x, eps=0.1)
    with pytest.raises(ValueError, match="inner attack"):
        attacks.deepfool_uap(d["apply_fn"], d["params"], x, eps=0.1, inner="cw", key=KEY)
    with pytest.raises(ValueError, match="aggregate"):
        attacks.deepfool_uap(d["apply_fn"], d["params"], x, eps=0.1, aggregate="max", key=KEY)
