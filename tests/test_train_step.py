"""One training step (plain, PGD, UAT) and one evaluation step, on small batches."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jacuap
from jacuap import configs, train


def _digits_state(batch=64):
    ds = jacuap.load_dataset("digits")
    model = jacuap.create_model("mlp", 10, ds.mean, ds.std)
    state = train.create_train_state(model, jax.random.PRNGKey(0), ds.image_shape, optax.adam(1e-3))
    return state, ds.train_images[:batch], ds.train_labels[:batch]


def test_one_step_on_mock_data_updates_the_state():
    # As in Flax's examples: a fresh state, one jitted step on a random batch.
    model = jacuap.create_model("mlp", 10, (0.5,), (0.25,))
    state = train.create_train_state(model, jax.random.PRNGKey(0), (8, 8, 1), optax.sgd(0.1))
    images = jax.random.uniform(jax.random.PRNGKey(1), (16, 8, 8, 1))
    labels = jax.random.randint(jax.random.PRNGKey(2), (16,), 0, 10)
    step = jax.jit(train.train_step, static_argnames=train.STATIC_ARGNAMES)
    new_state, aux = step(state, images, labels, train.step_key(0, 0), 0.5, 1)
    assert int(new_state.step) == 1
    # The step counter is a strong int32 from the start, as a restored checkpoint's is: a resume reuses the program.
    assert state.step.dtype == new_state.step.dtype == jnp.int32 and not state.step.weak_type
    assert set(aux) == {"loss", "ce", "penalty", "correct"}
    assert float(aux["penalty"]) > 0 and 0 <= int(aux["correct"]) <= 16
    np.testing.assert_allclose(aux["loss"], aux["ce"] + 0.5 * aux["penalty"], rtol=1e-6)
    changed = jax.tree_util.tree_map(lambda a, b: bool(jnp.any(a != b)), state.params, new_state.params)
    assert all(jax.tree_util.tree_leaves(changed))
    np.testing.assert_array_equal(new_state.uap, 0.0)  # only UAT moves it
    # Repeating the step on the same batch lowers its loss.
    again = step(new_state, images, labels, train.step_key(0, 1), 0.5, 1)[1]
    assert float(again["ce"]) < float(aux["ce"])


def test_step_key_is_a_pure_function_of_seed_and_step():
    assert jnp.array_equal(train.step_key(3, 7), train.step_key(3, 7))
    assert not jnp.array_equal(train.step_key(3, 7), train.step_key(3, 8))
    assert not jnp.array_equal(train.step_key(3, 7), train.step_key(4, 7))
    assert jnp.array_equal(train.step_key(3, 7), jax.random.fold_in(jax.random.PRNGKey(3), 7))


def test_eval_step_counts_unmasked_correct_predictions():
    apply_fn = lambda w, x: x @ w
    x = jnp.eye(3)
    labels = jnp.array([0, 1, 0])
    assert float(train.eval_step(jnp.eye(3), apply_fn, x, labels, jnp.ones(3))) == 2
    assert float(train.eval_step(jnp.eye(3), apply_fn, x, labels, jnp.array([1.0, 0.0, 1.0]))) == 1


def test_uat_step_keeps_a_shared_perturbation_in_the_ball():
    state, x, y = _digits_state()
    adversary = train.Adversary("uat", 0.1, 1, 0.025)
    step = jax.jit(train.train_step, static_argnames=("jr_lambda", "jr_num_proj", "input_std", "adversary"))
    losses = []
    for i in range(6):
        state, aux = step(state, x, y, jax.random.PRNGKey(i), 0.0, None, None, adversary)
        losses.append(float(aux["ce"]))
    assert state.uap.shape == (8, 8, 1)
    assert 0 < float(jnp.max(jnp.abs(state.uap))) <= 0.1 + 1e-7
    # Sign steps of 0.025: after 6 steps every pixel moved, and some hit the bound.
    assert float(jnp.max(jnp.abs(state.uap))) == pytest.approx(0.1)


def test_pgd_training_step_trains_on_harder_inputs():
    state, x, y = _digits_state()
    plain = train.train_step(state, x, y, jax.random.PRNGKey(0), 0.0, None)[1]
    adv = train.train_step(state, x, y, jax.random.PRNGKey(0), 0.0, None, None,
                           train.Adversary("pgd", 0.2, 5, 0.1))[1]
    assert float(adv["ce"]) > float(plain["ce"])


def test_adversary_default_step_sizes():
    base = configs.get_config("digits")
    assert train.make_adversary(base) == train.Adversary()
    pgd = train.make_adversary(configs.override(base, adv_training="pgd", adv_eps=0.1, adv_steps=5))
    assert pgd == train.Adversary("pgd", 0.1, 5, pytest.approx(2.5 * 0.1 / 5))
    uat = train.make_adversary(configs.override(base, adv_training="uat", adv_eps=0.2))
    assert uat.step_size == pytest.approx(0.05)
    explicit = train.make_adversary(configs.override(base, adv_training="uat", adv_step_size=0.01))
    assert explicit.step_size == 0.01


def test_optimizer_follows_the_config():
    config = configs.override(configs.get_config("digits"), learning_rate=0.5, lr_schedule="constant",
                              optimizer="sgd", momentum=0.0)
    tx = train.make_optimizer(config, steps_per_epoch=10)
    params = {"w": jnp.ones(2)}
    updates, _ = tx.update({"w": jnp.ones(2)}, tx.init(params), params)
    np.testing.assert_allclose(updates["w"], -0.5)
