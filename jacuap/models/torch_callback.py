"""from_torch's ``"callback"`` mechanism: the torch module itself, called from JAX.

:func:`callback_fn` wraps an eval-mode module as ``f(x) -> logits`` (``x`` in
the module's layout, ``(B, *T)``): the forward pass is a
``jax.pure_callback`` that runs the module on the host under
``torch.no_grad()``; a ``jax.custom_vjp`` gives it a reverse-mode rule whose
backward pass is another callback, ``torch.autograd.grad(module(x), x, g)``
(the input cotangent ``J^T g``, one torch forward and backward pass).

What works: ``jax.vjp``, ``jax.grad``, ``jax.value_and_grad`` with respect
to the input, ``jit`` (also inside ``lax.scan`` / ``while_loop``), and
``vmap`` (both callbacks declare ``vmap_method="broadcast_all"``: a mapped
call hands torch the mapped axes as extra leading axes, which are folded
into the batch, every example being independent).  What does not: forward
mode (``jax.jvp``, ``jax.linearize``, ``jax.jacfwd``, ``linear_transpose`` of
a linearization) raises JAX's ``TypeError: can't apply forward-mode autodiff
(jvp) to a custom_vjp function``; no gradient reaches torch's weights (they
are closed over, not JAX parameters).  The ``from_torch`` docstring lists
which jacuap kernels need a VJP-only ``method=``.

Importing this module does not import torch; :func:`callback_fn` does.
"""

from __future__ import annotations

from typing import Callable, Tuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["callback_fn"]


def callback_fn(module, torch_shape: Tuple[int, ...], num_classes: int) -> Callable[[jax.Array], jax.Array]:
    """``f(x)``: ``module`` on ``x`` of shape ``(*lead, *torch_shape)``, returning ``(*lead, num_classes)`` float32.

    ``module`` must be in eval mode already; its parameters are read at each
    call (so later in-place changes to the module are seen).  Inputs go to
    the device of its parameters (a CUDA module runs there), outputs come
    back to the host.
    """
    import torch

    rank = len(torch_shape)
    device = next((t.device for t in module.parameters()), torch.device("cpu"))

    def to_torch(a: np.ndarray) -> "torch.Tensor":
        return torch.from_numpy(np.array(a, np.float32, copy=True).reshape((-1,) + tuple(torch_shape))).to(device)

    def host_forward(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out = module(to_torch(x))
        return out.detach().cpu().numpy().astype(np.float32).reshape(x.shape[:-rank] + (num_classes,))

    def host_backward(x: np.ndarray, g: np.ndarray) -> np.ndarray:
        with torch.enable_grad():
            xt = to_torch(x).requires_grad_(True)
            out = module(xt)
            ct = torch.from_numpy(np.array(g, np.float32).reshape(tuple(out.shape))).to(out.device)
            (grad,) = torch.autograd.grad(out, xt, ct)
        return grad.detach().cpu().numpy().astype(np.float32).reshape(x.shape)

    def forward(x: jax.Array) -> jax.Array:
        out = jax.ShapeDtypeStruct(x.shape[:-rank] + (num_classes,), jnp.float32)
        return jax.pure_callback(host_forward, out, x.astype(jnp.float32), vmap_method="broadcast_all")

    @jax.custom_vjp
    def f(x: jax.Array) -> jax.Array:
        return forward(x)

    def f_fwd(x):
        return forward(x), x

    def f_bwd(x, g):
        grad = jax.pure_callback(host_backward, jax.ShapeDtypeStruct(x.shape, jnp.float32), x.astype(jnp.float32),
                                 g.astype(jnp.float32), vmap_method="broadcast_all")
        return (grad.astype(x.dtype),)

    f.defvjp(f_fwd, f_bwd)
    return f
