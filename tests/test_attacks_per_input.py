"""FGSM and PGD on a small MLP trained on sklearn's digits: per-example budgets and strength."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jacuap import attacks, metrics


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 1.0)])
def test_fgsm_pgd_budget_and_strength(digits, norm, eps):
    d = digits
    x, y = d["xe"], d["ye"]
    clean = metrics.accuracy(d["apply_fn"], d["params"], x, y)
    x_fgsm = attacks.fgsm(d["apply_fn"], d["params"], x, y, eps=eps, norm=norm)
    x_pgd = attacks.pgd(d["apply_fn"], d["params"], x, y, eps=eps, norm=norm, num_steps=10,
                        key=jax.random.PRNGKey(0))
    for x_adv in (x_fgsm, x_pgd):
        assert x_adv.shape == x.shape
        assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
        size = attacks.perturbation_norm(x_adv - x, norm, batched=True)
        assert float(size.max()) <= eps * (1 + 1e-5)
    acc_fgsm = metrics.accuracy(d["apply_fn"], d["params"], x_fgsm, y)
    acc_pgd = metrics.accuracy(d["apply_fn"], d["params"], x_pgd, y)
    assert acc_fgsm < clean - 0.1 and acc_pgd < clean - 0.1, (clean, acc_fgsm, acc_pgd)
    assert acc_pgd <= acc_fgsm + 0.02, (acc_fgsm, acc_pgd)


def test_pgd_random_start_needs_a_key_and_uses_it(digits):
    d = digits
    x, y = d["xe"], d["ye"]
    run = lambda **kw: attacks.pgd(d["apply_fn"], d["params"], x, y, eps=0.1, **kw)
    with pytest.raises(ValueError, match="key"):
        run()
    # Without the random start there is no randomness, and no key is needed.
    fixed = run(random_start=False)
    a, b = run(key=jax.random.PRNGKey(0)), run(key=jax.random.PRNGKey(1))
    assert not np.array_equal(a, b) and not np.array_equal(a, fixed)
    np.testing.assert_array_equal(a, run(key=jax.random.PRNGKey(0)))


def test_fgsm_is_deterministic_and_ignores_key(digits):
    d = digits
    x, y = d["xe"], d["ye"]
    a = attacks.fgsm(d["apply_fn"], d["params"], x, y, eps=0.1)
    b = attacks.fgsm(d["apply_fn"], d["params"], x, y, eps=0.1, key=jax.random.PRNGKey(5))
    np.testing.assert_array_equal(a, b)
    # l_inf FGSM moves every pixel with a nonzero gradient by exactly eps (unless clipped).
    moved = jnp.abs(a - x)
    inside = (x + 0.1 <= 1.0) & (x - 0.1 >= 0.0) & (moved > 0)
    np.testing.assert_allclose(moved[inside], 0.1, rtol=1e-5)
