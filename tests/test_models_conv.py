"""jacuap.models.conv: the same convolution as lax, in value and every derivative (float64).

Inputs come from numpy, not ``jax.random``: an eager ``jax.random.normal``
compiles a threefry program per shape, which was half this file's time.
"""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jacuap import models
from jacuap.models import conv
from models_support import random_params

# (lhs shape, kernel shape, strides, padding, lhs_dilation, rhs_dilation, dimension numbers, groups).
# Thin ones (C_in * prod(kernel) <= conv.MAX_PATCH_CONTRACTION) take the patch path, the others the
# custom-JVP convolution.
VARIANTS = {
    "wide_same": ((2, 6, 6, 8), (3, 3, 8, 4), (1, 1), "SAME", None, None, ("NHWC", "HWIO", "NHWC"), 1),
    "wide_stride2_explicit": ((2, 7, 7, 9), (3, 3, 9, 2), (2, 2), ((1, 0), (2, 1)), None, None,
                              ("NHWC", "HWIO", "NHWC"), 1),
    "wide_nchw_oihw": ((2, 8, 5, 5), (3, 8, 3, 3), (1, 1), "VALID", None, None, ("NCHW", "OIHW", "NCHW"), 1),
    "nhwc_same": ((2, 7, 6, 3), (3, 3, 3, 4), (1, 1), "SAME", None, None, ("NHWC", "HWIO", "NHWC"), 1),
    "nhwc_stride2_valid": ((2, 9, 8, 2), (3, 2, 2, 5), (2, 2), "VALID", None, None, ("NHWC", "HWIO", "NHWC"), 1),
    "explicit_pad_dilated": ((1, 8, 8, 2), (3, 3, 2, 3), (1, 2), ((1, 2), (0, 1)), (1, 1), (2, 1),
                             ("NHWC", "HWIO", "NHWC"), 1),
    "grouped": ((2, 6, 6, 4), (3, 3, 2, 6), (1, 1), "SAME", None, None, ("NHWC", "HWIO", "NHWC"), 2),
    "nchw_oihw": ((2, 3, 7, 7), (4, 3, 3, 3), (1, 1), "SAME", None, None, ("NCHW", "OIHW", "NCHW"), 1),
    "conv1d": ((2, 10, 3), (3, 3, 2), (1,), "SAME", None, None, ("NWC", "WIO", "NWC"), 1),
}


def _pair(name):
    lhs_shape, rhs_shape, strides, padding, lhs_dil, rhs_dil, dn, groups = VARIANTS[name]
    rng = np.random.RandomState(0)
    lhs = jnp.asarray(rng.normal(size=lhs_shape))
    rhs = jnp.asarray(rng.normal(size=rhs_shape))

    def make(fn):
        return lambda l, r: fn(l, r, strides, padding, lhs_dil, rhs_dil, dn, feature_group_count=groups)

    return lhs, rhs, make(conv.conv_general_dilated), make(lax.conv_general_dilated)


@pytest.fixture(autouse=True)
def _float64():
    with jax.enable_x64(True):
        yield


def _first_derivatives(fn, lhs, rhs):
    """Value, reverse mode (through a nonlinearity), forward mode, and linearize + transpose."""
    value = fn(lhs, rhs)
    grads = jax.grad(lambda l, r: jnp.sum(jnp.tanh(fn(l, r)) ** 2), (0, 1))(lhs, rhs)
    _, tangent = jax.jvp(fn, (lhs, rhs), (jnp.cos(lhs), jnp.sin(rhs)))
    # the power-iteration path: a linearized map and its transpose
    _, lin = jax.linearize(lambda l: fn(l, rhs), lhs)
    transposed = jax.linear_transpose(lin, lhs)(jnp.cos(value))[0]
    return value, grads, tangent, transposed


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_value_and_first_derivatives_match_lax(name):
    lhs, rhs, ours, ref = _pair(name)
    # jitted: one compilation per form is 3x cheaper than the eager transforms' many small ones
    value, grads, tangent, transposed = jax.jit(functools.partial(_first_derivatives, ours))(lhs, rhs)
    value_ref, grads_ref, tangent_ref, transposed_ref = jax.jit(functools.partial(_first_derivatives, ref))(lhs, rhs)
    np.testing.assert_allclose(value, value_ref, rtol=1e-12, atol=1e-12)
    for a, b in zip(grads, grads_ref):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(tangent, tangent_ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(transposed, transposed_ref, rtol=1e-10, atol=1e-12)


def _takes_patch_path(name):
    lhs_shape, rhs_shape, _, _, lhs_dil, rhs_dil, dn, groups = VARIANTS[name]
    rhs_spec = lax.conv_dimension_numbers(lhs_shape, rhs_shape, dn).rhs_spec
    contraction = np.prod([rhs_shape[a] for a in rhs_spec[1:]])
    return groups == 1 and lhs_dil is None and rhs_dil is None and contraction <= conv.MAX_PATCH_CONTRACTION


def test_variants_cover_both_paths():
    thin = {name for name in VARIANTS if _takes_patch_path(name)}
    assert {"nhwc_same", "nhwc_stride2_valid", "nchw_oihw", "conv1d"} == thin


@pytest.mark.parametrize("name", ["nhwc_same", "wide_stride2_explicit", "grouped"])
def test_second_derivatives_match_lax(name):
    """grad of an input-gradient norm w.r.t. the kernel (the Jacobian penalty), and a Hessian."""
    lhs, rhs, ours, ref = _pair(name)

    def penalty(fn):
        def p(r):
            g = jax.grad(lambda l: jnp.sum(jnp.tanh(fn(l, r))))(lhs)
            return jnp.sum(g**2)

        return p

    grad = lambda fn: jax.jit(jax.grad(penalty(fn)))(rhs)
    np.testing.assert_allclose(grad(ours), grad(ref), rtol=1e-9, atol=1e-12)
    small = lhs[:1]
    hess = lambda fn: jax.jit(jax.hessian(lambda l: jnp.sum(jnp.tanh(fn(l, rhs)) ** 3)))(small)
    np.testing.assert_allclose(hess(ours), hess(ref), rtol=1e-9, atol=1e-12)


def test_batch_group_count_falls_back_to_lax():
    rng = np.random.RandomState(0)
    lhs = jnp.asarray(rng.normal(size=(4, 5, 5, 2)))
    rhs = jnp.asarray(rng.normal(size=(3, 3, 2, 6)))
    dn = ("NHWC", "HWIO", "NHWC")
    ours = conv.conv_general_dilated(lhs, rhs, (1, 1), "SAME", dimension_numbers=dn, batch_group_count=2)
    ref = lax.conv_general_dilated(lhs, rhs, (1, 1), "SAME", dimension_numbers=dn, batch_group_count=2)
    np.testing.assert_allclose(ours, ref, rtol=1e-12)


@pytest.mark.parametrize("name", ["cnn", "resnet_tiny"])
def test_models_equal_with_lax_convolution(name):
    """jacuap's models give the same logits and input Jacobians as with plain lax convolutions.

    The Jacobian is ``jacrev`` per example: the reverse mode is the one the
    custom JVP rule changes (its transpose runs on the swapped kernel).
    """
    shape = (12, 12, 1) if name == "cnn" else (8, 8, 3)
    model = models.create_model(name, 5, (0.3,) * shape[-1], (0.4,) * shape[-1])
    plain = model.clone(conv_general_dilated=lax.conv_general_dilated)
    params = random_params(model, shape)
    x = jnp.asarray(np.random.RandomState(1).uniform(size=(2,) + shape))

    @functools.partial(jax.jit, static_argnums=0)
    def logits_and_jacobian(m, p, x):
        f = models.make_apply_fn(m)
        return f(p, x), jax.vmap(jax.jacrev(lambda xi: f(p, xi[None])[0]))(x)

    (logits, jac), (logits_ref, jac_ref) = logits_and_jacobian(model, params, x), logits_and_jacobian(plain, params, x)
    assert jac.shape == (2, 5) + shape
    np.testing.assert_allclose(logits, logits_ref, rtol=1e-12)
    np.testing.assert_allclose(jac, jac_ref, rtol=1e-10, atol=1e-12)


def test_thin_convolution_compiles_without_a_convolution():
    """C_in * prod(kernel) <= MAX_PATCH_CONTRACTION: slices and one matmul, forward and backward."""
    x = jnp.zeros((2, 10, 10, 1))
    w = jnp.ones((3, 3, 1, 4))
    fn = lambda x, w: jnp.sum(conv.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))
    text = jax.jit(jax.grad(fn, (0, 1))).lower(x, w).as_text()
    assert "convolution" not in text
    wide = jnp.ones((3, 3, 8, 4))
    assert "convolution" in jax.jit(fn).lower(jnp.zeros((2, 10, 10, 8)), wide).as_text()


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="checks XLA:CPU's compiled convolution forms")
def test_input_gradient_in_a_loop_runs_on_the_natural_kernel_layout():
    """Inside a scan, every convolution of forward + input VJP keeps the kernel's I/O order.

    With ``lax`` convolutions the VJP's transposed convolutions are labelled
    ``01oi`` (the slow XLA:CPU form, benchmarks/SPEED.md); with jacuap's
    they must all be ``01io``.
    """
    model = models.create_model("cnn", 10, (0.5,), (0.5,))
    params = random_params(model, (12, 12, 1))
    x = jnp.zeros((4, 3, 12, 12, 1))

    def labels(m):
        f = models.make_apply_fn(m)

        def run(p, xs):
            step = lambda v, xb: (v + jax.grad(lambda u: jnp.sum(f(p, xb + u)))(v), None)
            return lax.scan(step, jnp.zeros((12, 12, 1)), xs)[0]

        text = jax.jit(run).lower(params, x).compile().as_text()
        return re.findall(r"convolution\(.*dim_labels=\w+_(\w+)->", text)

    ours = labels(model)
    plain = labels(model.clone(conv_general_dilated=lax.conv_general_dilated))
    assert ours and set(ours) == {"01io"}, ours
    assert "01oi" in plain  # the slow form the module exists to avoid (if XLA ever fixes it, drop the module)

