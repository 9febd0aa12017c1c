"""The classifiers: an MLP, a small CNN and a pre-activation ResNet.

Every model takes images in pixel units (``[0, 1]``, NHWC, shape
``(B, H, W, C)``) and returns ``(B, K)`` logits.  It normalises its input
itself with the dataset's per-channel mean and std, so a perturbation budget
``eps`` is always in pixel units and the Jacobian is taken with respect to
pixels.

No model uses BatchNorm: batch statistics would make one example's logits
depend on the others, while the Jacobian kernels need the per-example
independence ``d logits_i / d x_j = 0`` for ``i != j``.  The ResNet uses
GroupNorm, which normalises within each example, so ``apply_fn(params, x)``
is the same function in training and evaluation and there is no mutable
state to carry.
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jacuap.models import conv as conv_lib

__all__ = ["ConvFn", "DEFAULT_CONV", "Normalize", "MLP", "CNN", "ResidualBlock", "ResNet"]

# The convolution every jacuap model uses: on CPU and GPU lax's with an input
# derivative XLA runs at full speed inside loops (jacuap/models/conv.py), elsewhere
# lax's own; chosen per backend by jacuap.backend.conv_kind.  A model's
# ``conv_general_dilated`` field swaps it, e.g. for ``jax.lax.conv_general_dilated``.
ConvFn = Callable[..., jax.Array]
DEFAULT_CONV: ConvFn = conv_lib.backend_conv


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel (the last axis), constants fixed at construction.

    >>> import jax.numpy as jnp
    >>> Normalize(mean=(0.5, 0.0), std=(0.25, 2.0)).apply({}, jnp.array([[1.0, 1.0]]))
    Array([[2. , 0.5]], dtype=float32)
    """

    mean: Sequence[float] = (0.5,)
    std: Sequence[float] = (0.5,)

    @nn.compact
    def __call__(self, x):
        mean = jnp.asarray(self.mean, x.dtype)
        std = jnp.asarray(self.std, x.dtype)
        return (x - mean) / std


class MLP(nn.Module):
    """Fully connected ReLU network: flatten -> hidden layers -> logits."""

    num_classes: int = 10
    hidden: Sequence[int] = (256, 256)
    mean: Sequence[float] = (0.5,)
    std: Sequence[float] = (0.5,)

    @nn.compact
    def __call__(self, x):
        x = Normalize(self.mean, self.std)(x)
        x = x.reshape((x.shape[0], -1))
        for i, width in enumerate(self.hidden):
            x = nn.relu(nn.Dense(width, name=f"dense{i}")(x))
        return nn.Dense(self.num_classes, name="logits")(x)


class CNN(nn.Module):
    """The small CNN of Flax's MNIST example: conv32-conv64-dense128-logits.

    3x3 convolutions with ReLU and 2x2 average pooling (smooth, so the
    input Jacobian is well defined almost everywhere as with max pooling,
    but without its winner-takes-all gradient).
    """

    num_classes: int = 10
    features: Sequence[int] = (32, 64)
    dense: int = 128
    mean: Sequence[float] = (0.5,)
    std: Sequence[float] = (0.5,)
    conv_general_dilated: ConvFn = DEFAULT_CONV

    @nn.compact
    def __call__(self, x):
        x = Normalize(self.mean, self.std)(x)
        for i, feat in enumerate(self.features):
            conv = nn.Conv(feat, (3, 3), conv_general_dilated=self.conv_general_dilated, name=f"conv{i}")
            x = nn.relu(conv(x))
            x = nn.avg_pool(x, (2, 2), strides=(2, 2))
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(nn.Dense(self.dense, name="dense")(x))
        return nn.Dense(self.num_classes, name="logits")(x)


class ResidualBlock(nn.Module):
    """Pre-activation basic block (He et al. 2016) with GroupNorm."""

    features: int
    strides: int = 1
    conv_general_dilated: ConvFn = DEFAULT_CONV

    @nn.compact
    def __call__(self, x):
        conv = functools.partial(nn.Conv, use_bias=False, conv_general_dilated=self.conv_general_dilated)
        groups = min(8, self.features)
        y = nn.relu(nn.GroupNorm(num_groups=groups)(x))
        shortcut = x
        if self.strides != 1 or x.shape[-1] != self.features:
            shortcut = conv(self.features, (1, 1), (self.strides,) * 2)(y)
        y = conv(self.features, (3, 3), (self.strides,) * 2)(y)
        y = nn.relu(nn.GroupNorm(num_groups=groups)(y))
        y = conv(self.features, (3, 3))(y)
        return shortcut + y


class ResNet(nn.Module):
    """A pre-activation ResNet for 32x32x3 (ResNet-18 layout by default)."""

    num_classes: int = 10
    stage_sizes: Sequence[int] = (2, 2, 2, 2)
    width: int = 64
    mean: Sequence[float] = (0.5, 0.5, 0.5)
    std: Sequence[float] = (0.5, 0.5, 0.5)
    conv_general_dilated: ConvFn = DEFAULT_CONV

    @nn.compact
    def __call__(self, x):
        x = Normalize(self.mean, self.std)(x)
        x = nn.Conv(self.width, (3, 3), use_bias=False, conv_general_dilated=self.conv_general_dilated,
                    name="stem")(x)
        for stage, num_blocks in enumerate(self.stage_sizes):
            for block in range(num_blocks):
                strides = 2 if stage > 0 and block == 0 else 1
                x = ResidualBlock(self.width * 2**stage, strides, self.conv_general_dilated)(x)
        x = nn.relu(nn.GroupNorm(num_groups=min(8, x.shape[-1]))(x))
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, name="logits")(x)
