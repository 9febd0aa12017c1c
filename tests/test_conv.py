"""jacuap.conv: the same convolution as lax, in value and every derivative."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jacuap import conv, jacobian, models

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
    kl, kr = jax.random.split(jax.random.PRNGKey(0))
    lhs = jax.random.normal(kl, lhs_shape, jnp.float64)
    rhs = jax.random.normal(kr, rhs_shape, jnp.float64)

    def make(fn):
        return lambda l, r: fn(l, r, strides, padding, lhs_dil, rhs_dil, dn, feature_group_count=groups)

    return lhs, rhs, make(conv.conv_general_dilated), make(lax.conv_general_dilated)


@pytest.fixture(autouse=True)
def _float64():
    with jax.enable_x64(True):
        yield


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_value_and_first_derivatives_match_lax(name):
    lhs, rhs, ours, ref = _pair(name)
    np.testing.assert_allclose(ours(lhs, rhs), ref(lhs, rhs), rtol=1e-12, atol=1e-12)
    # reverse mode w.r.t. both arguments, through a nonlinearity
    loss = lambda fn: lambda l, r: jnp.sum(jnp.tanh(fn(l, r)) ** 2)
    for a, b in zip(jax.grad(loss(ours), (0, 1))(lhs, rhs), jax.grad(loss(ref), (0, 1))(lhs, rhs)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    # forward mode
    tl, tr = jnp.cos(lhs), jnp.sin(rhs)
    _, ours_t = jax.jvp(ours, (lhs, rhs), (tl, tr))
    _, ref_t = jax.jvp(ref, (lhs, rhs), (tl, tr))
    np.testing.assert_allclose(ours_t, ref_t, rtol=1e-10, atol=1e-12)
    # linearize + linear_transpose (the power-iteration path)
    _, lin = jax.linearize(lambda l: ours(l, rhs), lhs)
    _, lin_ref = jax.linearize(lambda l: ref(l, rhs), lhs)
    ct = jnp.cos(ref(lhs, rhs))
    np.testing.assert_allclose(jax.linear_transpose(lin, lhs)(ct)[0], jax.linear_transpose(lin_ref, lhs)(ct)[0],
                               rtol=1e-10, atol=1e-12)


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

    np.testing.assert_allclose(jax.grad(penalty(ours))(rhs), jax.grad(penalty(ref))(rhs), rtol=1e-9, atol=1e-12)
    small = lhs[:1]
    hess = lambda fn: jax.hessian(lambda l: jnp.sum(jnp.tanh(fn(l, rhs)) ** 3))(small)
    np.testing.assert_allclose(hess(ours), hess(ref), rtol=1e-9, atol=1e-12)


def test_batch_group_count_falls_back_to_lax():
    lhs = jax.random.normal(jax.random.PRNGKey(0), (4, 5, 5, 2), jnp.float64)
    rhs = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 2, 6), jnp.float64)
    dn = ("NHWC", "HWIO", "NHWC")
    ours = conv.conv_general_dilated(lhs, rhs, (1, 1), "SAME", dimension_numbers=dn, batch_group_count=2)
    ref = lax.conv_general_dilated(lhs, rhs, (1, 1), "SAME", dimension_numbers=dn, batch_group_count=2)
    np.testing.assert_allclose(ours, ref, rtol=1e-12)


@pytest.mark.parametrize("name", ["cnn", "resnet_tiny"])
def test_models_equal_with_lax_convolution(name):
    """jacuap's models give the same logits and input Jacobians as with plain lax convolutions."""
    shape = (12, 12, 1) if name == "cnn" else (8, 8, 3)
    model = models.create_model(name, 5, (0.3,) * shape[-1], (0.4,) * shape[-1])
    plain = model.clone(conv_general_dilated=lax.conv_general_dilated)
    params = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64),
                                    models.init_params(model, jax.random.PRNGKey(0), shape))
    x = jax.random.uniform(jax.random.PRNGKey(1), (3,) + shape, jnp.float64)
    f, g = models.make_apply_fn(model), models.make_apply_fn(plain)
    both = jax.jit(lambda fn, p, x: (fn(p, x), jacobian.input_jacobian(fn, p, x)), static_argnums=0)
    (logits, jac), (logits_ref, jac_ref) = both(f, params, x), both(g, params, x)
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
    params = models.init_params(model, jax.random.PRNGKey(0), (12, 12, 1))
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

