"""jacuap.checks: each rule once (a good value passes, a bad one raises the right type naming the argument)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jacuap import checks
from jacuap.checks import InputError, InputTypeError
from jacuap.errors import UserError

W = jnp.ones((3, 2))  # a linear "model" with d = 3 inputs and K = 2 classes
LINEAR = lambda w, x: x.reshape(len(x), -1) @ w  # noqa: E731
GOOD_X = np.full((4, 3), 0.5, np.float32)

# (check, kwargs, expected exception or None, words the message must hold)
CASES = {
    # images
    "images_ok": (checks.check_images, dict(x=GOOD_X), None, ()),
    "images_ok_jax": (checks.check_images, dict(x=jnp.asarray(GOOD_X)), None, ()),
    "images_uint8": (checks.check_images, dict(x=np.zeros((4, 3), np.uint8)), InputTypeError, ("x", "uint8", "255")),
    "images_int": (checks.check_images, dict(x=np.zeros((4, 3), np.int32)), InputTypeError, ("x", "floating")),
    "images_1d": (checks.check_images, dict(x=np.zeros(3, np.float32)), InputError, ("x", "ndim >= 2", "(3,)")),
    "images_empty": (checks.check_images, dict(x=np.zeros((0, 3), np.float32)), InputError, ("x", "empty")),
    "images_nan": (checks.check_images, dict(x=np.array([[0.1, np.nan]])), InputError, ("x", "finite", "nan", "(0, 1)")),
    "images_inf_jax": (checks.check_images, dict(x=jnp.array([[0.1], [jnp.inf]])), InputError, ("x", "inf", "(1, 0)")),
    "images_range": (checks.check_images, dict(x=np.array([[0.0, 255.0]])), InputError, ("x", "[0, 1]", "255")),
    "images_negative": (checks.check_images, dict(x=np.array([[-0.5, 0.5]]), name="x_eval"), InputError,
                        ("x_eval", "[0, 1]")),
    "images_any_range": (checks.check_images, dict(x=np.array([[-3.0, 7.0]]), unit_range=False), None, ()),
    # labels
    "labels_ok": (checks.check_labels, dict(y=[0, 1, 1], n=3, num_classes=2), None, ()),
    "labels_float": (checks.check_labels, dict(y=np.array([0.0, 1.0]), n=2), InputTypeError, ("y", "integer")),
    "labels_shape": (checks.check_labels, dict(y=np.array([0, 1]), n=3), InputError, ("y", "(3,)", "(2,)")),
    "labels_2d": (checks.check_labels, dict(y=np.zeros((3, 1), int), n=3), InputError, ("y", "(3,)")),
    "labels_high": (checks.check_labels, dict(y=[0, 10], n=2, num_classes=10), InputError, ("y", "[0, 10)", "index 1")),
    "labels_negative": (checks.check_labels, dict(y=[-1, 0], n=2), InputError, ("y", ">= 0", "-1")),
    "class_ok": (checks.check_class, dict(value=3, num_classes=10, name="targeted"), None, ()),
    "class_high": (checks.check_class, dict(value=10, num_classes=10, name="targeted"), InputError,
                   ("targeted", "[0, 10)")),
    "class_float": (checks.check_class, dict(value=1.5, num_classes=10, name="targeted"), InputTypeError,
                    ("targeted", "integer")),
    # the model
    "logits_ok": (checks.check_logits, dict(apply_fn=LINEAR, params=W, x=GOOD_X), None, ()),
    "logits_scalar": (checks.check_logits, dict(apply_fn=lambda w, x: jnp.sum(x @ w), params=W, x=GOOD_X),
                      InputError, ("apply_fn", "(B, K)", "()")),
    "logits_vector": (checks.check_logits, dict(apply_fn=lambda w, x: jnp.mean(x @ w, 0), params=W, x=GOOD_X),
                      InputError, ("apply_fn", "(B, K)", "(2,)")),
    "logits_one_class": (checks.check_logits, dict(apply_fn=LINEAR, params=jnp.ones((3, 1)), x=GOOD_X),
                         InputError, ("apply_fn", "K >= 2")),
    "logits_tuple": (checks.check_logits, dict(apply_fn=lambda w, x: (x @ w, x), params=W, x=GOOD_X),
                     InputTypeError, ("apply_fn", "ONE array")),
    "logits_int": (checks.check_logits, dict(apply_fn=lambda w, x: (x @ w).astype(jnp.int32), params=W, x=GOOD_X),
                   InputTypeError, ("apply_fn", "floating")),
    "logits_not_callable": (checks.check_logits, dict(apply_fn=None, params=W, x=GOOD_X), InputTypeError,
                            ("apply_fn", "function")),
    "logits_input_shape": (checks.check_logits, dict(apply_fn=LINEAR, params=W, x=np.zeros((4, 5), np.float32)),
                           InputError, ("x", "(4, 5)", "model")),
    "jacobian_inputs_one_output": (checks.check_jacobian_inputs,
                                   dict(apply_fn=LINEAR, params=jnp.ones((3, 1)), x=GOOD_X), None, ()),
    # numbers
    "budget_ok": (checks.check_budget, dict(eps=0.3, norm="linf"), None, ()),
    "budget_l2_large_ok": (checks.check_budget, dict(eps=5.0, norm="l2"), None, ()),
    "budget_negative": (checks.check_budget, dict(eps=-0.1, norm="l2"), InputError, ("eps", ">= 0", "-0.1")),
    "budget_nan": (checks.check_budget, dict(eps=float("nan"), norm="linf"), InputError, ("eps", "finite", "nan")),
    "budget_inf_l2": (checks.check_budget, dict(eps=float("inf"), norm="l2"), InputError, ("eps", "inf")),
    "budget_linf_over_1": (checks.check_budget, dict(eps=8.0, norm="linf"), InputError, ("eps", "<= 1 for linf")),
    "budget_string": (checks.check_budget, dict(eps="0.1", norm="linf"), InputTypeError, ("eps",)),
    "number_ok": (checks.check_number, dict(value=0.5, name="rate", minimum=0.0, maximum=1.0), None, ()),
    "number_strict": (checks.check_number, dict(value=0.0, name="step", minimum=0.0, strict=True), InputError,
                      ("step", "> 0")),
    "number_over": (checks.check_number, dict(value=1.5, name="rate", maximum=1.0), InputError, ("rate", "<= 1")),
    "finite_ok": (checks.check_finite, dict(x=np.ones(3), name="a"), None, ()),
    "finite_nan": (checks.check_finite, dict(x=np.array([1.0, np.nan]), name="a"), InputError, ("a", "nan")),
    "int_ok": (checks.check_positive_int, dict(value=np.int64(3), name="num_iters"), None, ()),
    "int_zero": (checks.check_positive_int, dict(value=0, name="num_iters"), InputError, ("num_iters", ">= 1")),
    "int_float": (checks.check_positive_int, dict(value=5.0, name="batch_size"), InputTypeError, ("batch_size",)),
    "int_bool": (checks.check_positive_int, dict(value=True, name="num_epochs"), InputTypeError, ("num_epochs",)),
    # keys
    "key_ok": (checks.check_key, dict(key=jax.random.PRNGKey(0)), None, ()),
    "key_typed_ok": (checks.check_key, dict(key=jax.random.key(0)), None, ()),
    "key_none": (checks.check_key, dict(key=None, why="for the shuffles"), InputError, ("key", "required", "shuffles")),
    "key_int": (checks.check_key, dict(key=np.int32(0)), InputTypeError, ("key", "PRNGKey")),
    "key_many": (checks.check_key, dict(key=jax.random.split(jax.random.PRNGKey(0), 3)), InputError,
                 ("key", "ONE", "(3, 2)")),
    "key_many_typed": (checks.check_key, dict(key=jax.random.split(jax.random.key(0), 3)), InputError,
                       ("key", "ONE")),
    # perturbations and Jacobians
    "perturbation_ok": (checks.check_perturbation, dict(v=np.zeros((8, 8, 1)), image_shape=(8, 8, 1)), None, ()),
    "perturbation_shape": (checks.check_perturbation, dict(v=np.zeros((1, 8, 8, 1)), image_shape=(8, 8, 1)),
                           InputError, ("v", "(8, 8, 1)", "(1, 8, 8, 1)")),
    "perturbation_nan": (checks.check_perturbation, dict(v=np.full(3, np.nan), image_shape=(3,), name="init"),
                         InputError, ("init", "finite")),
    "perturbation_none": (checks.check_perturbation, dict(v=None, image_shape=(3,)), InputTypeError, ("v",)),
    "perturbation_bool": (checks.check_perturbation, dict(v=np.ones(3, bool), image_shape=(3,)), InputTypeError,
                          ("v", "real")),
    "jacobians_ok": (checks.check_jacobians, dict(jac=np.zeros((4, 2, 3))), None, ()),
    "jacobians_2d": (checks.check_jacobians, dict(jac=np.zeros((4, 3))), InputError, ("jac", "(N, K, *S)")),
    "jacobians_empty": (checks.check_jacobians, dict(jac=np.zeros((0, 2, 3))), InputError, ("jac", "empty")),
    "jacobians_float0": (checks.check_jacobians, dict(jac=np.zeros((4, 2, 3), jax.dtypes.float0)), InputTypeError,
                         ("jac", "floating")),
    "jacobians_inf": (checks.check_jacobians, dict(jac=np.full((1, 1, 2), np.inf)), InputError, ("jac", "inf")),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_rule(case):
    check, kwargs, error, words = CASES[case]
    if error is None:
        check(**kwargs)
        return
    with pytest.raises(error) as info:
        check(**kwargs)
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message, (word, message)
    assert isinstance(info.value, UserError)  # the programs' one-line error family


def test_check_logits_returns_the_class_count_and_caches():
    calls = []

    def apply_fn(w, x):
        calls.append(1)
        return LINEAR(w, x)

    assert checks.check_logits(apply_fn, W, GOOD_X) == 2
    assert checks.check_logits(apply_fn, W, GOOD_X) == 2
    assert len(calls) == 1  # traced once per (model, parameter shapes, input shape)


def test_flax_shape_error_becomes_a_value_error_naming_x():
    from jacuap import models

    model = models.MODELS["cnn"](num_classes=3, features=(2,), dense=4)
    apply_fn = models.make_apply_fn(model)
    params = jax.eval_shape(lambda k: models.init_params(model, k, (8, 8, 1)), jax.random.PRNGKey(0))
    params = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), params)
    assert checks.check_logits(apply_fn, params, np.zeros((2, 8, 8, 1), np.float32)) == 3
    with pytest.raises(InputError, match=r"x has shape \(2, 8, 8\).*channel axis") as info:
        checks.check_logits(apply_fn, params, np.zeros((2, 8, 8), np.float32))
    assert info.value.__cause__ is not None  # the model's own error stays chained


def test_checks_are_skipped_on_tracers():
    # Under jit every argument is a tracer: nothing is inspected, nothing raises, nothing breaks tracing.
    def f(x, y, eps, key, v):
        checks.check_images(x)
        checks.check_labels(y, 99, 2)
        checks.check_budget(eps, "linf")
        checks.check_key(key)
        checks.check_perturbation(v, (5,))
        checks.check_finite(x, "x")
        assert checks.check_logits(LINEAR, W, x) is None
        return x.sum()

    bad = (jnp.full((4, 3), jnp.nan), jnp.array([7, 7]), jnp.asarray(-1.0), jnp.zeros(3), jnp.zeros(2))
    assert bool(jnp.isnan(jax.jit(f)(*bad)))


def test_concrete_closure_under_jit_is_still_checked():
    x = jnp.full((2, 3), jnp.nan)
    with pytest.raises(InputError, match="x must hold finite"):
        jax.jit(lambda w: checks.check_images(x) or w)(W)
