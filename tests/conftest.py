import os
import sys

# JAX's persistent compilation cache, for this process and every program the
# tests start (they inherit the environment): the suite compiles the same
# small models and kernels in dozens of processes, and XLA:CPU compilation,
# not computation, is most of its time (a tiny ResNet's init: 17 s cold, 1.5 s
# warm).  Cached executables are the ones a cold compile produces, so results,
# including the bitwise resume tests, are unchanged.  Set the variable to ""
# to measure the suite cold.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(_ROOT, ".pytest_cache", "jax_compilation"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
# XLA:CPU compiles fast rather than well, for this process and the programs it starts: the suite's programs
# are tiny, so compiling them, not running them, is most of a cold run.  Two flags, each measured on the
# compile-heaviest files (test_jacobian, test_models_conv, test_train_step) from a cold cache:
# * the LLVM passes at their lowest level (CPU time 143 s -> 79 s);
# * XLA's older elemental emitters for fusions in place of the new fusion emitters (68 s -> 40 s on top of
#   the first).
# XLA's HLO passes (fusion decisions, layout) are unchanged, and every kernel is checked against a float64
# reference with a tolerance, or against another run under the same flags where a test asks for bitwise
# equality.  Set either flag yourself to test otherwise.
_FLAGS = os.environ.get("XLA_FLAGS", "")
if "xla_backend_optimization_level" not in _FLAGS:
    _FLAGS += " --xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
if "xla_cpu_use_fusion_emitters" not in _FLAGS:
    _FLAGS += " --xla_cpu_use_fusion_emitters=false"
os.environ["XLA_FLAGS"] = _FLAGS.strip()

import jax  # noqa: E402
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from sklearn.datasets import load_digits

# The repository root, so that tests can import the `benchmarks` scripts.
sys.path.insert(0, _ROOT)

import jacuap  # noqa: E402
from jacuap import metrics  # noqa: E402

SHAPE = (8, 8, 1)


@pytest.fixture(scope="session")
def trained_digits():
    """A 32-unit MLP trained full-batch (Adam, 300 steps) on 1000 digits.

    Returns the model, apply_fn, params and two disjoint held-out splits:
    400 crafting inputs and 397 evaluation inputs.
    """
    data = load_digits()
    x = (data.images / 16.0).astype(np.float32).reshape((-1,) + SHAPE)
    y = data.target.astype(np.int32)
    perm = np.random.RandomState(0).permutation(len(x))
    x, y = x[perm], y[perm]
    model = jacuap.models.MODELS["mlp"](num_classes=10, hidden=(32,), mean=(0.5,), std=(0.5,))
    apply_fn = jacuap.make_apply_fn(model)
    params = jacuap.init_params(model, jax.random.PRNGKey(0), SHAPE)
    xtr, ytr = jnp.asarray(x[:1000]), jnp.asarray(y[:1000])
    opt = optax.adam(1e-2)

    @jax.jit
    def step(p, s):
        loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(apply_fn(p, xtr), ytr).mean()
        updates, s = opt.update(jax.grad(loss)(p), s)
        return optax.apply_updates(p, updates), s

    state = opt.init(params)
    for _ in range(300):
        params, state = step(params, state)
    split = dict(
        model=model,
        apply_fn=apply_fn,
        params=params,
        xa=jnp.asarray(x[1000:1400]),
        ya=jnp.asarray(y[1000:1400]),
        xe=jnp.asarray(x[1400:]),
        ye=jnp.asarray(y[1400:]),
    )
    assert metrics.accuracy(apply_fn, params, split["xe"], split["ye"]) > 0.9
    return split


@pytest.fixture(scope="module")
def digits(trained_digits):
    return trained_digits
