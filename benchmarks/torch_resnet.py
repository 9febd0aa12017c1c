"""jacuap's pre-activation ResNet in PyTorch, weight for weight, for ``benchmarks/speed_cifar.py``.

:class:`TorchResNet` is ``jacuap.models.ResNet`` in NCHW: normalisation, a
3x3 stem (no bias), pre-activation basic blocks (GroupNorm-relu-conv twice,
a 1x1 projection shortcut taken from the pre-activated input when the
stride or width changes), GroupNorm-relu, global mean, Dense.  With
``stage_sizes=(3, 3, 3), width=16`` it is the CIFAR ResNet-20 (He et al.
2016: 19 convolutions and one dense layer, 0.27 M parameters); jacuap
builds the same network with ``create_model("resnet", ...,
kwargs={"stage_sizes": (3, 3, 3), "width": 16})``.

Two details keep the functions identical rather than merely alike:

* Flax's ``SAME`` padding of a stride-2 3x3 convolution on an even input
  is asymmetric (0 before, 1 after); ``nn.Conv2d(padding=1)`` would pad 1 on
  both sides and shift every strided output by one pixel, so such a layer
  pads explicitly.
* Flax's GroupNorm uses ``epsilon=1e-6`` (torch's default is 1e-5) and
  ``min(8, features)`` groups for both norms of a block.

:func:`from_flax` copies a Flax parameter tree in; ``tests/test_speed_benchmark.py``
checks that logits and input Jacobians agree.  Like ``TorchCNN``, ``forward``
takes pixels in [0, 1] and ``forward(z, normalized=True)`` normalised inputs
(so that ``torch.func.functional_call`` can reach the body).
"""

from __future__ import annotations

from typing import Any, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["TorchResNet", "from_flax", "RESNET20"]

#: ``(stage_sizes, width)`` of the CIFAR ResNet-20.
RESNET20 = {"stage_sizes": (3, 3, 3), "width": 16}

GROUPNORM_EPS = 1e-6  # flax.linen.GroupNorm's default


def _same_pads(size: int, kernel: int, stride: int) -> Tuple[int, int]:
    """XLA's ``SAME`` padding ``(before, after)`` of one spatial axis."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SameConv(nn.Conv2d):
    """A bias-free ``nn.Conv2d`` padded as Flax's ``padding="SAME"``."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1):
        super().__init__(cin, cout, kernel, stride, padding=0, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, s = self.kernel_size[0], self.stride[0]
        ph, pw = _same_pads(x.shape[2], k, s), _same_pads(x.shape[3], k, s)
        if ph[0] == ph[1] and pw[0] == pw[1]:  # symmetric: let the convolution pad (no copy)
            return F.conv2d(x, self.weight, None, s, (ph[0], pw[0]))
        return F.conv2d(F.pad(x, (pw[0], pw[1], ph[0], ph[1])), self.weight, None, s)


class PreActBlock(nn.Module):
    """``jacuap.models.ResidualBlock``: pre-activation basic block with GroupNorm."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        groups = min(8, cout)  # jacuap uses the block's output width for both norms
        self.norm0 = nn.GroupNorm(groups, cin, eps=GROUPNORM_EPS)
        self.shortcut = SameConv(cin, cout, 1, stride) if stride != 1 or cin != cout else None
        self.conv0 = SameConv(cin, cout, 3, stride)
        self.norm1 = nn.GroupNorm(groups, cout, eps=GROUPNORM_EPS)
        self.conv1 = SameConv(cout, cout, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.norm0(x))
        shortcut = x if self.shortcut is None else self.shortcut(y)
        y = self.conv0(y)
        y = self.conv1(F.relu(self.norm1(y)))
        return shortcut + y


class TorchResNet(nn.Module):
    """jacuap's ``ResNet`` in PyTorch (NCHW); ``forward`` takes pixels in [0, 1]."""

    def __init__(self, num_classes: int = 10, stage_sizes: Sequence[int] = (3, 3, 3), width: int = 16,
                 mean: Sequence[float] = (0.5, 0.5, 0.5), std: Sequence[float] = (0.5, 0.5, 0.5),
                 in_channels: int = 3):
        super().__init__()
        self.stem = SameConv(in_channels, width, 3)
        blocks, cin = [], width
        for stage, num_blocks in enumerate(stage_sizes):
            cout = width * 2**stage
            for block in range(num_blocks):
                blocks.append(PreActBlock(cin, cout, 2 if stage > 0 and block == 0 else 1))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.norm = nn.GroupNorm(min(8, cin), cin, eps=GROUPNORM_EPS)
        self.logits = nn.Linear(cin, num_classes)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def body(self, z: torch.Tensor) -> torch.Tensor:
        """Logits of normalised inputs ``z``."""
        z = self.blocks(self.stem(z))
        return self.logits(F.relu(self.norm(z)).mean(dim=(2, 3)))

    def forward(self, x: torch.Tensor, normalized: bool = False) -> torch.Tensor:
        return self.body(x if normalized else self.normalize(x))


def _kernel(a: np.ndarray) -> torch.Tensor:
    """A Flax ``(kh, kw, in, out)`` convolution kernel as torch's ``(out, in, kh, kw)``."""
    return torch.from_numpy(np.ascontiguousarray(a.transpose(3, 2, 0, 1)))


def from_flax(params: Any, mean: Sequence[float], std: Sequence[float], stage_sizes: Sequence[int] = (3, 3, 3),
              width: int = 16) -> TorchResNet:
    """A :class:`TorchResNet` holding a copy of a jacuap ``ResNet`` parameter tree.

    Flax names a block's convolutions in creation order: with a projection
    shortcut ``Conv_0`` is the 1x1 shortcut and ``Conv_1``, ``Conv_2`` the
    3x3s; without one ``Conv_0``, ``Conv_1``.
    """
    p = jax_tree_to_numpy(params)
    num_classes = p["logits"]["kernel"].shape[1]
    in_channels = p["stem"]["kernel"].shape[2]
    model = TorchResNet(num_classes, stage_sizes, width, mean, std, in_channels)
    with torch.no_grad():
        model.stem.weight.copy_(_kernel(p["stem"]["kernel"]))
        for i, block in enumerate(model.blocks):
            fp = p[f"ResidualBlock_{i}"]
            convs = [fp[f"Conv_{j}"]["kernel"] for j in range(3 if block.shortcut is not None else 2)]
            if block.shortcut is not None:
                block.shortcut.weight.copy_(_kernel(convs.pop(0)))
            block.conv0.weight.copy_(_kernel(convs[0]))
            block.conv1.weight.copy_(_kernel(convs[1]))
            for j, norm in enumerate((block.norm0, block.norm1)):
                norm.weight.copy_(torch.from_numpy(fp[f"GroupNorm_{j}"]["scale"]))
                norm.bias.copy_(torch.from_numpy(fp[f"GroupNorm_{j}"]["bias"]))
        model.norm.weight.copy_(torch.from_numpy(p["GroupNorm_0"]["scale"]))
        model.norm.bias.copy_(torch.from_numpy(p["GroupNorm_0"]["bias"]))
        model.logits.weight.copy_(torch.from_numpy(np.ascontiguousarray(p["logits"]["kernel"].T)))
        model.logits.bias.copy_(torch.from_numpy(p["logits"]["bias"]))
    return model


def jax_tree_to_numpy(tree: Any) -> Any:
    """A nested dict of arrays as the same dict of writable float32 NumPy copies."""
    if isinstance(tree, dict) or hasattr(tree, "items"):
        return {k: jax_tree_to_numpy(v) for k, v in tree.items()}
    return np.array(tree, np.float32)
