"""The facade ``jacuap``: dir() is the public API, every name it lists loads lazily, and NNX modules come back."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jacuap
from jacuap import models
from jacuap.errors import ModelError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEAVY = ("jax", "jaxlib", "flax", "optax", "orbax", "matplotlib", "tensorflow", "tensorflow_datasets", "sklearn")


def _fresh(code: str) -> dict:
    """The JSON a fresh interpreter prints after running ``code`` (nothing imported before it)."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_dir_is_the_public_api_and_import_stays_light():
    out = _fresh("""
        import json, sys
        import jacuap
        heavy = sorted({m.split(".")[0] for m in sys.modules} & set(%r))
        print(json.dumps({"dir": dir(jacuap), "all": jacuap.__all__, "heavy": heavy}))
    """ % (HEAVY,))
    assert out["heavy"] == [], f"`import jacuap` alone imported {out['heavy']}"
    assert out["dir"] == sorted(out["all"]) and len(set(out["all"])) == len(out["all"])
    assert not {"Any", "annotations", "importlib"} & set(out["dir"])
    assert all(not name.startswith("_") for name in out["dir"])
    assert {"as_apply_fn", "nnx_with_params", "restore_model", "checkpoints", "models"} <= set(out["dir"])
    # Importing submodules elsewhere does not add them to dir(): it stays the API.
    assert dir(jacuap) == sorted(jacuap.__all__)


def test_every_listed_name_loads_from_a_fresh_import():
    out = _fresh("""
        import json, types
        import jacuap
        bad, modules = [], {}
        for name in dir(jacuap):
            try:
                value = getattr(jacuap, name)
            except Exception as exc:
                bad.append(f"{name}: {type(exc).__name__}: {exc}")
                continue
            if value is None:
                bad.append(f"{name}: None")
            if isinstance(value, types.ModuleType):
                modules[name] = value.__name__
        print(json.dumps({"bad": bad, "modules": modules}))
    """)
    assert out["bad"] == []
    assert out["modules"]["checkpoints"] == "jacuap.train.checkpoints"
    assert all(module == f"jacuap.{name}" for name, module in out["modules"].items() if name != "checkpoints")


def test_facade_names_are_the_modules_own():
    assert jacuap.as_apply_fn is models.as_apply_fn and jacuap.nnx_with_params is models.nnx_with_params
    assert jacuap.checkpoints is jacuap.train.checkpoints
    assert jacuap.restore_model is jacuap.checkpoints.restore_model
    with pytest.raises(AttributeError, match="no attribute 'importlib'"):
        jacuap.importlib  # noqa: B018


class _Net(nnx.Module):
    def __init__(self, num_classes, *, rngs):
        self.dense = nnx.Linear(4, num_classes, rngs=rngs)
        self.scale = nnx.BatchStat(jnp.full((num_classes,), 2.0))  # not a Param: kept as the module's

    def __call__(self, x):
        return self.dense(x.reshape(len(x), -1)) * self.scale[...]


def test_nnx_with_params_writes_trained_params_into_a_copy():
    module = _Net(3, rngs=nnx.Rngs(0))
    apply_fn, params = jacuap.as_apply_fn(module)
    trained = jax.tree_util.tree_map(lambda p: p + 0.5, params)  # as if trained
    x = jax.random.uniform(jax.random.PRNGKey(1), (5, 2, 2, 1))
    back = jacuap.nnx_with_params(module, trained)
    assert isinstance(back, _Net) and back is not module
    np.testing.assert_array_equal(back(x), apply_fn(trained, x))
    np.testing.assert_array_equal(module(x), apply_fn(params, x))  # the original is untouched
    assert not np.array_equal(back(x), module(x))
    # A model built by import path (restore_model(workdir).model) comes back too.
    classifier = models.NNXClassifier(_Net, 3, seed=0)
    again = jacuap.nnx_with_params(classifier, trained)
    assert isinstance(again, _Net)
    np.testing.assert_array_equal(again(x), classifier.apply({"params": trained}, x))


def test_nnx_with_params_one_line_errors():
    module = _Net(3, rngs=nnx.Rngs(0))
    _, params = jacuap.as_apply_fn(module)
    with pytest.raises(ModelError, match=r"^nnx_with_params: params do not fit .*\(3,\)"):
        jacuap.nnx_with_params(module, {"dense": {"bias": params["dense"]["bias"]}})
    with pytest.raises(ModelError, match="params do not fit"):
        jacuap.nnx_with_params(module, jax.tree_util.tree_map(lambda p: p[..., :1], params))
    with pytest.raises(ModelError, match="expected a flax.nnx.Module .* got MLP"):
        jacuap.nnx_with_params(models.MLP(num_classes=3, hidden=(4,)), params)
