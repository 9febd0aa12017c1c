"""Many models in one program: P models trained together equal P models trained separately.

Equality is to float32 tolerance for the parameters and optimizer moments,
``assert_allclose(rtol=1e-5, atol=1e-6)``, and bitwise for the integer leaves
(step, Adam's count), the untouched ``uap`` and the step keys.  Not bitwise
because under ``vmap`` each model's matmuls and convolutions become one
batched (or, for a shared batch, one merged) kernel, which XLA:CPU blocks
differently from a single model's: the same sums in another order.  A
``lambda = 0`` model of a traced population also computes ``ce + 0 *
penalty`` rather than skipping the penalty (``jacuap.train.loss.skips_penalty``).
Adam divides by ``sqrt(v) + 1e-8``, so over many steps those rounding
differences grow on near-zero gradients; a few steps stay within the tolerance.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jacuap
from jacuap import configs, train
from jacuap.configs import default
from jacuap.errors import ConfigError
from jacuap.train import population

RTOL, ATOL = 1e-5, 1e-6
STEP = jax.jit(train.train_step, static_argnames=train.STATIC_ARGNAMES)
POP_STEP = jax.jit(train.population_train_step, static_argnames=train.POPULATION_STATIC_ARGNAMES)
BATCH, STEPS = 32, 3


@pytest.fixture(scope="module")
def digits():
    return jacuap.load_dataset("digits")


@pytest.fixture(scope="module")
def nets(digits):
    """Per architecture, the states of seeds 0..3 sharing one apply_fn and tx: the jitted steps then compile once
    per (architecture, lambda) for the whole file, not once per model (both are part of the state's tree).

    SGD with momentum, whose update is linear in the gradient: Adam's first updates are about
    ``lr * sign(g)`` and would hide a wrong gradient."""
    out = {}
    for name, kwargs in (("mlp", {"hidden": (16,)}), ("cnn", {"features": (4,), "dense": 8})):
        model = jacuap.create_model(name, digits.num_classes, digits.mean, digits.std, kwargs)
        states = [train.create_train_state(model, jax.random.PRNGKey(s), digits.image_shape,
                                         optax.sgd(0.05, momentum=0.9))
                  for s in range(4)]
        out[name] = [s.replace(apply_fn=states[0].apply_fn, tx=states[0].tx) for s in states]
    return out


def _batches(ds, order_seed):
    perm = train.epoch_permutation(order_seed, 0, len(ds.train_images))
    idx = [np.sort(perm[t * BATCH:(t + 1) * BATCH]) for t in range(STEPS)]
    return [(ds.train_images[i], ds.train_labels[i]) for i in idx]


def _separate(state, seed, lam, batches):
    """The ordinary loop: the jitted train_step, one model, keys step_key(seed, t)."""
    for t, (x, y) in enumerate(batches):
        state, _ = STEP(state, x, y, train.step_key(seed, t), lam, 1)
    return state


def _together(states, seeds, lams, batches_per_model):
    pop = train.stack_states(states)
    shared = all(b is batches_per_model[0] for b in batches_per_model)
    for t in range(STEPS):
        x = np.stack([b[t][0] for b in batches_per_model])
        y = np.stack([b[t][1] for b in batches_per_model])
        if shared:
            x, y = x[0], y[0]
        keys = train.population_keys(jnp.asarray(seeds), pop.step)
        pop, aux = POP_STEP(pop, x, y, keys, lams if isinstance(lams, float) else jnp.asarray(lams), 1)
        assert aux["loss"].shape == (len(seeds),)
    return pop


def _assert_same_model(together, separate):
    assert int(together.step) == int(separate.step)  # bitwise
    np.testing.assert_array_equal(together.uap, separate.uap)
    for a, b in zip(jax.tree_util.tree_leaves(together), jax.tree_util.tree_leaves(separate)):
        if not jnp.issubdtype(a.dtype, jnp.floating):
            np.testing.assert_array_equal(a, b)  # integer leaves (step, an optimizer's count): bitwise
    for a, b in zip(jax.tree_util.tree_leaves((together.params, together.opt_state)),
                    jax.tree_util.tree_leaves((separate.params, separate.opt_state))):
        np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL)  # float32 tolerance: see the module docstring


@pytest.mark.parametrize("name,seeds,lams,per_model_order", [
    ("mlp", [0, 1, 2], [0.0, 0.1, 0.5], True),   # different seeds and lambdas, each model its own data order
    ("mlp", [0, 1, 2], [0.0, 0.1, 0.5], False),  # one data order for all: a shared batch (in_axes None)
    ("mlp", [1, 2], 0.0, True),                  # a static Python 0.0: the plain step, penalty skipped
    ("cnn", [0, 1], [0.1, 0.1], True),     # one lambda: the CNN compiles one separate step, not two
])
def test_population_equals_separate_runs(digits, nets, name, seeds, lams, per_model_order):
    states = [nets[name][s] for s in seeds]
    shared = _batches(digits, seeds[0])
    batches = [_batches(digits, s) if per_model_order else shared for s in seeds]
    pop = _together(states, seeds, lams, batches)
    assert train.population_size(pop) == len(seeds)
    for p, seed in enumerate(seeds):
        lam = lams if isinstance(lams, float) else lams[p]
        _assert_same_model(train.unstack_state(pop, p), _separate(states[p], seed, lam, batches[p]))


def test_population_keys_are_the_step_keys_bit_for_bit():
    keys = train.population_keys(jnp.array([0, 5, 123456]), jnp.array([0, 7, 99]))
    for row, (seed, step) in zip(keys, [(0, 0), (5, 7), (123456, 99)]):
        np.testing.assert_array_equal(row, train.step_key(seed, step))


def test_other_lambdas_and_seeds_reuse_the_compiled_step(digits, nets):
    x, y = digits.train_images[:BATCH], digits.train_labels[:BATCH]
    sizes = []  # entries in the jitted step's cache: one per compiled program
    for seeds, lams in (([0, 1, 2], [0.0, 0.1, 0.5]), ([1, 2, 3], [0.3, 0.01, 0.0]), ([3, 0, 1], [1.0, 2.0, 0.2])):
        pop = train.stack_states([nets["mlp"][s] for s in seeds])
        POP_STEP(pop, x, y, train.population_keys(jnp.asarray(seeds), pop.step), jnp.asarray(lams), 1)
        sizes.append(POP_STEP._cache_size())
    assert sizes[1:] == sizes[:1] * 2  # lambda is traced: one program for every strength and seed


def _tiny_config(**overrides):
    # SGD, as in `nets`; with Adam, where a parameter's gradients of two steps nearly cancel in m, rounding
    # differences of 1e-7 grow to 1e-3 relative (seen at 2 steps of batch 512).
    config = default.get_config()
    config.update(dataset="digits", model="mlp", num_epochs=1, batch_size=512, jr_num_proj=1, progress=False,
                  eval_num_inputs=20, lr_schedule="constant", optimizer="sgd", learning_rate=0.05)
    config.model_kwargs = {"hidden": [16]}
    config.update(**overrides)
    return config


@pytest.fixture(scope="module")
def npz_digits(digits, tmp_path_factory):
    """digits with its seed-0 split fixed in a file: a dataset whose split (and normalisation) no seed changes."""
    path = tmp_path_factory.mktemp("data") / "digits.npz"
    np.savez(path, x_train=digits.train_images, y_train=digits.train_labels, x_test=digits.test_images,
             y_test=digits.test_labels)
    return f"npz:{path}"


def test_train_population_workdirs_are_separate_runs(tmp_path, npz_digits):
    config = _tiny_config(dataset=npz_digits)
    seeds, lams = [0, 1], [0.0, 0.5]
    dirs = [str(tmp_path / f"pop{p}") for p in range(2)]
    summaries = train.train_population(config, dirs, seeds, lams)
    # The reference: model 1 trained alone by train_and_evaluate (same data order, keys, format).
    alone = train.train_and_evaluate(configs.override(config, seed=1, jr_lambda=0.5), str(tmp_path / "alone"))
    restored = [train.restore_model(d) for d in dirs]
    reference = train.restore_model(str(tmp_path / "alone"))
    assert [r.step for r in restored] == [reference.step] * 2 == [1437 // 512] * 2
    assert [r.config.seed for r in restored] == seeds and [r.config.jr_lambda for r in restored] == lams
    for a, b in zip(jax.tree_util.tree_leaves(restored[1].params), jax.tree_util.tree_leaves(reference.params)):
        np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL)
    assert set(summaries[1]) == set(alone)
    assert summaries[1]["test_accuracy"] == pytest.approx(alone["test_accuracy"], abs=1 / 360)
    assert summaries[1]["mean_jacobian_frobenius_sq"] == pytest.approx(alone["mean_jacobian_frobenius_sq"], rel=1e-4)
    assert restored[1].meta["history"][0]["penalty"] == pytest.approx(reference.meta["history"][0]["penalty"],
                                                                     rel=1e-4)
    assert restored[0].meta["history"][0]["penalty"] is None  # lambda 0, as a plain run reports it


@pytest.mark.slow
def test_train_population_resumes_and_extends_without_recompiling(tmp_path):
    dirs = [str(tmp_path / f"pop{p}") for p in range(2)]
    train.train_population(_tiny_config(), dirs, [0, 0], [0.1, 0.5])
    summaries = train.train_population(_tiny_config(num_epochs=2), dirs, [0, 0], [0.1, 0.5])
    cache = population._TRACED_STEP._cache_size()  # a new entry: num_epochs is part of the optimizer's identity
    assert [s["steps"] for s in summaries] == [2 * (1437 // 512)] * 2
    assert [len(train.restore_model(d).meta["history"]) for d in dirs] == [2, 2]
    # Another population, other lambdas: the state's apply_fn and tx are the same objects, so the same program.
    train.train_population(_tiny_config(num_epochs=2), [str(tmp_path / f"new{p}") for p in range(2)], [0, 0],
                           [1.0, 0.0])
    assert population._TRACED_STEP._cache_size() == cache


def test_bad_arguments_name_the_argument(tmp_path):
    config = _tiny_config()
    dirs = [str(tmp_path / "a"), str(tmp_path / "b")]
    with pytest.raises(ConfigError, match="seeds: .*at least one"):
        train.train_population(config, [], [], [])
    with pytest.raises(ConfigError, match="jr_lambdas: 3 values for 2 seeds"):
        train.train_population(config, dirs, [0, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ConfigError, match="workdirs: 1 workdirs for 2 seeds"):
        train.train_population(config, dirs[:1], [0, 1], [0.1, 0.2])
    with pytest.raises(ConfigError, match="workdirs: each model needs its own"):
        train.train_population(config, [dirs[0], dirs[0]], [0, 1], 0.1)
    with pytest.raises(ConfigError, match=r"model 1 \(seeds\[1\]=-1"):
        train.train_population(config, dirs, [0, -1], 0.1)
    with pytest.raises(ConfigError, match="seeds: on digits each seed has its own split"):
        train.train_population(config, dirs, [0, 1], 0.1)
    with pytest.raises(ConfigError, match="registered models"):
        train.train_population(configs.override(config, model="my_pkg.nets:Net"), dirs, [0, 1], 0.1)
    assert not any((tmp_path / d).exists() for d in ("a", "b"))  # nothing written
    with pytest.raises(ValueError, match="states is empty"):
        train.stack_states([])
    model = jacuap.create_model("mlp", 10, (0.5,), (0.25,), {"hidden": (4,)})
    pop = train.create_population(model, [0, 1], (8, 8, 1), optax.sgd(0.1))
    with pytest.raises(IndexError, match="index 2 out of range for a population of 2"):
        train.unstack_state(pop, 2)
    x, keys = jnp.zeros((4, 8, 8, 1)), train.population_keys(jnp.array([0, 1]), pop.step)
    with pytest.raises(ValueError, match="jr_lambdas has shape \\(3,\\)"):
        train.population_train_step(pop, x, jnp.zeros(4, jnp.int32), keys, jnp.ones(3), 1)
    with pytest.raises(ValueError, match="labels has shape \\(3, 4\\)"):
        train.population_train_step(pop, x, jnp.zeros((3, 4), jnp.int32), keys, jnp.ones(2), 1)
    with pytest.raises(ValueError, match="not of one model"):
        other = jacuap.create_model("mlp", 10, (0.5,), (0.25,), {"hidden": (5,)})
        train.stack_states([train.unstack_state(pop, 0), train.create_train_state(
            other, jax.random.PRNGKey(0), (8, 8, 1), optax.sgd(0.1))])
