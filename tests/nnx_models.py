"""A small NNX CNN and its Linen twin (same parameter tree), importable by path in the programs' tests."""

import flax.linen as nn
import jax.numpy as jnp
from flax import nnx


class NNXCNN(nnx.Module):
    """conv 3x3 (width) -> relu -> global mean -> dense K; inputs ``(B, H, W, channels)`` in [0, 1]."""

    def __init__(self, num_classes: int, *, rngs: nnx.Rngs, width: int = 4, channels: int = 1):
        self.conv = nnx.Conv(channels, width, (3, 3), rngs=rngs)
        self.dense = nnx.Linear(width, num_classes, rngs=rngs)

    def __call__(self, x):
        h = nnx.relu(self.conv(x - 0.5))
        return self.dense(jnp.mean(h, axis=(1, 2)))


class LinenCNN(nn.Module):
    """The Linen twin of :class:`NNXCNN`: the same function of the same parameter tree."""

    num_classes: int
    width: int = 4

    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.Conv(self.width, (3, 3), name="conv")(x - 0.5))
        return nn.Dense(self.num_classes, name="dense")(jnp.mean(h, axis=(1, 2)))


class WrongOutput(nn.Module):
    """Returns one value per input, not K logits (for the programs' one-line error)."""

    num_classes: int

    @nn.compact
    def __call__(self, x):
        return nn.Dense(1)(x.reshape(len(x), -1))[:, 0]


NOT_A_CLASS = 3
