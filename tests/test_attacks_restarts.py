"""Random restarts of universal attacks on a small MLP trained on sklearn's digits: best kept, no retracing."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jacuap import attacks, metrics
from jacuap.attacks.restarts import best_of_restarts, restart_keys, restart_score, sgd_uap_restarts
from jacuap.attacks.sga import sga_uap

SHAPE = (8, 8, 1)
KEY = jax.random.PRNGKey(0)
FAST = dict(num_epochs=2)


def _craft_uer(d, v):
    return metrics.universal_evasion_rate(d["apply_fn"], d["params"], d["xa"], d["ya"], v)


@pytest.mark.parametrize("norm,eps", [("linf", 0.15), ("l2", 1.5)])
def test_restarts_keep_the_best_and_stay_in_budget(digits, norm, eps):
    d = digits
    v, uers = sgd_uap_restarts(d["apply_fn"], d["params"], d["xa"], d["ya"], eps=eps, norm=norm, key=KEY,
                               restarts=3, **FAST)
    assert v.shape == SHAPE and uers.shape == (3,)
    assert float(attacks.perturbation_norm(v, norm)) <= eps * (1 + 1e-5)
    x_adv = jnp.clip(d["xe"] + v, 0.0, 1.0)
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    # The kept UAP's crafting UER is the max over the restarts ...
    assert _craft_uer(d, v) == pytest.approx(uers.max())
    # ... and restart 0 is the plain attack from 0 with its key: restarts never lower the result.
    _, attack_key = restart_keys(KEY, 3)[0]
    plain, _ = attacks.sgd_uap(d["apply_fn"], d["params"], d["xa"], d["ya"], eps=eps, norm=norm, key=attack_key, **FAST)
    assert uers[0] == pytest.approx(_craft_uer(d, plain))
    assert _craft_uer(d, v) >= _craft_uer(d, plain)
    assert _craft_uer(d, v) > _craft_uer(d, jnp.zeros(SHAPE)) + 0.1


def test_random_starts_differ_and_stay_in_the_ball(digits):
    d = digits
    # Zero steps: each run returns its start, so the history scores the starts themselves.
    starts = []
    attack = lambda *a, **k: starts.append(k["init"]) or attacks.sgd_uap(*a, **k)
    v, scores = best_of_restarts(attack, d["apply_fn"], d["params"], d["xa"], d["ya"], eps=0.2, key=KEY, restarts=3,
                                 zero_start=False, step_size=0.0, num_epochs=1)
    assert all(s is not None for s in starts)
    assert not np.allclose(starts[0], starts[1])
    assert all(float(jnp.max(jnp.abs(s))) <= 0.2 for s in starts)
    best = int(np.argmax(scores))
    np.testing.assert_allclose(v, starts[best])


def test_restarts_compile_once(digits):
    d = digits

    def counted_model():
        count = [0]

        def apply_fn(params, x):
            count[0] += 1  # runs only while JAX traces the function
            return d["apply_fn"](params, x)

        return apply_fn, count

    traces = {}
    for restarts in (1, 4):
        apply_fn, count = counted_model()  # a fresh function: nothing cached for it yet
        sgd_uap_restarts(apply_fn, d["params"], d["xa"], d["ya"], eps=0.1, key=KEY, restarts=restarts, **FAST)
        traces[restarts] = count[0]
    assert traces[1] == traces[4], traces


def test_targeted_restarts_rank_by_target_share(digits):
    d = digits
    target = 5
    v, shares = best_of_restarts(sga_uap, d["apply_fn"], d["params"], d["xa"], None, eps=0.25, key=KEY, restarts=2,
                                 targeted=target, num_epochs=2)
    assert shares.shape == (2,)
    assert restart_score(d["apply_fn"], d["params"], d["xa"], None, v, target) == pytest.approx(shares.max())
    assert shares.max() > restart_score(d["apply_fn"], d["params"], d["xa"], None, jnp.zeros(SHAPE), target) + 0.3


def test_restarts_argument_errors(digits):
    d = digits
    args = (d["apply_fn"], d["params"], d["xa"], d["ya"])
    with pytest.raises(ValueError, match="key"):
        sgd_uap_restarts(*args, eps=0.1)
    with pytest.raises(ValueError, match="restarts"):
        sgd_uap_restarts(*args, eps=0.1, key=KEY, restarts=0)
    with pytest.raises(ValueError, match="init"):
        sgd_uap_restarts(*args, eps=0.1, key=KEY, init=jnp.zeros(SHAPE))
    with pytest.raises(ValueError, match="unknown norm"):
        sgd_uap_restarts(*args, eps=0.1, key=KEY, norm="l1")


def test_progress_reports_every_restart_and_epoch(digits):
    d = digits
    restarts_seen, epochs_seen = [], []
    v, scores = sgd_uap_restarts(d["apply_fn"], d["params"], d["xa"], d["ya"], eps=0.1, key=KEY, restarts=3,
                                 progress=lambda r, s: restarts_seen.append((r, s)),
                                 epoch_progress=lambda e, obj: epochs_seen.append(e), **FAST)
    assert [r for r, _ in restarts_seen] == [0, 1, 2]
    np.testing.assert_allclose([s for _, s in restarts_seen], scores)
    assert epochs_seen == [0, 1] * 3
    # The status is observation only: the same UAP without it.
    quiet, _ = sgd_uap_restarts(d["apply_fn"], d["params"], d["xa"], d["ya"], eps=0.1, key=KEY, restarts=3, **FAST)
    np.testing.assert_array_equal(v, quiet)


def test_sga_progress_reports_each_epoch_mean_objective(digits):
    d = digits
    seen = []
    _, history = sga_uap(d["apply_fn"], d["params"], d["xa"], d["ya"], eps=0.1, key=KEY, num_epochs=2,
                         progress=lambda e, obj: seen.append((e, obj)))
    assert [e for e, _ in seen] == [0, 1]
    halves = np.split(np.asarray(history), 2)
    np.testing.assert_allclose([o for _, o in seen], [h.mean() for h in halves], rtol=1e-5)
