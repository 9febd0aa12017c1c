"""PyTorch implementations of jacuap's kernels, for ``benchmarks/speed.py``.

The code researchers compare jacuap with, written the way the PyTorch
originals are written:

* Jacobian regularization as Hoffman, Roberts & Yaida's ``JacobianReg``
  (random unit projections of the logits, ``torch.autograd.grad(...,
  create_graph=True)`` per projection; the exact mode uses the ``K`` one-hot
  vectors), loss ``CE + lambda/2 * mean ||J||_F^2`` with the Jacobian taken
  with respect to the normalised input, as jacuap's ``jr_space="normalized"``.
* SGD-UAP as the authors' ``sgd-uap-torch``: ``min(CE, beta)`` per example,
  ``v <- clamp(v + alpha * sign(grad), -eps, eps)`` per minibatch.
* DeepFool-UAP as jacuap's batched variant (``aggregate="mean"``), so both
  sides do the same work.
* The exact per-batch Jacobian (``K`` batched VJPs of one-hot cotangents) and
  the stacked Gram matrix ``sum_i J_i^T J_i`` with its top eigenpair.

The model is jacuap's ``cnn`` (``jacuap.models.CNN``): normalisation,
Conv(32, 3x3, SAME)-relu-avgpool2-Conv(64, 3x3, SAME)-relu-avgpool2-
Dense(128)-relu-Dense(K), in NCHW.  :func:`from_flax` copies a Flax
parameter tree into it so that both compute the same function.  The
functions take any module with ``normalize``, ``body`` and
``forward(x, normalized=False)`` (``benchmarks/torch_resnet.TorchResNet``
too).  This is the ``eager`` form; ``benchmarks/torch_func_reference.py``
has the ``torch.func`` and ``torch.compile`` forms, plugged in through the
``jacobian_fn`` / ``step_fn`` arguments below.

Every function is device-agnostic: tensors it makes live on the device of
its inputs (move the model and the data with ``.to(device)``); a
``torch.Generator`` passed in may live on the CPU (its draws are made there
and moved), so CPU results are those of a CPU-only run, bit for bit.

Importing this module requires ``torch`` (the ``bench`` extra).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "TorchCNN",
    "from_flax",
    "to_nchw",
    "make_optimizer",
    "train_step",
    "logits_and_jacobian",
    "input_jacobian",
    "frobenius_sq",
    "stacked_gram",
    "stacked_spectral_norm",
    "sgd_uap_epoch",
    "sgd_uap_step",
    "deepfool_step",
    "deepfool_uap_pass",
]


class TorchCNN(nn.Module):
    """jacuap's ``cnn`` in PyTorch (NCHW); ``forward`` takes pixels in [0, 1]."""

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        image_hw: Tuple[int, int] = (28, 28),
        features: Sequence[int] = (32, 64),
        dense: int = 128,
        mean: Sequence[float] = (0.5,),
        std: Sequence[float] = (0.5,),
    ):
        super().__init__()
        self.conv0 = nn.Conv2d(in_channels, features[0], 3, padding=1)
        self.conv1 = nn.Conv2d(features[0], features[1], 3, padding=1)
        h, w = image_hw[0] // 4, image_hw[1] // 4
        self.out_hw = (h, w)
        self.dense = nn.Linear(features[1] * h * w, dense)
        self.logits = nn.Linear(dense, num_classes)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def body(self, z: torch.Tensor) -> torch.Tensor:
        """Logits of normalised inputs ``z``."""
        z = F.avg_pool2d(F.relu(self.conv0(z)), 2)
        z = F.avg_pool2d(F.relu(self.conv1(z)), 2)
        z = F.relu(self.dense(z.flatten(1)))
        return self.logits(z)

    def forward(self, x: torch.Tensor, normalized: bool = False) -> torch.Tensor:
        # ``normalized=True``: ``x`` is already ``(x - mean) / std``; the keyword lets
        # ``torch.func.functional_call`` (which calls ``forward``) reach the body.
        return self.body(x if normalized else self.normalize(x))


def to_nchw(x: Any) -> torch.Tensor:
    """NHWC NumPy/JAX images -> a contiguous float32 NCHW tensor."""
    return torch.from_numpy(np.array(np.asarray(x, np.float32).transpose(0, 3, 1, 2), order="C"))


def from_flax(params: Any, mean: Sequence[float], std: Sequence[float], image_shape=(28, 28, 1)) -> TorchCNN:
    """A :class:`TorchCNN` holding a copy of a jacuap ``cnn`` parameter tree.

    Flax convolution kernels are ``(kh, kw, in, out)`` (torch: ``(out, in,
    kh, kw)``); Flax flattens the last feature map in ``(h, w, c)`` order and
    torch in ``(c, h, w)``, so the first dense kernel's rows are permuted.
    """
    p = {k: {n: np.asarray(a, np.float32) for n, a in v.items()} for k, v in params.items()}
    num_classes = p["logits"]["kernel"].shape[1]
    features = (p["conv0"]["kernel"].shape[3], p["conv1"]["kernel"].shape[3])
    model = TorchCNN(num_classes, image_shape[2], image_shape[:2], features,
                     p["dense"]["kernel"].shape[1], mean, std)
    h, w = model.out_hw
    dense = p["dense"]["kernel"].reshape(h * w, features[1], -1).transpose(1, 0, 2).reshape(h * w * features[1], -1)
    with torch.no_grad():
        for name in ("conv0", "conv1"):
            getattr(model, name).weight.copy_(torch.from_numpy(p[name]["kernel"].transpose(3, 2, 0, 1).copy()))
            getattr(model, name).bias.copy_(torch.from_numpy(p[name]["bias"].copy()))
        model.dense.weight.copy_(torch.from_numpy(dense.T.copy()))
        model.dense.bias.copy_(torch.from_numpy(p["dense"]["bias"].copy()))
        model.logits.weight.copy_(torch.from_numpy(p["logits"]["kernel"].T.copy()))
        model.logits.bias.copy_(torch.from_numpy(p["logits"]["bias"].copy()))
    return model


def make_optimizer(model: nn.Module, lr: float = 1e-3) -> torch.optim.Optimizer:
    """Adam, as jacuap's default config (``optax.adam(1e-3)``)."""
    return torch.optim.Adam(model.parameters(), lr=lr)


# ---------------------------------------------------------------------------
# Jacobians.
# ---------------------------------------------------------------------------


def _jr_cotangents(logits: torch.Tensor, num_proj: Optional[int], generator=None):
    batch, num_classes = logits.shape
    if num_proj is None:
        eye = torch.eye(num_classes, dtype=logits.dtype, device=logits.device)
        return [eye[k].expand(batch, num_classes) for k in range(num_classes)], 1.0
    out = []
    # Draw where the generator lives (the default one: the logits' device), then move.
    draw_on = logits.device if generator is None else generator.device
    for _ in range(num_proj):
        u = torch.randn(batch, num_classes, generator=generator, device=draw_on).to(logits.device)
        out.append(u / u.norm(dim=1, keepdim=True))
    return out, num_classes / num_proj


def frobenius_sq(model: TorchCNN, x: torch.Tensor, num_proj: Optional[int] = None,
                 create_graph: bool = False, normalized: bool = False):
    """``(logits, ||J(x_b)||_F^2 per example)``; Hoffman et al.'s estimator when ``num_proj``.

    ``normalized``: differentiate with respect to ``z = (x - mean) / std``.
    """
    z = (model.normalize(x) if normalized else x).detach().requires_grad_(True)
    logits = model.body(z) if normalized else model(z)
    cotangents, scale = _jr_cotangents(logits, num_proj)
    total = 0.0
    for u in cotangents:
        (ju,) = torch.autograd.grad(logits, z, u, create_graph=create_graph, retain_graph=True)
        total = total + ju.pow(2).flatten(1).sum(1)
    return logits, scale * total


def train_step(model: TorchCNN, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
               jr_lambda: float = 0.0, num_proj: Optional[int] = 1) -> float:
    """One Adam step on ``CE + jr_lambda/2 * mean ||J(z)||_F^2`` (plain CE when ``jr_lambda == 0``)."""
    opt.zero_grad(set_to_none=True)
    if jr_lambda == 0:
        loss = F.cross_entropy(model(x), y)
    else:
        logits, fro = frobenius_sq(model, x, num_proj, create_graph=True, normalized=True)
        loss = F.cross_entropy(logits, y) + jr_lambda * 0.5 * fro.mean()
    loss.backward()
    opt.step()
    return loss.detach()


def logits_and_jacobian(f, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(f(x), J)`` with ``J`` ``(B, K, *S)``: one forward pass, ``K`` batched VJPs of one-hot cotangents.

    ``f`` maps a batch to logits, each example independently (a model, or a
    model after a clip), so the VJP of ``e_k`` summed over the batch is row
    ``k`` of every example's Jacobian.  ``benchmarks/torch_func_reference.py``
    has the ``torch.func`` forms of the same function.
    """
    x = x.detach().requires_grad_(True)
    logits = f(x)
    num_classes = logits.shape[1]
    rows = []
    for k in range(num_classes):
        (g,) = torch.autograd.grad(logits[:, k].sum(), x, retain_graph=k + 1 < num_classes)
        rows.append(g)
    return logits.detach(), torch.stack(rows, 1)


def input_jacobian(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Exact per-example Jacobians ``(B, K, *S)``: ``K`` batched VJPs of one-hot cotangents."""
    return logits_and_jacobian(model, x)[1]


def stacked_gram(model: nn.Module, x: torch.Tensor, batch_size: int = 256, jacobian_fn=None) -> torch.Tensor:
    """``sum_i J_i^T J_i`` (``d x d``), chunk by chunk.

    ``jacobian_fn(x_chunk) -> (B, K, *S)`` (default: :func:`input_jacobian` of
    ``model``) lets ``speed.py`` run the same loop on a ``torch.func`` or
    compiled Jacobian.
    """
    jacobian_fn = jacobian_fn or (lambda xc: input_jacobian(model, xc))
    d = int(np.prod(x.shape[1:]))
    gram = torch.zeros(d, d, device=x.device)
    for start in range(0, x.shape[0], batch_size):
        jac = jacobian_fn(x[start:start + batch_size]).reshape(-1, d)
        gram.addmm_(jac.T, jac)
    return gram


def stacked_spectral_norm(model: nn.Module, x: torch.Tensor, batch_size: int = 256, jacobian_fn=None):
    """``(sigma_max(J_X), v)`` from the top eigenpair of the stacked Gram matrix."""
    evals, evecs = torch.linalg.eigh(stacked_gram(model, x, batch_size, jacobian_fn))
    return evals[-1].clamp_min(0).sqrt(), evecs[:, -1].reshape(x.shape[1:])


def clip01(u: torch.Tensor) -> torch.Tensor:
    """``clamp(u, 0, 1)`` with ``jnp.clip``'s gradient: 1 inside, 1/2 ON a face, 0 outside.

    ``torch.clamp`` passes the whole gradient at ``u == 0`` or ``u == 1``;
    JAX's ``clip`` (``min(max(u, 0), 1)``) splits it between the tied
    arguments.  At ``v = 0`` every background pixel of MNIST-like data sits
    on the face, and the two conventions give different SGD-UAP steps (on
    sklearn digits, 48% of the pixels are 0), so the reference uses JAX's.
    """
    weight = ((u > 0) & (u < 1)).to(u.dtype) + 0.5 * ((u == 0) | (u == 1)).to(u.dtype)
    return u.clamp(0, 1).detach() + weight * (u - u.detach())


def _randperm(n: int, generator: Optional[torch.Generator], device: torch.device) -> torch.Tensor:
    """``torch.randperm(n)`` drawn where ``generator`` lives (the CPU when None), moved to ``device``."""
    draw_on = torch.device("cpu") if generator is None else generator.device
    return torch.randperm(n, generator=generator, device=draw_on).to(device)


# ---------------------------------------------------------------------------
# SGD-UAP (Shafahi et al. 2020; the authors' sgd-uap-torch loop).
# ---------------------------------------------------------------------------


def sgd_uap_step(model: TorchCNN, v: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                 eps: float, step_size: float, beta: float = 12.0) -> torch.Tensor:
    """One l_inf SGD-UAP step on a minibatch; returns the new ``v``.

    The clip is :func:`clip01` (``jnp.clip``'s gradient), so the step is
    jacuap's exactly.
    """
    v = v.detach().requires_grad_(True)
    loss = F.cross_entropy(model(clip01(x + v)), y, reduction="none").clamp(max=beta).mean()
    (grad,) = torch.autograd.grad(loss, v)
    return (v.detach() + step_size * grad.sign()).clamp(-eps, eps)


def sgd_uap_epoch(model: nn.Module, v: torch.Tensor, x: torch.Tensor, y: torch.Tensor, eps: float,
                  step_size: float, batch_size: int = 128, beta: float = 12.0,
                  generator: Optional[torch.Generator] = None, step_fn=None) -> torch.Tensor:
    """One epoch: a random order, then :func:`sgd_uap_step` per minibatch.

    ``step_fn(v, x, y, eps, step_size, beta) -> v`` replaces the eager step
    (``torch.func`` or compiled forms, ``benchmarks/torch_func_reference.py``).
    """
    step_fn = step_fn or (lambda *a: sgd_uap_step(model, *a))
    for p in model.parameters():
        p.requires_grad_(False)
    perm = _randperm(x.shape[0], generator, x.device)
    for start in range(0, x.shape[0], batch_size):
        idx = perm[start:start + batch_size]
        v = step_fn(v, x[idx], y[idx], eps, step_size, beta)
    for p in model.parameters():
        p.requires_grad_(True)
    return v


# ---------------------------------------------------------------------------
# DeepFool-UAP (Moosavi-Dezfooli et al. 2017), jacuap's batched "mean" variant.
# ---------------------------------------------------------------------------


DEEPFOOL_ITERATIONS = [0]  # DeepFool iterations run (a counter read by speed.py)


def deepfool_step(g, jacobian_fn, z: torch.Tensor, r: torch.Tensor, labels: torch.Tensor, on: torch.Tensor,
                  overshoot: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """One batched l_inf DeepFool iteration: ``(r, on)`` after a step towards each nearest boundary.

    ``g`` is the model after the clip; ``jacobian_fn(u) -> (logits, J)`` its
    logits and Jacobian (:func:`logits_and_jacobian` of ``g``, or a
    ``torch.func`` form); the whole step is what the compiled variants compile.
    """
    rows = torch.arange(z.shape[0], device=z.device)
    logits, jac = jacobian_fn(z + (1 + overshoot) * r)
    with torch.no_grad():
        jac = jac.flatten(2)
        w = jac - jac[rows, labels][:, None, :]
        f = logits - logits[rows, labels][:, None]
        w_norm = w.abs().sum(-1)
        dist = (f.abs() / w_norm.clamp_min(1e-12))
        dist[rows, labels] = float("inf")
        nearest = dist.argmin(1)
        w_l, f_l, n_l = w[rows, nearest], f[rows, nearest].abs(), w_norm[rows, nearest]
        step = ((f_l + 1e-4) / n_l.clamp_min(1e-12))[:, None] * w_l.sign()
        r = r + torch.where(on[:, None], step, torch.zeros_like(step)).reshape(z.shape)
        on = on & (g(z + (1 + overshoot) * r).argmax(1) == labels)
    return r, on


def _deepfool_delta(model, z, labels, active, overshoot, max_iter, step_fn=None):
    """Batched l_inf DeepFool of ``g(u) = f(clamp(u, 0, 1))`` from base points ``z``.

    ``step_fn(z, r, labels, on, overshoot) -> (r, on)``: one iteration (default
    :func:`deepfool_step` with the eager Jacobian).  The loop stays in Python
    because it stops when every input is fooled, a data-dependent exit.
    """
    g = lambda u: model(clip01(u))
    step_fn = step_fn or (lambda *a: deepfool_step(g, lambda u: logits_and_jacobian(g, u), *a))
    r = torch.zeros_like(z)
    with torch.no_grad():
        on = active & (g(z).argmax(1) == labels)
    for _ in range(max_iter):
        if not bool(on.any()):
            break
        DEEPFOOL_ITERATIONS[0] += 1
        r, on = step_fn(z, r, labels, on, overshoot)
    return (1 + overshoot) * r


def deepfool_uap_pass(model: nn.Module, v: torch.Tensor, x: torch.Tensor, clean: torch.Tensor, eps: float,
                      batch_size: int = 128, overshoot: float = 0.02, max_iter: int = 20,
                      generator: Optional[torch.Generator] = None, step_fn=None):
    """One l_inf pass of the universal algorithm; returns ``(v, fooling_rate)``.

    ``step_fn``: one DeepFool iteration (:func:`_deepfool_delta`), for the
    ``torch.func`` and compiled variants.
    """
    for p in model.parameters():
        p.requires_grad_(False)
    perm = _randperm(x.shape[0], generator, x.device)
    for start in range(0, x.shape[0], batch_size):
        idx = perm[start:start + batch_size]
        xc, cc = x[idx], clean[idx]
        z = xc + v
        with torch.no_grad():
            unfooled = model(z.clamp(0, 1)).argmax(1) == cc
        dv = _deepfool_delta(model, z, cc, unfooled, overshoot, max_iter, step_fn)
        weights = unfooled.to(dv.dtype).reshape(-1, *([1] * (dv.ndim - 1)))
        v = (v + (weights * dv).sum(0) / weights.sum().clamp_min(1.0)).clamp(-eps, eps)
    with torch.no_grad():
        fooled = sum(int((model((x[s:s + 1000] + v).clamp(0, 1)).argmax(1) != clean[s:s + 1000]).sum())
                     for s in range(0, x.shape[0], 1000))
    for p in model.parameters():
        p.requires_grad_(True)
    return v, fooled / x.shape[0]
