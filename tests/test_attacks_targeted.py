"""Per-class targeted UAPs on a small MLP trained on sklearn's digits: the K x K matrix."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jacuap import attacks, metrics
from jacuap.attacks.sga import sga_uap
from jacuap.attacks.targeted import TargetedUAPs, class_transfer_matrix, targeted_uap_matrix

SHAPE = (8, 8, 1)
KEY = jax.random.PRNGKey(0)
K = 10


@pytest.fixture(scope="module", params=[("linf", 0.3), ("l2", 3.0)], ids=["linf", "l2"])
def matrix(request, digits):
    d = digits
    norm, eps = request.param
    result = targeted_uap_matrix(d["apply_fn"], d["params"], d["xa"], d["ya"], d["xe"], d["ye"], eps=eps, norm=norm,
                                 key=KEY, num_epochs=2)
    return norm, eps, result


def test_shapes_budget_and_diagonal(matrix):
    norm, eps, r = matrix
    assert isinstance(r, TargetedUAPs)
    assert r.matrix.shape == r.clean.shape == (K, K)
    assert r.uaps.shape == (K,) + SHAPE
    assert r.success.shape == r.clean_success.shape == (K,)
    assert r.histories.shape == (K, 2 * 4)
    assert np.all(np.isnan(np.diag(r.matrix)))
    off = ~np.eye(K, dtype=bool)
    assert np.all((r.matrix[off] >= 0) & (r.matrix[off] <= 1))
    for v in r.uaps:
        assert float(attacks.perturbation_norm(v, norm)) <= eps * (1 + 1e-5)
    np.testing.assert_allclose(r.clean.sum(axis=1), 1.0)


def test_each_targeted_uap_raises_its_targets_share(matrix, digits):
    _, _, r = matrix
    gain = r.success - r.clean_success
    # Every target gains, and on average by much.
    assert np.all(gain > 0.1), gain
    assert gain.mean() > 0.4, gain
    # Row by row: the share sent to t under UAP_t beats the clean share, on average over the sources.
    off = ~np.eye(K, dtype=bool)
    assert np.mean(r.matrix[off] - r.clean[off]) > 0.3
    assert np.mean(r.matrix[off] > r.clean[off]) > 0.9


def test_entries_match_direct_predictions(matrix, digits):
    d = digits
    _, _, r = matrix
    s, t = 4, 7
    pred = metrics.predict(d["apply_fn"], d["params"], jnp.clip(d["xe"] + r.uaps[t], 0, 1))
    ye = np.asarray(d["ye"])
    assert r.matrix[s, t] == pytest.approx(np.mean(pred[ye == s] == t))
    assert r.success[t] == pytest.approx(np.mean(pred[ye != t] == t))
    clean = metrics.predict(d["apply_fn"], d["params"], d["xe"])
    np.testing.assert_allclose(np.diag(r.clean), [np.mean(clean[ye == c] == c) for c in range(K)])
    assert metrics.accuracy(d["apply_fn"], d["params"], d["xe"], d["ye"]) == pytest.approx(
        np.sum(np.diag(r.clean) * np.bincount(ye, minlength=K)) / len(ye))


def test_with_sga_and_argument_errors(digits):
    d = digits
    args = (d["apply_fn"], d["params"], d["xa"], None, d["xe"], d["ye"])
    r = targeted_uap_matrix(*args, eps=0.3, key=KEY, attack=sga_uap, num_epochs=2)
    assert np.all(r.success > r.clean_success + 0.1), (r.success, r.clean_success)
    with pytest.raises(ValueError, match="key"):
        targeted_uap_matrix(*args, eps=0.3)
    with pytest.raises(ValueError, match="num_classes"):
        targeted_uap_matrix(*args, eps=0.3, key=KEY, num_classes=3)
    with pytest.raises(ValueError, match="targeted"):
        targeted_uap_matrix(*args, eps=0.3, key=KEY, targeted=1)
    with pytest.raises(ValueError, match="y_eval"):
        targeted_uap_matrix(d["apply_fn"], d["params"], d["xa"], None, d["xe"], d["ye"][:5], eps=0.3, key=KEY)


def test_class_transfer_matrix_empty_row_is_nan():
    m = class_transfer_matrix(np.array([0, 0, 2]), np.array([[0, 1, 2], [1, 1, 1], [0, 0, 2]]), 3)
    assert np.all(np.isnan(m[1]))
    np.testing.assert_allclose(m[0], [0.5, 1.0, 0.0])
    np.testing.assert_allclose(m[2], [0.0, 1.0, 1.0])  # class 2 is sent to 1 by perturbation 1
