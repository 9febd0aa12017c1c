"""The strongest PyTorch a researcher would write today: ``torch.func`` and ``torch.compile`` forms.

``benchmarks/torch_reference.py`` is the eager loop (JacobianReg style: a
Python loop of ``torch.autograd.grad`` calls).  This module gives every
kernel of ``benchmarks/speed.py`` in the other forms, under one naming:

* ``eager``: today's reference, unchanged.
* ``func``: ``torch.func`` on ``functional_call`` of the module. Jacobian
  and exact JR penalty by ``vmap`` of ONE batched ``vjp`` over the ``K``
  one-hot cotangents (each example's logits depend on it alone, so a batched
  pullback of ``e_k`` is row ``k`` of every Jacobian); projections by ``vjp``
  of the drawn unit vectors; training gradients by ``grad_and_value`` over the
  parameter dict (the same ``torch.optim.Adam`` applies them); JVPs by
  ``torch.func.jvp``.
* ``jacrev``: ``vmap(jacrev(per_example))``, the textbook per-example
  Jacobian (only where a full Jacobian is wanted: Jacobian, exact JR, Gram,
  DeepFool).
* ``compile``, ``func_compile``, ``jacrev_compile``: ``torch.compile`` of
  the step (training: forward, backward and Adam; attacks: the whole
  SGD-UAP step or DeepFool iteration) of that form, ``dynamic=False`` so that
  a short last chunk gets its own static program instead of turning every
  later call dynamic.  The compile happens on the first call, which
  ``speed.py`` times apart from the repetitions.

``torch.compile`` of the eager JR step raises "torch.compile with
aot_autograd does not currently support double backward" (the penalty's
gradient differentiates a gradient taken with ``create_graph=True``);
``speed.py`` records such an error string in the row instead of a time.  The
``func_compile`` form of the same step compiles: ``torch.func`` traces the
nested transforms into one graph.

Random projections are drawn outside the transformed (and compiled)
function, from torch's global generator in the eager reference's order, so
with the same seed every form takes the same step (``tests/test_speed_benchmark.py``).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Dict, Optional, Tuple

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad_and_value, jacrev, jvp, vjp, vmap

from benchmarks import torch_reference as tr

__all__ = [
    "VARIANTS",
    "UNCOMPILED",
    "NO_JACREV",
    "split_variant",
    "compile_fn",
    "functional",
    "jacobian_variant",
    "train_step_variant",
    "sgd_step_variant",
    "deepfool_step_variant",
    "jvp_variant",
    "gram_times_variant",
    "stacked_power",
    "relative_residual",
]

#: Every form, in the order ``speed.py`` interleaves them.
VARIANTS = ("eager", "func", "jacrev", "compile", "func_compile", "jacrev_compile")
#: The forms without ``torch.compile`` (``speed.py --quick``'s default: compiling takes tens of seconds each).
UNCOMPILED = ("eager", "func", "jacrev")
#: The forms of a kernel that needs no full Jacobian (a gradient, a JVP, projections): no ``jacrev``.
NO_JACREV = tuple(v for v in VARIANTS if not v.startswith("jacrev"))


def _raise_recompile_limit(limit: int = 64) -> None:
    """Lets dynamo keep a program per model and shape instead of falling back to eager after 8.

    One compiled function object is called on a model for each row (and the
    set rows' short last chunk), and the test suite reuses the code objects
    for several models in one process; the default limit (8) would silently
    run the later ones uncompiled.
    """
    cfg = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit",
                 "accumulated_cache_size_limit"):
        if hasattr(cfg, name):
            setattr(cfg, name, max(getattr(cfg, name), limit * (8 if "accumulated" in name else 1)))


_raise_recompile_limit()


def split_variant(variant: str) -> Tuple[str, bool]:
    """``"func_compile" -> ("func", True)``, ``"compile" -> ("eager", True)``, ``"func" -> ("func", False)``."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose from {VARIANTS}")
    if variant == "compile":
        return "eager", True
    base, _, tail = variant.partition("_")
    return base, tail == "compile"


def compile_fn(fn: Callable) -> Callable:
    """``torch.compile`` with static shapes (see the module docstring)."""
    return torch.compile(fn, dynamic=False)


def functional(model: nn.Module) -> Callable[..., torch.Tensor]:
    """``x -> logits`` through ``functional_call`` with detached parameters.

    Detached: differentiating with respect to the input only, the transforms
    (and the compiler) must not also record the weights' graph; the tensors
    share storage with the module, so they follow its updates.
    """
    state = {**{k: p.detach() for k, p in model.named_parameters()}, **dict(model.named_buffers())}
    return lambda x, normalized=False: functional_call(model, state, (x,), {"normalized": normalized})


# ---------------------------------------------------------------------------
# Per-batch Jacobians: (logits, J (B, K, *S)) of f.
# ---------------------------------------------------------------------------


def _one_hots(logits: torch.Tensor) -> torch.Tensor:
    """``(K, B, K)``: ``e_k`` broadcast over the batch, for each class ``k``."""
    batch, num_classes = logits.shape
    eye = torch.eye(num_classes, dtype=logits.dtype, device=logits.device)
    return eye[:, None, :].expand(num_classes, batch, num_classes)


def func_logits_and_jacobian(f: Callable, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``vmap`` of one batched ``vjp`` over the ``K`` one-hot cotangents."""
    logits, pullback = vjp(f, x)
    (rows,) = vmap(pullback)(_one_hots(logits))
    return logits, rows.movedim(0, 1)


def jacrev_logits_and_jacobian(f: Callable, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``vmap(jacrev(f on one example))``, the logits as ``jacrev``'s auxiliary output."""
    def one(xi):
        out = f(xi[None])[0]
        return out, out

    jac, logits = vmap(jacrev(one, has_aux=True))(x)
    return logits, jac


JACOBIAN_FORMS = {"eager": tr.logits_and_jacobian, "func": func_logits_and_jacobian,
                  "jacrev": jacrev_logits_and_jacobian}


def jacobian_variant(variant: str, model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """``x -> J (B, K, *S)`` of ``model`` in form ``variant``."""
    base, compiled = split_variant(variant)
    # Today's eager reference calls the module itself; every other form (the compiled
    # eager loop too: AOT autograd would otherwise also compile the weights' gradients)
    # sees detached weights.
    f = model if variant == "eager" else functional(model)
    fn = lambda x: JACOBIAN_FORMS[base](f, x)[1]
    return compile_fn(fn) if compiled else fn


# ---------------------------------------------------------------------------
# Training steps: CE + lambda/2 mean ||J(z)||_F^2 with z the normalised input.
# ---------------------------------------------------------------------------


def draw_cotangents(batch: int, num_classes: int, num_proj: Optional[int], device) -> Tuple[torch.Tensor, float]:
    """``(P, B, K)`` cotangents and the estimator's scale, drawn as ``torch_reference`` draws them.

    Exact (``num_proj=None``): the ``K`` one-hots, scale 1.  Projections:
    ``num_proj`` unit vectors per example from the global generator, one
    ``randn`` each in the eager loop's order, scale ``K / P``.
    """
    if num_proj is None:
        eye = torch.eye(num_classes, device=device)
        return eye[:, None, :].expand(num_classes, batch, num_classes), 1.0
    us = []
    for _ in range(num_proj):
        u = torch.randn(batch, num_classes, device=device)
        us.append(u / u.norm(dim=1, keepdim=True))
    return torch.stack(us), num_classes / num_proj


def _func_loss(model: nn.Module, buffers: Dict[str, torch.Tensor], jr_lambda: float, form: str,
               params: Dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor,
               cotangents: Optional[torch.Tensor], scale: float) -> torch.Tensor:
    state = {**params, **buffers}
    if jr_lambda == 0:
        return F.cross_entropy(functional_call(model, state, (x,)), y)
    f = lambda z: functional_call(model, state, (z,), {"normalized": True})
    z = model.normalize(x)
    if form == "jacrev":
        logits, jac = jacrev_logits_and_jacobian(f, z)
        fro = jac.pow(2).flatten(1).sum(1)
    else:
        logits, pullback = vjp(f, z)
        (rows,) = vmap(pullback)(cotangents)  # (P, B, *S)
        fro = scale * rows.pow(2).flatten(2).sum(2).sum(0)
    return F.cross_entropy(logits, y) + jr_lambda * 0.5 * fro.mean()


def train_step_variant(variant: str, model: nn.Module, opt: torch.optim.Optimizer, jr_lambda: float = 0.0,
                       num_proj: Optional[int] = 1) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``(x, y) -> loss``: one Adam step of ``torch_reference.train_step``'s loss in form ``variant``.

    ``jacrev`` forms exist for the exact penalty only (``num_proj=None``).
    """
    base, compiled = split_variant(variant)
    if base == "eager":
        fn = lambda x, y: tr.train_step(model, opt, x, y, jr_lambda, num_proj)
        return compile_fn(fn) if compiled else fn
    if base == "jacrev" and (jr_lambda == 0 or num_proj is not None):
        raise ValueError("the jacrev form is the exact penalty's (jr_lambda > 0, num_proj=None)")
    params = dict(model.named_parameters())
    detached = {k: p.detach() for k, p in params.items()}
    loss_fn = functools.partial(_func_loss, model, dict(model.named_buffers()), jr_lambda, base)
    grad_fn = grad_and_value(loss_fn)

    def apply(grads):
        for name, p in params.items():
            p.grad = grads[name]
        opt.step()

    if compiled:
        grad_fn, apply = compile_fn(grad_fn), compile_fn(apply)

    def step(x, y):
        cotangents, scale = (None, 1.0)
        if jr_lambda:
            cotangents, scale = draw_cotangents(x.shape[0], model.logits.out_features, num_proj, x.device)
        grads, loss = grad_fn(detached, x, y, cotangents, scale)
        apply(grads)
        return loss

    return step


# ---------------------------------------------------------------------------
# Attack steps.
# ---------------------------------------------------------------------------


def func_sgd_uap_step(f: Callable, v: torch.Tensor, x: torch.Tensor, y: torch.Tensor, eps: float,
                      step_size: float, beta: float = 12.0) -> torch.Tensor:
    """``torch_reference.sgd_uap_step`` with the gradient by ``torch.func.grad``."""
    def objective(v):
        return F.cross_entropy(f(tr.clip01(x + v)), y, reduction="none").clamp(max=beta).mean()

    grad, _ = grad_and_value(objective)(v)
    return (v + step_size * grad.sign()).clamp(-eps, eps)


def sgd_step_variant(variant: str, model: nn.Module) -> Callable[..., torch.Tensor]:
    """``(v, x, y, eps, step_size, beta) -> v`` for ``torch_reference.sgd_uap_epoch(step_fn=...)``."""
    base, compiled = split_variant(variant)
    if base == "jacrev":
        raise ValueError("SGD-UAP takes a gradient, not a Jacobian: no jacrev form")
    if base == "eager":
        fn = lambda *a: tr.sgd_uap_step(model, *a)
    else:
        fn = functools.partial(func_sgd_uap_step, functional(model))
    return compile_fn(fn) if compiled else fn


def deepfool_step_variant(variant: str, model: nn.Module) -> Callable[..., Tuple[torch.Tensor, torch.Tensor]]:
    """One DeepFool iteration ``(z, r, labels, on, overshoot) -> (r, on)`` for ``deepfool_uap_pass(step_fn=...)``."""
    base, compiled = split_variant(variant)
    f = model if variant == "eager" else functional(model)  # as jacobian_variant
    g = lambda u: f(tr.clip01(u))
    fn = functools.partial(tr.deepfool_step, g, functools.partial(JACOBIAN_FORMS[base], g))
    return compile_fn(fn) if compiled else fn


# ---------------------------------------------------------------------------
# Forward mode: J v, and the stacked Gram product J^T J v (power iteration).
# ---------------------------------------------------------------------------


def eager_jvp(f: Callable, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``J(x) v`` by eager forward-mode AD (dual tensors)."""
    with fwAD.dual_level():
        return fwAD.unpack_dual(f(fwAD.make_dual(x, v))).tangent


def func_jvp(f: Callable, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return jvp(f, (x,), (v,))[1]


def jvp_variant(variant: str, model: nn.Module) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``(x, v) -> J(x) v`` (``v`` per example, ``(B, *S)``)."""
    base, compiled = split_variant(variant)
    if base == "jacrev":
        raise ValueError("a JVP has no jacrev form")
    f = functional(model)  # no weight graph in either form
    fn = functools.partial(eager_jvp if base == "eager" else func_jvp, f)
    return compile_fn(fn) if compiled else fn


def eager_gram_times(f: Callable, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``sum_b J(x_b)^T J(x_b) v``: a dual-number forward pass, then one backward pass of its primal."""
    x = x.detach().requires_grad_(True)
    with fwAD.dual_level():
        primal, tangent = fwAD.unpack_dual(f(fwAD.make_dual(x, v.expand_as(x))))
    (back,) = torch.autograd.grad(primal, x, tangent.detach())
    return back.sum(0)


def func_gram_times(f: Callable, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The same by ``torch.func.jvp`` then ``torch.func.vjp``."""
    _, jv = jvp(f, (x,), (v.expand_as(x),))
    _, pullback = vjp(f, x)
    return pullback(jv)[0].sum(0)


def gram_times_variant(variant: str, model: nn.Module) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``(x_chunk, v) -> sum_b J_b^T J_b v`` in form ``variant``."""
    base, compiled = split_variant(variant)
    if base == "jacrev":
        raise ValueError("the Gram product has no jacrev form")
    f = functional(model)
    fn = functools.partial(eager_gram_times if base == "eager" else func_gram_times, f)
    return compile_fn(fn) if compiled else fn


def stacked_power(gram_times: Callable, x: torch.Tensor, v0: torch.Tensor, num_iters: int,
                  batch_size: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(sigma_max(J_X), v)`` by matrix-free power iteration, the set in chunks.

    PyTorch has no matrix-free LOBPCG (``torch.lobpcg`` takes the matrix, here
    ``d x d`` with ``d = 150,528``), so this is what a PyTorch user runs at
    ImageNet size; ``sigma`` is the square root of the last Rayleigh quotient.
    """
    v = v0 / v0.norm()
    rayleigh = torch.zeros((), device=x.device)
    for _ in range(num_iters):
        w = sum(gram_times(x[s:s + batch_size], v) for s in range(0, x.shape[0], batch_size))
        rayleigh = (v * w).sum()
        v = w / w.norm().clamp_min(1e-30)
    return rayleigh.clamp_min(0).sqrt(), v


def relative_residual(gram_times: Callable, x: torch.Tensor, v: torch.Tensor, sigma: Any, batch_size: int) -> float:
    """``||G v - sigma^2 v|| / sigma^2`` from one more product (``v`` a unit vector)."""
    w = sum(gram_times(x[s:s + batch_size], v) for s in range(0, x.shape[0], batch_size))
    lam = float(sigma) ** 2
    return float((w - lam * v).norm()) / max(lam, 1e-30)
