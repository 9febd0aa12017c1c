"""benchmarks/speed.py runs, and its PyTorch reference computes what jacuap computes.

No timing is asserted anywhere: the machine is shared and noisy.  The torch
parts skip cleanly when torch (the ``bench`` extra) is not installed.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jacuap import attacks, data, jacobian, models

torch = pytest.importorskip("torch")
tr = pytest.importorskip("benchmarks.torch_reference")


@pytest.fixture(scope="module")
def setup():
    ds = data.load_dataset("digits")
    model = models.create_model("cnn", ds.num_classes, ds.mean, ds.std)
    params = models.init_params(model, jax.random.PRNGKey(0), ds.image_shape)
    apply_fn = models.make_apply_fn(model)
    tmodel = tr.from_flax(params, ds.mean, ds.std, ds.image_shape)
    x, y = ds.test_images[:32], ds.test_labels[:32]
    return apply_fn, params, tmodel, x, y


def test_same_logits(setup):
    apply_fn, params, tmodel, x, _ = setup
    expected = np.asarray(apply_fn(params, jnp.asarray(x)))
    got = tmodel(tr.to_nchw(x)).detach().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_same_exact_frobenius_and_jacobian(setup):
    apply_fn, params, tmodel, x, _ = setup
    fro = np.asarray(jacobian.frobenius_sq(apply_fn, params, jnp.asarray(x)))
    _, tfro = tr.frobenius_sq(tmodel, tr.to_nchw(x))
    np.testing.assert_allclose(tfro.detach().numpy(), fro, rtol=1e-4)
    jac = np.asarray(jacobian.input_jacobian(apply_fn, params, jnp.asarray(x)))  # (B, K, H, W, 1)
    tjac = tr.input_jacobian(tmodel, tr.to_nchw(x)).numpy()  # (B, K, 1, H, W)
    np.testing.assert_allclose(tjac.transpose(0, 1, 3, 4, 2), jac, rtol=1e-4, atol=1e-6)


def test_same_stacked_spectral_norm(setup):
    apply_fn, params, tmodel, x, _ = setup
    sigma, _ = jacobian.stacked_spectral_norm(apply_fn, params, jnp.asarray(x), batch_size=8, method="gram")
    tsigma, _ = tr.stacked_spectral_norm(tmodel, tr.to_nchw(x), batch_size=8)
    np.testing.assert_allclose(float(tsigma), float(sigma), rtol=1e-4)


def test_same_sgd_uap_step(setup):
    """One epoch over exactly one minibatch is one step, whatever the shuffle."""
    apply_fn, params, tmodel, x, y = setup
    eps, alpha = 0.1, 0.03
    v, _ = attacks.sgd_uap(apply_fn, params, jnp.asarray(x), jnp.asarray(y), eps=eps, num_epochs=1,
                           batch_size=len(x), step_size=alpha, key=jax.random.PRNGKey(0))
    tv = tr.sgd_uap_step(tmodel, torch.zeros(1, *tr.to_nchw(x).shape[1:]), tr.to_nchw(x),
                         torch.from_numpy(np.asarray(y, np.int64)), eps, alpha)
    got = tv.numpy()[0].transpose(1, 2, 0)
    # Signs of float32 gradients can differ only where a component is ~0.
    assert np.mean(np.isclose(got, np.asarray(v), atol=1e-7)) > 0.98
    assert np.abs(got).max() <= eps + 1e-7


@pytest.mark.bench  # a benchmark script end to end: make test-bench (.ci/run runs it)
def test_speed_quick_runs(tmp_path):
    from benchmarks import speed

    out = tmp_path / "speed.json"
    result = speed.main(["--quick", "--reps", "1", "--pretrain-steps", "1", "--set-size", "64",
                         "--deepfool-size", "32", "--power-iters", "2", "--torch-threads", "1",
                         "--out", str(out)])
    saved = json.loads(out.read_text())
    assert set(saved["rows"]) == set(speed.ROWS)
    for row in saved["rows"].values():
        assert row["jacuap_s"] > 0
    assert result["rows"]["stacked_spectral_norm"]["rel_error"] < 1e-3
    mem = saved["memory"]["sgd_uap_epoch"]
    assert len(mem) == 2
