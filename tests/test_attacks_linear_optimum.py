"""Universal attacks against a linear binary classifier, where the best UAP is known exactly.

The model has logits ``[0, m(x)]`` with margin ``m(x) = w.x + b``, so it
predicts 1 iff ``m > 0`` (a tie goes to class 0, argmax's first index).  With
inputs in ``[0.3, 0.7]`` and budgets small enough that ``clip(x + v, 0, 1) =
x + v``, a UAP ``v`` shifts EVERY margin by the same ``t = w.v``, and ``t``
ranges exactly over ``[-T, T]`` with ``T = eps ||w||_1`` (l_inf, at ``v = -/+
eps sign(w)``) or ``T = eps ||w||_2`` (l2, at ``v = -/+ eps w / ||w||_2``).  So

    UER*  = max_{|t| <= T} #{y_i = 1, m_i + t <= 0} + #{y_i = 0, m_i + t > 0}   (over N)

is the best universal evasion rate of ANY UAP in the ball, computed exactly
by scanning the breakpoints ``t = -m_i``; and the best share sent to class 0
(targeted) is ``#{m_i - T <= 0} / N``, at ``v = -eps sign(w)`` (-T lowers
every margin as far as it can go, for all inputs at once).  Each attack must
come within 0.02 of the optimum, and none may beat it (a check of the
optimum itself), with the cross-entropy and with the Carlini-Wagner margin.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jacuap import attacks, metrics
from jacuap.attacks.restarts import sgd_uap_restarts
from jacuap.attacks.sga import sga_uap

KEY = jax.random.PRNGKey(0)
N, D = 200, 16
TOL = 0.02


def linear_apply(params, x):
    w, b = params
    margin = x.reshape(x.shape[0], -1) @ w + b
    return jnp.stack([jnp.zeros_like(margin), margin], axis=-1)


def _problem(share_class1, seed=0):
    """Weights, inputs in [0.3, 0.7], labels = the model's predictions, margins (float64)."""
    rng = np.random.RandomState(seed)
    w = rng.normal(size=D).astype(np.float32)
    x = rng.uniform(0.3, 0.7, size=(N, D)).astype(np.float32)
    raw = x.astype(np.float64) @ w
    ordered, k = np.sort(raw), int(round(N * (1.0 - share_class1)))
    b = np.float32(-(ordered[0] - 0.05) if k == 0 else -0.5 * (ordered[k - 1] + ordered[k]))  # no margin near 0
    margins = raw + b
    y = (margins > 0).astype(np.int32)
    return (jnp.asarray(w), jnp.asarray(b)), jnp.asarray(x), jnp.asarray(y), margins


def _budget(margins, norm, w, rank):
    """A budget whose reach ``T`` falls midway between the ``rank``-th and next positive margins (no near-ties)."""
    pos = np.sort(margins[margins > 0])
    reach = 0.5 * (pos[rank] + pos[rank + 1])
    scale = np.abs(w).sum() if norm == "linf" else np.sqrt(np.sum(np.square(w)))
    return float(reach / scale), reach


def _best_uer(margins, y, reach):
    """``UER*``: the best universal evasion rate over every shift ``|t| <= reach``, exactly."""
    ts = np.concatenate([[-reach, reach], -margins, -margins + 1e-9])
    ts = ts[np.abs(ts) <= reach]
    flipped = lambda t: np.mean(np.where(y == 1, margins + t <= 0, margins + t > 0))
    return max(flipped(t) for t in ts)


def _run(attack, params, x, y, eps, norm, **kw):
    if attack == "sgd_uap":
        return attacks.sgd_uap(linear_apply, params, x, y, eps=eps, norm=norm, key=KEY, **kw)
    if attack == "sgd_uap_restarts":
        return sgd_uap_restarts(linear_apply, params, x, y, eps=eps, norm=norm, key=KEY, restarts=3, **kw)
    return sga_uap(linear_apply, params, x, y, eps=eps, norm=norm, key=KEY, **kw)


def _no_clipping(x, w, eps, norm):
    direction = np.sign(w) if norm == "linf" else np.asarray(w) / np.linalg.norm(w)
    v = eps * direction
    assert np.all(np.asarray(x) - np.abs(v) >= 0) and np.all(np.asarray(x) + np.abs(v) <= 1)


ATTACKS = ["sgd_uap", "sgd_uap_restarts", "sga_uap"]
NORMS = ["linf", "l2"]
LOSSES = ["ce", "margin"]


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("attack", ATTACKS)
@pytest.mark.parametrize("share_class1", [1.0, 0.75], ids=["class1_only", "mixed"])
def test_untargeted_reaches_the_exact_optimum(attack, norm, share_class1, loss):
    params, x, y, margins = _problem(share_class1)
    w = np.asarray(params[0])
    eps, reach = _budget(margins, norm, w, rank=int(0.4 * np.sum(margins > 0)))
    _no_clipping(x, w, eps, norm)
    best = _best_uer(margins, np.asarray(y), reach)
    if share_class1 == 1.0:  # v = -eps sign(w) (or -eps w/||w||) flips every margin below the reach
        assert best == pytest.approx(np.mean(margins <= reach))
    v, _ = _run(attack, params, x, y, eps, norm, loss=loss)
    assert float(attacks.perturbation_norm(v, norm)) <= eps * (1 + 1e-5)
    uer = metrics.universal_evasion_rate(linear_apply, params, x, y, v)
    assert best - TOL <= uer <= best + 1e-9, (attack, norm, loss, uer, best)
    print(f"{attack} {norm} {loss} class1={share_class1}: UER {uer:.3f}, optimum {best:.3f}")


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("attack", ATTACKS)
def test_targeted_reaches_the_exact_optimum(attack, norm, loss):
    params, x, y, margins = _problem(0.75, seed=1)
    w = np.asarray(params[0])
    eps, reach = _budget(margins, norm, w, rank=int(0.5 * np.sum(margins > 0)))
    _no_clipping(x, w, eps, norm)
    best = np.mean(margins - reach <= 0)  # share of all inputs classified 0 at v = -eps sign(w)
    v, _ = _run(attack, params, x, None, eps, norm, targeted=0, loss=loss)
    share = float(np.mean(metrics.predict(linear_apply, params, jnp.clip(x + v, 0, 1)) == 0))
    assert best - TOL <= share <= best + 1e-9, (attack, norm, loss, share, best)
    print(f"{attack} {norm} {loss} targeted: share {share:.3f}, optimum {best:.3f}")


@pytest.mark.parametrize("norm,tol", [("l2", TOL), ("linf", 0.03)])
def test_targeted_gap_reaches_the_exact_optimum(norm, tol):
    """GAP's generator finds the best targeted shift too: exactly in l2 (its output is scaled onto the sphere's
    direction), within 0.03 in l_inf, where ``min(1, eps / ||G(z)||_inf) G(z)`` reaches the optimal vertex
    ``-eps sign(w)`` only as every pixel of G(z) grows to the same magnitude."""
    params, x, y, margins = _problem(0.75, seed=1)
    w = np.asarray(params[0])
    eps, reach = _budget(margins, norm, w, rank=int(0.5 * np.sum(margins > 0)))
    best = np.mean(margins - reach <= 0)
    v, _ = attacks.gap_uap(linear_apply, params, x, eps=eps, norm=norm, key=KEY, targeted=0, num_epochs=30,
                           batch_size=32)
    share = float(np.mean(metrics.predict(linear_apply, params, jnp.clip(x + v, 0, 1)) == 0))
    assert best - tol <= share <= best + 1e-9, (norm, share, best)
