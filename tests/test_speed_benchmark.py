"""benchmarks/speed.py runs, and its PyTorch references compute what jacuap computes.

The eager reference is checked against jacuap; every ``torch.func`` form
(``benchmarks/torch_func_reference.py``) against the eager one, at tiny
sizes; the ``torch.compile`` forms (tens of seconds to compile each) only in
``-m bench`` tests.  No timing is asserted anywhere: the machine is shared and
noisy.  The torch parts skip cleanly when torch (the ``bench`` extra) is not
installed.
"""

import copy
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jacuap import attacks, data, jacobian, models

torch = pytest.importorskip("torch")
tr = pytest.importorskip("benchmarks.torch_reference")
tf = pytest.importorskip("benchmarks.torch_func_reference")
trn = pytest.importorskip("benchmarks.torch_resnet")

# The benchmark's PyTorch references against jacuap: what makes speed.py's comparisons valid, not the library
# (make test-bench, which .ci/run runs).
pytestmark = pytest.mark.bench


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


# ---------------------------------------------------------------------------
# torch.func forms against the eager reference (and, with -m bench, the compiled ones).
# ---------------------------------------------------------------------------


def _tiny(setup):
    """The digits CNN's torch twin and 8 inputs (small: the compiled forms compile faster)."""
    _, _, tmodel, x, y = setup
    return copy.deepcopy(tmodel), tr.to_nchw(x[:8]), torch.from_numpy(np.asarray(y[:8], np.int64))


def _trained(variant, tmodel, x, y, lam, num_proj, steps=2):
    """Loss of the last step and the weights after ``steps`` Adam steps of ``variant`` (same draws)."""
    model = copy.deepcopy(tmodel)
    step = tf.train_step_variant(variant, model, tr.make_optimizer(model), lam, num_proj)
    torch.manual_seed(3)
    for _ in range(steps):
        loss = step(x, y)
    return float(loss), torch.cat([p.detach().flatten() for p in model.parameters()])


TRAIN_CASES = [(0.0, None), (0.5, 1), (0.5, None)]  # plain, JR with one projection, exact JR


def _check_train(variant, tmodel, x, y, lam, num_proj):
    loss0, w0 = _trained("eager", tmodel, x, y, lam, num_proj)
    loss1, w1 = _trained(variant, tmodel, x, y, lam, num_proj)
    assert abs(loss1 - loss0) <= 1e-5 * max(1.0, abs(loss0))
    moved = float((w0 - torch.cat([p.detach().flatten() for p in tmodel.parameters()])).abs().max())
    assert moved > 1e-4  # the steps did something
    # Adam divides by sqrt(v), so float32 reassociation in a near-zero gradient component moves
    # that weight's update by a small fraction of lr (2.2e-6 on one of 53,002 weights on a CI CPU);
    # a wrong gradient moves it by about lr = 1e-3.  1% of lr separates the two.
    np.testing.assert_allclose(w1.numpy(), w0.numpy(), atol=1e-5)


def _check_attacks(variant, tmodel, x, y):
    eps, alpha = 0.1, 0.03
    base, _ = tf.split_variant(variant)
    if base != "jacrev":  # SGD-UAP takes a gradient: no jacrev form
        for p in tmodel.parameters():
            p.requires_grad_(False)
        v0 = torch.zeros(1, *x.shape[1:])
        want = tr.sgd_uap_step(tmodel, v0, x, y, eps, alpha)
        got = tf.sgd_step_variant(variant, tmodel)(v0, x, y, eps, alpha, 12.0)
        for p in tmodel.parameters():
            p.requires_grad_(True)
        assert float((got - want).abs().max()) <= 1e-6
    clean = tmodel(x).argmax(1)
    runs = {}
    for form in ("eager", variant):
        tr.DEEPFOOL_ITERATIONS[0] = 0
        step = None if form == "eager" else tf.deepfool_step_variant(form, tmodel)
        v, rate = tr.deepfool_uap_pass(tmodel, torch.zeros(1, *x.shape[1:]), x, clean, 0.3, 4,
                                       generator=torch.Generator().manual_seed(0), step_fn=step)
        runs[form] = (v, rate, tr.DEEPFOOL_ITERATIONS[0])
    (v0_, r0, i0), (v1, r1, i1) = runs["eager"], runs[variant]
    assert i0 == i1 and r0 == r1 and i0 > 0
    np.testing.assert_allclose(v1.numpy(), v0_.numpy(), atol=1e-5)


def _check_forward_mode(variant, tmodel, x):
    jac = tr.input_jacobian(tmodel, x).flatten(2)  # (B, K, d)
    t = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    want = torch.einsum("bkd,bd->bk", jac, t.flatten(1))
    np.testing.assert_allclose(tf.jvp_variant(variant, tmodel)(x, t).detach().numpy(), want.numpy(), atol=1e-5)
    v = torch.randn(x.shape[1:], generator=torch.Generator().manual_seed(2))
    gram = jac.reshape(-1, jac.shape[-1])
    want = (gram.T @ (gram @ v.flatten())).reshape(v.shape)
    got = tf.gram_times_variant(variant, tmodel)(x, v)
    np.testing.assert_allclose(got.detach().numpy(), want.numpy(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("variant", ["func", "jacrev"])
def test_func_forms_agree_with_eager(setup, variant):
    tmodel, x, y = _tiny(setup)
    want = tr.input_jacobian(tmodel, x)
    np.testing.assert_allclose(tf.jacobian_variant(variant, tmodel)(x).detach().numpy(), want.numpy(), atol=1e-6)
    for lam, num_proj in TRAIN_CASES:
        if variant == "jacrev" and not (lam and num_proj is None):
            with pytest.raises(ValueError, match="jacrev"):
                tf.train_step_variant(variant, tmodel, tr.make_optimizer(tmodel), lam, num_proj)
            continue
        _check_train(variant, tmodel, x, y, lam, num_proj)
    _check_attacks(variant, tmodel, x, y)
    if variant == "func":
        _check_forward_mode(variant, tmodel, x)
    sigma, _ = tr.stacked_spectral_norm(tmodel, x, 3, tf.jacobian_variant(variant, tmodel))
    want_sigma, _ = tr.stacked_spectral_norm(tmodel, x, 3)
    np.testing.assert_allclose(float(sigma), float(want_sigma), rtol=1e-5)


def test_eager_forward_mode_and_power_iteration(setup):
    """The eager JVP (dual numbers) and Gram product, and power iteration's sigma, against the Jacobian."""
    tmodel, x, _ = _tiny(setup)
    _check_forward_mode("eager", tmodel, x)
    x = x[:4]
    want, _ = tr.stacked_spectral_norm(tmodel, x, 4)
    v0 = torch.randn(x.shape[1:], generator=torch.Generator().manual_seed(0))
    for variant in ("eager", "func"):
        gram_times = tf.gram_times_variant(variant, tmodel)
        sigma, v = tf.stacked_power(gram_times, x, v0, 15, 4)
        np.testing.assert_allclose(float(sigma), float(want), rtol=1e-2)
        assert tf.relative_residual(gram_times, x, v, sigma, 4) < 0.2


def test_variant_names():
    assert tf.split_variant("compile") == ("eager", True)
    assert tf.split_variant("func_compile") == ("func", True)
    assert tf.split_variant("jacrev") == ("jacrev", False)
    with pytest.raises(ValueError, match="unknown variant"):
        tf.split_variant("jit")
    from benchmarks import speed

    assert speed.TORCH_VARIANTS == tf.VARIANTS and speed.NO_JACREV == tf.NO_JACREV


def test_resnet20_twin_agrees():
    """benchmarks/torch_resnet.py is jacuap's ResNet-20 weight for weight: logits and input Jacobians."""
    mean, std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
    for arch, n in ((trn.RESNET20, 2), ({"stage_sizes": (1, 1), "width": 8}, 3)):
        model = models.create_model("resnet", 10, mean, std, kwargs=arch)
        params = models.init_params(model, jax.random.PRNGKey(0), (32, 32, 3))
        apply_fn = models.make_apply_fn(model)
        x = jax.random.uniform(jax.random.PRNGKey(1), (n, 32, 32, 3))
        tmodel = trn.from_flax(params, mean, std, **arch)
        got = tmodel(tr.to_nchw(x)).detach().numpy()
        np.testing.assert_allclose(got, np.asarray(apply_fn(params, x)), rtol=1e-4, atol=1e-5)
        if arch == trn.RESNET20:
            assert sum(p.numel() for p in tmodel.parameters()) == 272282  # ResNet-20's 0.27 M
        else:  # the Jacobian on the small one (compiles in a second)
            jac = np.asarray(jacobian.input_jacobian(apply_fn, params, x))  # (B, K, H, W, C)
            tjac = tf.jacobian_variant("func", tmodel)(tr.to_nchw(x)).detach().numpy()
            np.testing.assert_allclose(tjac.transpose(0, 1, 3, 4, 2), jac, rtol=1e-3, atol=1e-6)


def test_bench_records_a_failing_variant_and_picks_the_best():
    """A form that raises is its error string in the row; the others are timed; the fastest is the reference."""
    from benchmarks import speed

    calls = {"slow": 0}

    def slow():
        calls["slow"] += 1
        return sum(range(20000))

    def broken():
        raise RuntimeError("torch.compile with aot_autograd does not currently support double backward\nhint")

    bench = speed.Bench(reps=3, warmup=0)
    row = bench.run("r", lambda: 0, {"eager": slow, "fast": lambda: 0, "compile": broken},
                    errors={"jacrev": "ValueError: no jacrev form"})
    assert row["references"]["compile"] == ("RuntimeError: torch.compile with aot_autograd does not currently "
                                            "support double backward")
    assert row["references"]["jacrev"] == "ValueError: no jacrev form"
    assert isinstance(row["references"]["eager"], float) and calls["slow"] == 3  # no warm-up asked for
    assert row["reference_variant"] == "fast" and row["reference"] == "torch fast"
    assert set(row["references_all_s"]) == {"eager", "fast"} and len(row["references_all_s"]["eager"]) == 3
    assert set(row["reference_warmup_s"]) == set()  # "compile" failed in its (forced) warm-up
    row = speed.Bench(reps=1, warmup=0).run("one", lambda: 0, lambda: 0, ref_name="jax baseline")
    assert row["reference"] == "jax baseline" and list(row["references"]) == ["jax baseline"]


@pytest.mark.bench  # torch.compile: tens of seconds per form (make test-bench)
@pytest.mark.slow
@pytest.mark.parametrize("variant", ["compile", "func_compile", "jacrev_compile"])
def test_compiled_forms_agree_with_eager(setup, variant):
    tmodel, x, y = _tiny(setup)
    want = tr.input_jacobian(tmodel, x)
    np.testing.assert_allclose(tf.jacobian_variant(variant, tmodel)(x).detach().numpy(), want.numpy(), atol=1e-5)
    base, _ = tf.split_variant(variant)
    for lam, num_proj in TRAIN_CASES:
        if base == "jacrev" and not (lam and num_proj is None):
            continue
        if variant == "compile" and lam:  # the eager JR step differentiates a create_graph gradient
            with pytest.raises(Exception, match="double backward"):
                _trained(variant, tmodel, x, y, lam, num_proj)
            continue
        _check_train(variant, tmodel, x, y, lam, num_proj)
    _check_attacks(variant, tmodel, x, y)
    if base != "jacrev":
        _check_forward_mode(variant, tmodel, x)


@pytest.mark.bench  # a benchmark script end to end: make test-bench (.ci/run runs it)
@pytest.mark.slow
def test_speed_records_compiled_forms_and_their_errors(tmp_path):
    from benchmarks import speed

    out = tmp_path / "speed.json"
    speed.main(["--quick", "--reps", "1", "--pretrain-steps", "0", "--no-memory", "--torch-threads", "1",
                "--rows", "train_jr1", "--variants", "eager,compile,func_compile", "--out", str(out)])
    row = json.loads(out.read_text())["rows"]["train_jr1"]
    assert "double backward" in row["references"]["compile"]
    assert isinstance(row["references"]["eager"], float) and isinstance(row["references"]["func_compile"], float)
    assert row["reference_warmup_s"]["func_compile"] > 0  # its compile, outside the repetitions
    assert row["reference_variant"] in ("eager", "func_compile")


@pytest.mark.bench  # a benchmark script end to end: make test-bench (.ci/run runs it)
def test_speed_quick_runs(tmp_path):
    from benchmarks import speed

    out = tmp_path / "speed.json"
    result = speed.main(["--quick", "--reps", "1", "--pretrain-steps", "1", "--set-size", "64",
                         "--deepfool-size", "32", "--power-iters", "2", "--torch-threads", "1",
                         "--out", str(out)])
    saved = json.loads(out.read_text())
    assert set(saved["rows"]) == set(speed.ROWS)
    for name, row in saved["rows"].items():
        assert row["jacuap_s"] > 0
        assert row["references"] and all(isinstance(t, float) for t in row["references"].values()), name
        assert row["reference_s"] == min(row["references"].values())
    assert set(saved["rows"]["input_jacobian"]["references"]) == {"eager", "func", "jacrev"}  # --quick: uncompiled
    assert set(saved["rows"]["train_plain"]["references"]) == {"eager", "func"}
    assert "random" in saved["cifar"]["data"] or "CIFAR-10 binary" in saved["cifar"]["data"]
    lobpcg = saved["rows"]["imagenet224_lobpcg"]
    assert lobpcg["relative_residual"] < 0.05 and set(lobpcg["torch_sigma"]) == {"eager", "func"}
    assert result["rows"]["stacked_spectral_norm"]["rel_error"] < 1e-3
    mem = saved["memory"]["sgd_uap_epoch"]
    assert len(mem) == 2
