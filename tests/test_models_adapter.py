"""Your own model: an NNX CNN and its Linen twin give the same numbers everywhere; models by import path."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jacuap
from jacuap import attacks, configs, jacobian, metrics, models, train
from jacuap.errors import ModelError
from tests.nnx_models import LinenCNN, NNXCNN

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEY = jax.random.PRNGKey(0)


@pytest.fixture(scope="module")
def twins():
    ds = jacuap.load_dataset("digits")
    apply_nnx, params = models.as_apply_fn(NNXCNN(10, rngs=nnx.Rngs(0)))
    apply_linen, same = models.as_apply_fn(LinenCNN(10), params)
    assert same is params
    x, y = jnp.asarray(ds.test_images[:64]), jnp.asarray(ds.test_labels[:64])
    return apply_nnx, apply_linen, params, x, y


def test_logits_jacobians_and_spectral_norms_agree(twins):
    apply_nnx, apply_linen, params, x, y = twins
    np.testing.assert_array_equal(apply_nnx(params, x), apply_linen(params, x))
    np.testing.assert_allclose(jacobian.input_jacobian(apply_nnx, params, x[:8]),
                               jacobian.input_jacobian(apply_linen, params, x[:8]), rtol=1e-6, atol=1e-7)
    s1, v1 = jacobian.stacked_spectral_norm(apply_nnx, params, x, KEY, method="power")
    s2, v2 = jacobian.stacked_spectral_norm(apply_linen, params, x, KEY, method="power")
    assert float(s1) == pytest.approx(float(s2), rel=1e-5)
    assert abs(float(jnp.vdot(v1.ravel(), v2.ravel()))) == pytest.approx(1.0, abs=1e-4)


def test_attacks_metrics_and_a_training_step_agree(twins):
    apply_nnx, apply_linen, params, x, y = twins
    v1, _ = attacks.sgd_uap(apply_nnx, params, x, y, eps=0.1, key=KEY, num_epochs=2)
    v2, _ = attacks.sgd_uap(apply_linen, params, x, y, eps=0.1, key=KEY, num_epochs=2)
    assert float(jnp.mean(v1 == v2)) > 0.99  # sign steps: a float tie may flip a pixel
    assert metrics.universal_evasion_rate(apply_nnx, params, x, y, v1) == \
        metrics.universal_evasion_rate(apply_linen, params, x, y, v1)
    states = [train.TrainState.create(apply_fn=f, params=params, tx=optax.adam(1e-2), uap=jnp.zeros(x.shape[1:]))
              for f in (apply_nnx, apply_linen)]
    (a, aux_a), (b, aux_b) = [train.train_step(s, x, y, train.step_key(0, 0), 0.1, 1) for s in states]
    assert float(aux_a["loss"]) == pytest.approx(float(aux_b["loss"]), rel=1e-6)
    jax.tree_util.tree_map(lambda p, q: np.testing.assert_allclose(p, q, rtol=1e-5, atol=1e-7), a.params, b.params)


def test_as_apply_fn_refuses_what_it_cannot_use():
    with pytest.raises(ModelError, match="carries its own parameters"):
        models.as_apply_fn(NNXCNN(3, rngs=nnx.Rngs(0)), {"w": 1})
    with pytest.raises(ModelError, match="needs its params"):
        models.as_apply_fn(LinenCNN(3))
    with pytest.raises(ModelError, match="expected a Linen module, an NNX module or apply_fn"):
        models.as_apply_fn(42, {})
    f = lambda p, x: x
    assert models.as_apply_fn(f, {"w": 1}) == (f, {"w": 1})


def test_import_model_builds_linen_and_nnx_classes_with_kwargs():
    linen = models.create_model("tests.nnx_models:LinenCNN", 10, (0.5,), (0.5,), {"width": 6})
    assert isinstance(linen, LinenCNN) and linen.width == 6
    nnx_model = models.create_model("tests.nnx_models:NNXCNN", 10, (0.5,), (0.5,), {"width": 6}, seed=3)
    assert isinstance(nnx_model, models.NNXClassifier)
    params = models.init_params(nnx_model, KEY, (8, 8, 1))
    assert params["conv"]["kernel"].shape == (3, 3, 1, 6)
    again = models.create_model("tests.nnx_models:NNXCNN", 10, (0.5,), (0.5,), {"width": 6}, seed=3)
    jax.tree_util.tree_map(np.testing.assert_array_equal, params, models.init_params(again, KEY, (8, 8, 1)))
    x = jnp.ones((2, 8, 8, 1))
    assert models.make_apply_fn(nnx_model)(params, x).shape == (2, 10)
    models.check_classifier(nnx_model, "NNXCNN", 10, (8, 8, 1))
    # The registry's models take model_kwargs too.
    assert models.create_model("mlp", 10, (0.5,), (0.5,), {"hidden": (7,)}).hidden == (7,)


@pytest.mark.parametrize("path,kwargs,words", [
    ("tests.nowhere:Net", {}, "cannot import 'tests.nowhere' (ModuleNotFoundError"),
    ("tests.nnx_models:Missing", {}, "has no attribute 'Missing'"),
    ("tests.nnx_models:NOT_A_CLASS", {}, "is a int, not a module class"),
    ("tests.nnx_models:", {}, "expected 'package.module:Class'"),
    ("os:PathLike", {}, "is not a Flax module class"),
    ("tests.nnx_models:NNXCNN", {"depth": 3}, "could not be built with num_classes=10 and model_kwargs={'depth': 3}"),
    ("mlp", {"depth": 3}, "does not take model_kwargs {'depth': 3}"),
])
def test_import_errors_are_one_line_model_errors(path, kwargs, words):
    with pytest.raises(ModelError) as info:
        models.create_model(path, 10, (0.5,), (0.5,), kwargs)
    assert words in str(info.value) and "\n" not in str(info.value)


def test_wrong_output_shape_is_named():
    model = models.create_model("tests.nnx_models:WrongOutput", 10, (0.5,), (0.5,))
    with pytest.raises(ModelError, match=r"maps \(2, 8, 8, 1\) images to shape \(2,\), not \(2, 10\) logits"):
        models.check_classifier(model, "tests.nnx_models:WrongOutput", 10, (8, 8, 1))


def _tiny(model, **kwargs):
    config = configs.get_config("digits")
    config.update(model=model, num_epochs=1, batch_size=256, progress=False, eval_num_inputs=32, jr_lambda=0.1)
    config.model_kwargs = kwargs
    return config


@pytest.mark.parametrize("cls", ["NNXCNN", "LinenCNN"])
def test_training_restoring_and_attacking_an_imported_model(tmp_path, cls):
    workdir = str(tmp_path / "w")
    summary = train.train_and_evaluate(_tiny(f"tests.nnx_models:{cls}", width=5), workdir)
    restored = train.restore_model(workdir)
    start = models.init_params(models.create_model(f"tests.nnx_models:{cls}", 10, (0.5,), (0.5,), {"width": 5}),
                               jax.random.PRNGKey(0), (8, 8, 1))
    assert not np.array_equal(start["dense"]["kernel"], restored.params["dense"]["kernel"])  # it trained
    assert restored.meta["model_spec"]["kwargs"] == {"width": 5}
    assert restored.params["conv"]["kernel"].shape == (3, 3, 1, 5)
    ds = jacuap.load_dataset("digits")
    acc = metrics.accuracy(restored.apply_fn, restored.params, ds.test_images, ds.test_labels)
    assert acc == pytest.approx(summary["test_accuracy"], abs=1e-6)
    # Resuming finished work is a no-op; another width is another config.
    with pytest.raises(jacuap.errors.CheckpointError, match="model_kwargs"):
        train.train_and_evaluate(_tiny(f"tests.nnx_models:{cls}", width=6), workdir)


@pytest.mark.slow
def test_programs_take_a_model_by_import_path(tmp_path):
    # The user's package lives in their project folder; the attack runs from another folder.
    (tmp_path / "proj" / "mypkg").mkdir(parents=True)
    (tmp_path / "proj" / "mypkg" / "__init__.py").write_text("")
    (tmp_path / "proj" / "mypkg" / "nets.py").write_text(open(os.path.join(ROOT, "tests", "nnx_models.py")).read())
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    run = lambda cwd, *args: subprocess.run([sys.executable, os.path.join(ROOT, *args[:1])] + list(args[1:]),
                                            cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    proj = tmp_path / "proj"
    proc = run(proj, "train.py", "--workdir=w", "--config=configs/digits.py", "--config.model=mypkg.nets:NNXCNN",
               "--config.model_kwargs={'width': 3}", "--config.num_epochs=1", "--config.progress=False")
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = run(tmp_path, "attack.py", "--workdir=proj/w", "--attack=sgd_uap", "--eps=0.1", "--num_craft=200",
               "--num_eval=200", "--num_metrics=20", "--sgd_epochs=1", "--noprogress")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert os.path.isfile(proj / "w" / "attack" / "results.json")
    proc = run(proj, "train.py", "--workdir=w2", "--config=configs/digits.py", "--config.model=mypkg.nets:WrongOutput")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and "not (2, 10) logits" in lines[0], proc.stderr


def test_an_imported_model_is_found_in_the_folder_it_was_trained_from(tmp_path, monkeypatch):
    (tmp_path / "userpkg_src").mkdir()
    (tmp_path / "userpkg_src" / "userpkg_nets.py").write_text(open(os.path.join(ROOT, "tests", "nnx_models.py")).read())
    monkeypatch.setattr(sys, "path", list(sys.path))  # the fallback appends to sys.path: undone after the test
    with pytest.raises(ModelError, match=r"cannot import 'userpkg_nets' \(ModuleNotFoundError: .*\); put the folder "
                                         r"that holds 'userpkg_nets' on PYTHONPATH"):
        models.create_model("userpkg_nets:LinenCNN", 10, (0.5,), (0.5,), {"width": 2})
    with pytest.raises(ModelError, match=f"it was trained from {tmp_path / 'gone'}; put the folder"):
        models.create_model("userpkg_nets:LinenCNN", 10, (0.5,), (0.5,), {"width": 2}, 0, str(tmp_path / "gone"))
    model = models.create_model("userpkg_nets:LinenCNN", 10, (0.5,), (0.5,), {"width": 2}, 0,
                                str(tmp_path / "userpkg_src"))
    assert type(model).__name__ == "LinenCNN"
    assert models.model_source_root("userpkg_nets:LinenCNN") == str(tmp_path / "userpkg_src")
    sys.modules.pop("userpkg_nets", None)


def test_readme_nnx_example():
    text = open(os.path.join(ROOT, "README.md")).read()
    code = text.split("### Your own model", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["v"].shape == (8, 8, 1) and float(namespace["sigma"]) > 0
    assert float(namespace["penalty"]) > 0


@pytest.mark.bench  # a benchmark script end to end: make test-bench (.ci/run runs it)
def test_nnx_vs_linen_benchmark_runs_and_agrees():
    from benchmarks import nnx_vs_linen

    out = nnx_vs_linen.compare(steps=3)
    assert out["logits_max_abs_diff"] == 0.0 and out["trained_params_max_abs_diff"] == 0.0
    assert out["stacked_sigma"][0] == out["stacked_sigma"][1] and out["uap_equal_pixels"] == 1.0
