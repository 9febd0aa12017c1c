"""A convolution whose input-gradient runs on an explicitly transposed kernel.

``conv_general_dilated`` computes exactly ``jax.lax.conv_general_dilated``
(same arguments, same values, every order and mode of differentiation) and
only changes how the *input* derivative is laid out for XLA.  jacuap's
convolutional models pass it to ``flax.linen.Conv(conv_general_dilated=...)``.

Why.  Every kernel of jacuap differentiates the model with respect to its
input (``J(x)``, the SGD-UAP step, DeepFool), and the attacks do so inside
``lax.scan`` / ``lax.while_loop`` bodies.  JAX's transpose of
``y = conv(x, W)`` with respect to ``x`` is a convolution of the cotangent
with the reversed kernel whose input/output feature dimensions are swapped
*by its dimension numbers*: XLA sees ``dim_labels=b01f_01oi->b01f``.  Outside a
loop XLA:CPU copies the kernel into the ``01io`` layout its fast convolution
wants; inside a loop body it keeps ``01oi`` and runs a slower convolution
slower (benchmarks/conv_ops.py: 8 SGD-UAP steps on 128 images take 0.43 s in a
``scan`` and 0.36 s as a Python loop; 0.23 s in a ``scan`` with this module).

The fix.  A ``custom_jvp`` whose tangent map with respect to ``x`` is

    dy = conv(dx, W^T)   with  W^T = optimization_barrier(swap_io(W))

and the dimension numbers relabelled so that ``conv(dx, W^T)`` is the same
linear map as ``conv(dx, W)``.  JAX transposes this map (for ``grad``, ``vjp``,
``linear_transpose``) into a convolution on ``W^T`` whose feature dimensions
are in the natural ``01io`` order; the optimisation barrier stops XLA from
folding the (tiny) swap back into the dimension numbers.  The tangent with
respect to ``W`` and the primal are untouched, and the rule is itself
written in differentiable ``lax`` ops, so ``jvp``, ``linearize``, ``grad`` of
``grad`` (the Jacobian penalty's gradient), ``jacfwd`` and ``hessian`` all work
and agree with ``lax`` (tests/test_models_conv.py, float64).

Measured (Fashion-MNIST CNN, 2-core CPU; benchmarks/SPEED.md, where
``speed.py --conv lax`` gives the other column): an SGD-UAP epoch 1.8x
faster, a DeepFool-UAP pass 3.2x faster; training steps unchanged.

Thin inputs.  A convolution whose contraction ``C_in * prod(kernel)`` is
small (the first layer: 9 for a 3x3 kernel on grey images, 27 on RGB) is
computed as explicit patches (strided slices of the padded input,
concatenated on the channel axis) times the ``(prod(kernel) * C_in, C_out)``
kernel matrix.  XLA:CPU runs such a layer's input-gradient, a convolution
with ONE output channel, as a matrix-vector product over a materialised
``im2col`` buffer (5.3 ms per 128 Fashion-MNIST images against 1.3 ms as
patches, benchmarks/conv_ops.py); as patches its input-gradient is one
``(B*H*W, C_out) x (C_out, 9)`` matmul and nine shifted adds.  (``lax.conv_general_dilated_patches`` is not used: it
is itself a convolution, and its transpose a large one.)

The price.  One linear map has one kernel, so the forward-mode tangent now
runs on the swapped kernel, in XLA:CPU's slow form when inside a loop: a
jitted power iteration (``spectral_norm(method="power")``, or
``stacked_spectral_norm(method="power")`` under ``jit``) is about 3.7x slower
(20 iterations on 128 inputs: 4.0 s vs 1.1 s, benchmarks/conv_ops.py).  jacuap's own set kernels
avoid it (``stacked_spectral_norm`` called eagerly loops from Python;
``"exact"`` and ``"gram"`` use VJPs only).  For JVP-heavy loops build the
model with ``conv_general_dilated=jax.lax.conv_general_dilated``.  A custom
transpose rule would give both directions their own kernel, but JAX has no
public one (a ``custom_vjp`` inside the JVP rule cannot be transposed).
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import Any, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
from jax import lax

from jacuap import backend

Padding = Union[str, Sequence[Tuple[int, int]]]


# Largest C_in * prod(kernel) computed as explicit patches (see above).
MAX_PATCH_CONTRACTION = 64


def _hashable_padding(padding: Padding):
    return padding if isinstance(padding, str) else tuple(tuple(int(p) for p in pair) for pair in padding)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _conv(lhs: jax.Array, rhs: jax.Array, static: Tuple[Any, ...]) -> jax.Array:
    strides, padding, lhs_dilation, rhs_dilation, dn, groups, precision, preferred = static
    return lax.conv_general_dilated(
        lhs, rhs, strides, padding, lhs_dilation, rhs_dilation, dn,
        feature_group_count=groups, precision=precision, preferred_element_type=preferred,
    )


@_conv.defjvp
def _conv_jvp(static, primals, tangents):
    lhs, rhs = primals
    lhs_dot, rhs_dot = tangents
    strides, padding, lhs_dilation, rhs_dilation, dn, groups, precision, preferred = static
    out = _conv(lhs, rhs, static)
    # The same linear map in x, written on the kernel with O and I swapped in
    # memory and relabelled in the dimension numbers (see the module docstring).
    o, i = dn.rhs_spec[0], dn.rhs_spec[1]
    perm = list(range(rhs.ndim))
    perm[o], perm[i] = i, o
    rhs_swapped = lax.optimization_barrier(jnp.transpose(rhs, perm))
    swapped_dn = lax.ConvDimensionNumbers(dn.lhs_spec, (i, o) + tuple(dn.rhs_spec[2:]), dn.out_spec)
    out_dot = (
        lax.conv_general_dilated(
            lhs_dot, rhs_swapped, strides, padding, lhs_dilation, rhs_dilation, swapped_dn,
            feature_group_count=groups, precision=precision, preferred_element_type=preferred,
        )
        + _conv(lhs, rhs_dot, static)
    )
    return out, out_dot


def _patch_conv(lhs, rhs, strides, padding, dn, precision, preferred):
    """The convolution as explicit patches times the kernel matrix (no dilation, one group)."""
    lhs_spec, rhs_spec, out_spec = dn
    nsp = len(lhs_spec) - 2
    # channels-last views: x (N, *spatial, C_in), w (*kernel, C_in, C_out)
    x = jnp.transpose(lhs, (lhs_spec[0],) + tuple(lhs_spec[2:]) + (lhs_spec[1],))
    w = jnp.transpose(rhs, tuple(rhs_spec[2:]) + (rhs_spec[1], rhs_spec[0]))
    kernel, (c_in, c_out) = w.shape[:nsp], w.shape[nsp:]
    if isinstance(padding, str):
        padding = lax.padtype_to_pads(x.shape[1:-1], kernel, strides, padding)
    x = lax.pad(x, jnp.zeros((), x.dtype), [(0, 0, 0)] + [(lo, hi, 0) for lo, hi in padding] + [(0, 0, 0)])
    out_sp = [(x.shape[1 + a] - kernel[a]) // strides[a] + 1 for a in range(nsp)]
    taps = []
    for offset in itertools.product(*(range(k) for k in kernel)):
        limit = tuple(offset[a] + (out_sp[a] - 1) * strides[a] + 1 for a in range(nsp))
        taps.append(lax.slice(x, (0,) + offset + (0,), (x.shape[0],) + limit + (c_in,), (1,) + tuple(strides) + (1,)))
    patches = jnp.concatenate(taps, axis=-1)  # (N, *out_spatial, prod(kernel) * C_in), (tap, channel) order
    # Contract the channel axis of the 4-D patches directly.  (Flattening them to a 2-D matmul made the
    # layer's weight-gradient alone 13x faster, 8.1 -> 0.6 ms, but the exact Jacobian penalty's step
    # 1.2x slower, 0.44 -> 0.52 s, and the plain step no faster: measured with speed.py.)
    out = lax.dot_general(patches, w.reshape(-1, c_out), (((nsp + 1,), (0,)), ((), ())),
                          precision=precision, preferred_element_type=preferred)
    # back to the layout of out_spec: out dim t comes from channels-last position src[t]
    src = [0] * (nsp + 2)
    src[out_spec[0]], src[out_spec[1]] = 0, nsp + 1
    for a in range(nsp):
        src[out_spec[2 + a]] = 1 + a
    return jnp.transpose(out, src)


def conv_general_dilated(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: Padding,
    lhs_dilation: Optional[Sequence[int]] = None,
    rhs_dilation: Optional[Sequence[int]] = None,
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision: Any = None,
    preferred_element_type: Any = None,
) -> jax.Array:
    """``jax.lax.conv_general_dilated`` with an XLA-friendly input derivative.

    Same signature and result as :func:`jax.lax.conv_general_dilated`
    (``lhs``: ``(N, ..., C_in)`` in the layout of ``dimension_numbers``;
    ``rhs``: the kernel; returns the convolution).  Only the derivative with
    respect to ``lhs`` is expressed differently (module docstring), which
    makes input-gradients inside ``lax.scan`` / ``while_loop`` run at the
    speed they have outside a loop on XLA:CPU; thin convolutions
    (``C_in * prod(kernel) <= MAX_PATCH_CONTRACTION``, no dilation, one
    group) are computed as explicit patches.  ``batch_group_count != 1``
    (used only by weight-gradient convolutions) falls back to ``lax``.
    """
    if batch_group_count != 1:
        return lax.conv_general_dilated(
            lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
            feature_group_count, batch_group_count, precision, preferred_element_type,
        )
    dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    undilated = all(int(d) == 1 for d in (lhs_dilation or ())) and all(int(d) == 1 for d in (rhs_dilation or ()))
    contraction = rhs.shape[dn.rhs_spec[1]] * math.prod(rhs.shape[a] for a in dn.rhs_spec[2:])
    if feature_group_count == 1 and undilated and contraction <= MAX_PATCH_CONTRACTION:
        return _patch_conv(lhs, rhs, tuple(int(s) for s in window_strides), _hashable_padding(padding), dn,
                           precision, preferred_element_type)
    static = (
        tuple(int(s) for s in window_strides),
        _hashable_padding(padding),
        None if lhs_dilation is None else tuple(int(s) for s in lhs_dilation),
        None if rhs_dilation is None else tuple(int(s) for s in rhs_dilation),
        dn,
        int(feature_group_count),
        precision,
        preferred_element_type,
    )
    return _conv(lhs, rhs, static)


def backend_conv(lhs: jax.Array, rhs: jax.Array, *args: Any, **kwargs: Any) -> jax.Array:
    """The models' default convolution: :func:`conv_general_dilated` where it was measured to help, lax's elsewhere.

    Chosen at trace time by :func:`jacuap.backend.conv_kind` (``JACUAP_CONV``
    overrides); both are the same function in value and every derivative.

    >>> import jax.numpy as jnp
    >>> backend_conv(jnp.ones((1, 1, 3, 3)), jnp.ones((1, 1, 2, 2)), (1, 1), "VALID").shape
    (1, 1, 2, 2)
    """
    fn = conv_general_dilated if backend.conv_kind() == "jacuap" else lax.conv_general_dilated
    return fn(lhs, rhs, *args, **kwargs)
