"""Data parallelism on 8 devices equals 1 device (training, defences, spectral norms, metrics, SGD-UAP).

These tests need 8 devices, i.e. a separate process started with

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m pytest tests/test_parallel.py

(``make test`` runs it so); in the ordinary run they are skipped.  On one
process, "1 device" is a mesh over ``jax.devices()[:1]``: same code path,
same seed, the batches split 8 ways instead of 1.  The only difference is
the order of float summation in the all-reduces, so results agree to float32
rounding: parameters after a full epoch of Adam within ``rtol=1e-4,
atol=3e-5`` (measured: max |diff| 8.5e-6), scalar metrics within ``rtol=1e-5``.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jacuap
from jacuap.configs import default
from jacuap import attacks, evaluation, metrics, parallel, train

pytestmark = pytest.mark.skipif(
    jax.device_count() != 8,
    reason="needs 8 devices: XLA_FLAGS=--xla_force_host_platform_device_count=8 (make test runs it)")

PARAM_TOL = dict(rtol=1e-4, atol=3e-5)
METRIC_RTOL = 1e-5


def tiny_config(**overrides):
    config = default.get_config()
    config.update(dataset="digits", model="mlp", num_epochs=1, batch_size=128, jr_lambda=0.5,
                  jr_num_proj=1, progress=False, eval_num_inputs=64)
    config.update(**overrides)
    return config


@pytest.fixture(scope="module")
def model():
    ds = jacuap.load_dataset("digits")
    net = jacuap.create_model("mlp", 10, ds.mean, ds.std)
    params = jacuap.init_params(net, jax.random.PRNGKey(0), ds.image_shape)
    return ds, jacuap.make_apply_fn(net), params


def test_mesh_spans_every_device_and_batches_split_evenly():
    mesh = parallel.make_mesh()
    assert mesh.size == 8 and mesh.axis_names == ("batch",)
    x = np.arange(16 * 3, dtype=np.float32).reshape(16, 3)
    xs = parallel.shard_batch(x, mesh)
    assert len(xs.addressable_shards) == 8
    assert {s.data.shape for s in xs.addressable_shards} == {(2, 3)}
    np.testing.assert_array_equal(np.asarray(xs), x)
    assert parallel.process_rows(16, mesh) == slice(0, 16)
    with pytest.raises(parallel.ParallelError, match="multiple of 8, e.g. 8 or 16"):
        parallel.shard_batch(x[:12], mesh)


def test_training_on_8_devices_matches_1_device(tmp_path):
    config = tiny_config()
    one = train.train_and_evaluate(config, str(tmp_path / "one"), mesh=parallel.make_mesh(jax.devices()[:1]))
    eight = train.train_and_evaluate(config, str(tmp_path / "eight"))  # default: every device
    p1 = train.restore_model(str(tmp_path / "one")).params
    p8 = train.restore_model(str(tmp_path / "eight")).params
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, **PARAM_TOL), p1, p8)
    assert one["test_accuracy"] == pytest.approx(eight["test_accuracy"], abs=2 / 360)
    for key in ("mean_jacobian_frobenius_sq", "stacked_spectral_norm"):
        assert one[key] == pytest.approx(eight[key], rel=1e-4)
    l1 = json.loads(open(tmp_path / "one" / "metrics.jsonl").readline())
    l8 = json.loads(open(tmp_path / "eight" / "metrics.jsonl").readline())
    for key in ("loss", "ce", "penalty"):
        assert l1[key] == pytest.approx(l8[key], rel=METRIC_RTOL)
    # attack.py's path: every attack and metric batch split over the 8 devices.
    request = evaluation.AttackRequest(workdir=str(tmp_path / "eight"), attacks=["sgd_uap", "sv_uap"], norm="linf",
                                       eps=[0.1], out=str(tmp_path / "attack"), num_craft=128, num_eval=100,
                                       num_metrics=40, sgd_epochs=1, progress=False)
    results = evaluation.run_attacks(request)
    assert all(0 <= r["uer"] <= 1 for r in results["results"])
    assert 0.5 <= results["metrics"]["shared_perturbation_strength"] <= 1


@pytest.mark.parametrize("overrides", [dict(jr_mode="stacked_spectral", jr_power_iters=2),
                                       dict(jr_lambda=0.0, adv_training="trades", adv_steps=2, trades_beta=6.0),
                                       dict(jr_lambda=0.0, adv_training="sat", adv_steps=2, adv_heap_size=16),
                                       dict(jr_lambda=0.0, adv_training="cw_uat")],
                         ids=["stacked_spectral", "trades", "sat", "cw_uat"])
def test_defences_on_8_devices_match_1_device(tmp_path, overrides, model):
    # stacked_spectral: the power iterations sum J_b^T u_b over the split batch (an all-reduce),
    # jr_vec is checkpointed: same tolerances as plain training.  TRADES' inner maximisation takes
    # sign steps, and a float difference flips a sign where a gradient component is ~0 (0.1% of
    # the pixels, measured): its examples agree on > 99% of the pixels, and training to 1e-2.
    config = tiny_config(**overrides)
    signs = config.adv_training in ("trades", "sat", "cw_uat")  # sign steps: see above
    trades = config.adv_training == "trades"
    one = train.train_and_evaluate(config, str(tmp_path / "one"), mesh=parallel.make_mesh(jax.devices()[:1]))
    eight = train.train_and_evaluate(config, str(tmp_path / "eight"))
    r1, r8 = train.restore_model(str(tmp_path / "one")), train.restore_model(str(tmp_path / "eight"))
    tol = dict(rtol=0, atol=1e-2) if signs else PARAM_TOL
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, **tol), r1.params, r8.params)
    assert one["test_accuracy"] == pytest.approx(eight["test_accuracy"], abs=3 / 360)
    l1 = json.loads(open(tmp_path / "one" / "metrics.jsonl").readline())
    l8 = json.loads(open(tmp_path / "eight" / "metrics.jsonl").readline())
    for key in ("loss", "ce") + (("penalty",) if config.jr_lambda else ()):
        assert l1[key] == pytest.approx(l8[key], rel=1e-2 if signs else METRIC_RTOL)
    if trades:
        ds, apply_fn, params = model
        mesh, adversary = parallel.make_mesh(), train.make_adversary(config)
        fn = jax.jit(train.adversarial.trades_examples, static_argnums=(0, 3))
        x, key = np.asarray(ds.train_images[:128]), jax.random.PRNGKey(5)
        a = fn(apply_fn, params, jnp.asarray(x), adversary, key)
        b = fn(apply_fn, parallel.replicate(params, mesh), parallel.shard_batch(x, mesh), adversary,
               parallel.replicate(np.asarray(key), mesh))
        assert np.mean(np.asarray(a) == np.asarray(b)) > 0.99
    elif config.adv_training == "cw_uat":  # the per-class perturbations, kept in the state, agree too
        template = train.create_train_state(r1.model, jax.random.PRNGKey(0), (8, 8, 1),
                                            train.make_optimizer(config, r1.meta["steps_per_epoch"]),
                                            class_wise_uaps=10)
        u1 = train.checkpoints.restore(str(tmp_path / "one"), template)[1].uap
        u8 = train.checkpoints.restore(str(tmp_path / "eight"), template)[1].uap
        assert u1.shape == (10, 8, 8, 1) and np.mean(np.asarray(u1) == np.asarray(u8)) > 0.99
    elif config.jr_mode == "stacked_spectral":
        template = train.create_train_state(r1.model, jax.random.PRNGKey(0), (8, 8, 1),
                                            train.make_optimizer(config, r1.meta["steps_per_epoch"]), config.jr_mode)
        v1 = train.checkpoints.restore(str(tmp_path / "one"), template)[1].jr_vec
        v8 = train.checkpoints.restore(str(tmp_path / "eight"), template)[1].jr_vec
        np.testing.assert_allclose(v1, v8, **PARAM_TOL)


def test_batch_that_does_not_divide_over_devices_is_a_config_error(tmp_path):
    workdir = tmp_path / "w"
    with pytest.raises(train.ConfigError, match="batch_size 100 does not divide over the 8 devices"):
        train.train_and_evaluate(tiny_config(batch_size=100), str(workdir))
    assert not workdir.exists()


def test_stacked_spectral_norm_and_metrics_on_8_devices(model):
    ds, apply_fn, params = model
    mesh = parallel.make_mesh()
    sharded, rparams = parallel.batch_sharded_apply(apply_fn, mesh), parallel.replicate(params, mesh)
    assert parallel.batch_sharded_apply(apply_fn, mesh) is sharded  # one compilation per model
    x, y = ds.test_images[:200], ds.test_labels[:200]
    key = jax.random.PRNGKey(1)
    for method in ("gram", "power"):
        a = metrics.stacked_sigma_max(apply_fn, params, x, key, method=method, batch_size=64)
        b = metrics.stacked_sigma_max(sharded, rparams, x, key, method=method, batch_size=64)
        assert a == pytest.approx(b, rel=METRIC_RTOL), method
    # The chunks really are split: the compiled power iteration all-reduces.
    hlo = jax.jit(jacuap.jacobian.stacked_spectral_norm, static_argnums=0, static_argnames=("num_iters", "batch_size", "method")).lower(
        sharded, rparams, jnp.asarray(x), key, num_iters=2, batch_size=64, method="power").compile().as_text()
    assert "all-reduce" in hlo
    m1 = metrics.jacobian_metrics(apply_fn, params, x[:60], y[:60], key, num_pairs_inputs=30)
    m8 = metrics.jacobian_metrics(sharded, rparams, x[:60], y[:60], key, num_pairs_inputs=30)
    for name, value in m1.items():
        if isinstance(value, float):
            assert value == pytest.approx(m8[name], rel=METRIC_RTOL), name
    np.testing.assert_array_equal(metrics.predict(apply_fn, params, x), metrics.predict(sharded, rparams, x))


def test_a_long_host_loop_on_8_cpu_devices_does_not_deadlock(model):
    """300 power iterations of 4 sharded chunk steps each, a replicated update between them.

    Without :func:`jacuap.backend.pace` XLA:CPU aborted this process in the
    all-reduce's rendezvous ("Termination timeout ... only 7 of them arrived")
    every time it was run.
    """
    ds, apply_fn, params = model
    mesh = parallel.make_mesh()
    sharded, rparams = parallel.batch_sharded_apply(apply_fn, mesh), parallel.replicate(params, mesh)
    x, key = ds.test_images[:256], jax.random.PRNGKey(1)
    kwargs = dict(method="power", num_iters=300, batch_size=64, loop="host")
    s8, _ = jacuap.jacobian.stacked_spectral_norm(sharded, rparams, x, key, **kwargs)
    s1, _ = jacuap.jacobian.stacked_spectral_norm(apply_fn, params, x, key, **kwargs)
    assert float(s8) == pytest.approx(float(s1), rel=METRIC_RTOL)


def test_sgd_uap_on_8_devices_matches_1_device(model):
    ds, apply_fn, params = model
    mesh = parallel.make_mesh()
    x, y = ds.train_images[:256], ds.train_labels[:256]
    kwargs = dict(eps=0.1, norm="linf", key=jax.random.PRNGKey(3), num_epochs=2, batch_size=64)
    v1, h1 = attacks.sgd_uap(apply_fn, params, x, y, **kwargs)
    v8, h8 = attacks.sgd_uap(parallel.batch_sharded_apply(apply_fn, mesh), parallel.replicate(params, mesh),
                             x, y, **kwargs)
    # Sign steps: a float difference could flip a sign only where a gradient is ~0.
    assert np.mean(np.asarray(v1) == np.asarray(v8)) > 0.99
    np.testing.assert_allclose(h1, h8, rtol=1e-4)
