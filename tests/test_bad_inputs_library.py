"""No silent wrong numbers: every bad input to the library fails at once, naming the argument.

Each case used to give a plausible wrong number (NaN pixels, uint8 images,
labels out of range, a negative or NaN budget, zero iterations, an empty set)
or an obscure chex/Flax/unpacking error.  Now each raises
:class:`jacuap.checks.InputError` (a ValueError) or
:class:`jacuap.checks.InputTypeError` (a TypeError) with a one-line message
naming the argument.  Valid inputs give bitwise the results the kernels give
without the checks, and under ``jit`` the checks are skipped.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.datasets import load_digits

from jacuap import attacks, checks, jacobian, metrics, models
from jacuap.checks import InputError, InputTypeError

SHAPE = (8, 8, 1)
N = 12


def _params(model, shape):
    """Zero-free random parameters without compiling an initialiser."""
    shapes = jax.eval_shape(lambda k: models.init_params(model, k, shape), jax.random.PRNGKey(0))
    rng = np.random.RandomState(0)
    return jax.tree_util.tree_map(lambda s: jnp.asarray(rng.normal(0, 0.3, s.shape).astype(np.float32)), shapes)


MLP = models.MODELS["mlp"](num_classes=10, hidden=(8,), mean=(0.5,), std=(0.5,))
APPLY = models.make_apply_fn(MLP)
PARAMS = _params(MLP, SHAPE)
CNN = models.MODELS["cnn"](num_classes=10, features=(2,), dense=4, mean=(0.5,), std=(0.5,))
CNN_APPLY = models.make_apply_fn(CNN)
CNN_PARAMS = _params(CNN, SHAPE)
_DIGITS = load_digits()
X = (_DIGITS.images[:N] / 16.0).astype(np.float32).reshape((N,) + SHAPE)
Y = _DIGITS.target[:N].astype(np.int32)
KEY = jax.random.PRNGKey(0)


def _with(index, value, array=X):
    out = np.array(array)
    out[index] = value
    return out


NAN_X = _with((3, 2, 5, 0), np.nan)
UINT8_X = (X * 255).astype(np.uint8)
EMPTY_X, EMPTY_Y = X[:0], Y[:0]
BAD_Y = _with(5, 10, Y)  # K = 10 classes: 10 is out of range
KVEC_APPLY = lambda p, x: jnp.mean(APPLY(p, x), axis=0)  # noqa: E731  (K,) instead of (B, K)
SCALAR_APPLY = lambda p, x: jnp.sum(APPLY(p, x))  # noqa: E731
JAC = np.asarray(jacobian.input_jacobian(APPLY, PARAMS, X[:3]))

# name: (call, exception type, words the message must hold: the argument first)
CASES = {
    # NaN / infinite pixels
    "nan_pixels_input_jacobian": (lambda: jacobian.input_jacobian(APPLY, PARAMS, NAN_X), InputError,
                                  ("x", "finite", "(3, 2, 5, 0)")),
    "nan_pixels_accuracy": (lambda: metrics.accuracy(APPLY, PARAMS, NAN_X, Y), InputError, ("x", "nan")),
    "nan_pixels_sgd_uap": (lambda: attacks.sgd_uap(APPLY, PARAMS, NAN_X, Y, eps=0.1, key=KEY), InputError, ("x",)),
    "inf_pixels_frobenius_sq": (lambda: jacobian.frobenius_sq(APPLY, PARAMS, jnp.asarray(_with(0, np.inf))),
                                InputError, ("x", "inf")),
    "pixels_0_255_accuracy": (lambda: metrics.accuracy(APPLY, PARAMS, X * 255.0, Y), InputError, ("x", "[0, 1]")),
    # uint8 images
    "uint8_accuracy": (lambda: metrics.accuracy(APPLY, PARAMS, UINT8_X, Y), InputTypeError, ("x", "uint8")),
    "uint8_input_jacobian": (lambda: jacobian.input_jacobian(APPLY, PARAMS, UINT8_X), InputTypeError, ("x", "uint8")),
    "uint8_fgsm": (lambda: attacks.fgsm(APPLY, PARAMS, UINT8_X, Y, eps=0.1), InputTypeError, ("x",)),
    # labels
    "labels_out_of_range_accuracy": (lambda: metrics.accuracy(APPLY, PARAMS, X, BAD_Y), InputError,
                                     ("y", "[0, 10)", "index 5")),
    "labels_out_of_range_sgd_uap": (lambda: attacks.sgd_uap(APPLY, PARAMS, X, BAD_Y, eps=0.1, key=KEY), InputError,
                                    ("y", "[0, 10)")),
    "labels_negative_uer": (lambda: metrics.universal_evasion_rate(APPLY, PARAMS, X, _with(0, -1, Y), X[0]),
                            InputError, ("y",)),
    "labels_float_pgd": (lambda: attacks.pgd(APPLY, PARAMS, X, Y.astype(np.float32), eps=0.1, key=KEY),
                         InputTypeError, ("y", "integer")),
    "target_out_of_range_sgd_uap": (lambda: attacks.sgd_uap(APPLY, PARAMS, X, eps=0.1, key=KEY, targeted=10),
                                    InputError, ("targeted",)),
    "len_x_ne_len_y_accuracy": (lambda: metrics.accuracy(APPLY, PARAMS, X, Y[:-1]), InputError,
                                ("y", f"({N},)", f"({N - 1},)")),
    "len_x_ne_len_y_fgsm": (lambda: attacks.fgsm(APPLY, PARAMS, X, Y[:-1], eps=0.1), InputError, ("y",)),
    "len_x_ne_len_y_jacobian_metrics": (lambda: metrics.jacobian_metrics(APPLY, PARAMS, X, Y[:-1], KEY), InputError,
                                        ("y",)),
    # budgets
    "eps_negative_sgd_uap": (lambda: attacks.sgd_uap(APPLY, PARAMS, X, Y, eps=-0.1, key=KEY), InputError,
                             ("eps", ">= 0", "-0.1")),
    "eps_nan_sgd_uap": (lambda: attacks.sgd_uap(APPLY, PARAMS, X, Y, eps=float("nan"), key=KEY), InputError,
                        ("eps", "nan")),
    "eps_inf_sv_uap_l2": (lambda: attacks.singular_vector_uap(APPLY, PARAMS, X, Y, eps=float("inf"), norm="l2"),
                          InputError, ("eps", "inf")),
    "eps_over_1_linf_deepfool_uap": (lambda: attacks.deepfool_uap(APPLY, PARAMS, X, eps=8.0, key=KEY), InputError,
                                     ("eps", "<= 1 for linf")),
    "eps_negative_first_order_bound": (lambda: metrics.first_order_uap_bound(2.0, -0.1, "l2", 64), InputError,
                                       ("eps",)),
    "eps_nan_project": (lambda: attacks.project(jnp.zeros(3), "l2", float("nan")), InputError, ("eps",)),
    # iteration counts and batch sizes
    "num_iters_0_stacked_spectral_norm": (lambda: jacobian.stacked_spectral_norm(APPLY, PARAMS, X, KEY, num_iters=0),
                                          InputError, ("num_iters", ">= 1")),
    "num_iters_0_spectral_norm": (lambda: jacobian.spectral_norm(APPLY, PARAMS, X, KEY, num_iters=0), InputError,
                                  ("num_iters",)),
    "num_proj_0_frobenius_sq": (lambda: jacobian.frobenius_sq(APPLY, PARAMS, X, KEY, num_proj=0), InputError,
                                ("num_proj",)),
    "num_epochs_0_sgd_uap": (lambda: attacks.sgd_uap(APPLY, PARAMS, X, Y, eps=0.1, key=KEY, num_epochs=0),
                             InputError, ("num_epochs",)),
    "max_passes_0_deepfool_uap": (lambda: attacks.deepfool_uap(APPLY, PARAMS, X, eps=0.1, key=KEY, max_passes=0),
                                  InputError, ("max_passes",)),
    "num_steps_0_pgd": (lambda: attacks.pgd(APPLY, PARAMS, X, Y, eps=0.1, key=KEY, num_steps=0), InputError,
                        ("num_steps",)),
    "batch_size_0_predict": (lambda: metrics.predict(APPLY, PARAMS, X, batch_size=0), InputError, ("batch_size",)),
    "batch_size_float_mean_frobenius_sq": (lambda: metrics.mean_frobenius_sq(APPLY, PARAMS, X, batch_size=2.5),
                                           InputTypeError, ("batch_size",)),
    "target_fooling_rate_1_5_deepfool_uap": (
        lambda: attacks.deepfool_uap(APPLY, PARAMS, X, eps=0.1, key=KEY, target_fooling_rate=1.5), InputError,
        ("target_fooling_rate",)),
    # empty sets
    "empty_accuracy": (lambda: metrics.accuracy(APPLY, PARAMS, EMPTY_X, EMPTY_Y), InputError, ("x", "empty")),
    "empty_mean_frobenius_sq": (lambda: metrics.mean_frobenius_sq(APPLY, PARAMS, EMPTY_X), InputError, ("x", "empty")),
    "empty_stacked_sigma_max": (lambda: metrics.stacked_sigma_max(APPLY, PARAMS, EMPTY_X), InputError, ("x",)),
    "empty_sgd_uap": (lambda: attacks.sgd_uap(APPLY, PARAMS, EMPTY_X, EMPTY_Y, eps=0.1, key=KEY), InputError,
                      ("x", "empty")),
    "empty_jacobians_pairwise": (lambda: metrics.pairwise_metrics_from_jacobians(JAC[:0]), InputError, ("jac",)),
    # shapes the model cannot take
    "cnn_without_channel_axis_predict": (lambda: metrics.predict(CNN_APPLY, CNN_PARAMS, X[..., 0]), InputError,
                                         ("x", "(12, 8, 8)", "channel axis")),
    "cnn_without_channel_axis_input_jacobian": (lambda: jacobian.input_jacobian(CNN_APPLY, CNN_PARAMS, X[..., 0]),
                                                InputError, ("x", "channel axis")),
    "one_image_without_batch_axis": (lambda: metrics.predict(APPLY, PARAMS, X[0, :, 0, 0]), InputError,
                                     ("x", "ndim >= 2")),
    "apply_fn_returns_k_accuracy": (lambda: metrics.accuracy(KVEC_APPLY, PARAMS, X, Y), InputError,
                                    ("apply_fn", "(B, K)", "(10,)")),
    "apply_fn_returns_scalar_input_jacobian": (lambda: jacobian.input_jacobian(SCALAR_APPLY, PARAMS, X), InputError,
                                               ("apply_fn", "()")),
    "apply_fn_returns_scalar_sgd_uap": (lambda: attacks.sgd_uap(SCALAR_APPLY, PARAMS, X, Y, eps=0.1, key=KEY),
                                        InputError, ("apply_fn",)),
    # perturbations
    "v_wrong_shape_uer": (lambda: metrics.universal_evasion_rate(APPLY, PARAMS, X, Y, np.zeros(64, np.float32)),
                          InputError, ("v", "(8, 8, 1)", "(64,)")),
    "v_batch_shaped_fooling_rate": (lambda: metrics.fooling_rate(APPLY, PARAMS, X, X[:1]), InputError, ("v",)),
    "v_nan_uer": (lambda: metrics.universal_evasion_rate(APPLY, PARAMS, X, Y, np.full(SHAPE, np.nan)), InputError,
                  ("v", "finite")),
    "v_none_fooling_rate": (lambda: metrics.fooling_rate(APPLY, PARAMS, X, None), InputTypeError, ("v",)),
    "init_wrong_shape_sgd_uap": (lambda: attacks.sgd_uap(APPLY, PARAMS, X, Y, eps=0.1, key=KEY, init=np.zeros(64)),
                                 InputError, ("init", "(8, 8, 1)")),
    "direction_wrong_shape_sv_uap": (
        lambda: attacks.singular_vector_uap(APPLY, PARAMS, X, Y, eps=0.1, direction=np.ones((8, 8))), InputError,
        ("direction",)),
    # keys
    "key_split_spectral_norm": (lambda: jacobian.spectral_norm(APPLY, PARAMS, X, jax.random.split(KEY, 2)),
                                InputError, ("key", "ONE")),
    "key_int_sgd_uap": (lambda: attacks.sgd_uap(APPLY, PARAMS, X, Y, eps=0.1, key=0), InputTypeError, ("key",)),
    "key_none_jacobian_metrics": (lambda: metrics.jacobian_metrics(APPLY, PARAMS, X, Y, None), InputError,
                                  ("key", "required")),
    # Jacobians, pairwise tables, correlations
    "nan_jacobians_pairwise": (lambda: metrics.pairwise_metrics_from_jacobians(_with((0, 0, 0), np.nan, JAC)),
                               InputError, ("jac", "nan")),
    "unknown_pairwise_metric": (lambda: metrics.pairwise_metrics_from_jacobians(JAC, ("cosine",)), InputError,
                                ("which",)),
    "class_pair_summary_labels_out_of_range": (lambda: metrics.class_pair_summary(np.eye(3), [0, 1, 5], 2),
                                               InputError, ("labels", "[0, 2)")),
    "class_pair_summary_not_square": (lambda: metrics.class_pair_summary(np.ones((3, 2)), [0, 1, 1], 2), InputError,
                                      ("matrix",)),
    "pearson_nan": (lambda: metrics.pearson([1.0, float("nan"), 3.0], [1.0, 2.0, 3.0]), InputError, ("a", "nan")),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_fails_naming_the_argument(case):
    call, error, words = CASES[case]
    with pytest.raises(error) as info:
        call()
    assert type(info.value) is error
    assert isinstance(info.value, TypeError if error is InputTypeError else ValueError)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(words[0]) or f" {words[0]} " in f" {message} ", (words[0], message)
    for word in words[1:]:
        assert word in message, (word, message)


def test_there_are_many_cases():
    assert len(CASES) >= 25


def _no_checks(monkeypatch):
    """Every check used by the library replaced by a no-op (what the library computed before them)."""
    import jacuap.attacks.sgd_uap as sgd_module
    import jacuap.metrics.rates as rates_module

    for module in (jacobian, rates_module, sgd_module):
        for name in dir(module):
            if name.startswith("check_") and getattr(getattr(module, name), "__module__", "") == "jacuap.checks":
                monkeypatch.setattr(module, name, lambda *a, **k: None)


def test_valid_inputs_give_bitwise_the_unchecked_results(monkeypatch):
    def run():
        return (
            np.asarray(jacobian.input_jacobian(APPLY, PARAMS, X)),
            np.asarray(jacobian.stacked_spectral_norm(APPLY, PARAMS, X, KEY, num_iters=5, method="power")[1]),
            metrics.accuracy(APPLY, PARAMS, X, Y, batch_size=5),
            np.asarray(attacks.sgd_uap(APPLY, PARAMS, X, Y, eps=0.1, key=KEY, num_epochs=2, batch_size=4).v),
        )

    checked = run()
    with monkeypatch.context() as m:
        _no_checks(m)
        unchecked = run()
    for a, b in zip(checked, unchecked):
        np.testing.assert_array_equal(a, b)
    # and the accuracy is the plain definition
    assert checked[2] == float(np.mean(np.argmax(np.asarray(APPLY(PARAMS, X)), -1) == Y))


def test_checks_are_skipped_under_jit_and_results_match_eager():
    eager = jacobian.frobenius_sq(APPLY, PARAMS, X)
    jitted = jax.jit(lambda p, x: jacobian.frobenius_sq(APPLY, p, x))(PARAMS, X)
    np.testing.assert_allclose(jitted, eager, rtol=1e-6)
    sigma_eager, _ = jacobian.stacked_spectral_norm(APPLY, PARAMS, X, method="gram")
    sigma_jit, _ = jax.jit(lambda p, x: jacobian.stacked_spectral_norm(APPLY, p, x, method="gram"))(PARAMS, X)
    np.testing.assert_allclose(sigma_jit, sigma_eager, rtol=1e-5)
    # Traced NaN inputs are not inspected (no host round-trip, no ConcretizationTypeError): NaN logits out.
    logits, _ = jax.jit(lambda x: jacobian.logits_and_jacobian_penalty(APPLY, PARAMS, x))(jnp.asarray(NAN_X))
    assert bool(jnp.all(jnp.isnan(logits[3])))
    # and the PGD that adversarial training jits still traces with traced labels and key
    x_adv = jax.jit(lambda x, y, k: attacks.pgd(APPLY, PARAMS, x, y, eps=0.1, num_steps=2, key=k))(X, Y, KEY)
    assert x_adv.shape == X.shape


def test_checks_module_messages_name_the_argument_as_passed():
    with pytest.raises(InputError, match="x_eval"):
        checks.check_images(NAN_X, "x_eval")
