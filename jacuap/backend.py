"""Backend-aware defaults: the choices tuned on XLA:CPU, each applied where it was measured to help.

Two implementation choices of jacuap were made for XLA:CPU.  Both are
selected here, from ``jax.default_backend()`` at call time (never at
import: a multi-host run must initialise JAX's distributed runtime before
any backend), and each has an environment override:

* :func:`chunk_loop` (``JACUAP_LOOP=host|scan``): how an eager call of a set
  kernel (stacked spectral norm, metrics, SV-UAP) reduces over chunks of the
  set.  ``"host"``, a Python loop over one compiled chunk step, ran the set
  kernels 2-4x faster than ``lax.scan`` bodies on XLA:CPU; on one H200 the
  jitted scan was as fast or faster (stacked spectral norm of 10,000
  Fashion-MNIST inputs, Gram path: 0.040 s scan vs 0.045 s host; 50 power
  iterations: 0.041 vs 0.042 s) and needs no host round trip per chunk.
  Default: host on CPU, scan elsewhere.
* :func:`conv_kind` (``JACUAP_CONV=jacuap|lax``): the convolution of the
  models (:func:`jacuap.models.conv.backend_conv`).  ``"jacuap"`` is lax's
  convolution with a ``custom_jvp`` whose input derivative XLA:CPU runs at
  full speed inside loops (e.g. a conv layer's input-gradient 1.8x faster);
  on the H200 it helped too (stacked spectral norm 0.045 s vs 0.064 s with
  lax's).  Not measured on TPU: there the plain ``lax`` op.  Default:
  ``jacuap`` on CPU and GPU, ``lax`` elsewhere.  Both are the same function
  in value and every derivative.

(``benchmarks/SPEED.md`` holds the measurements.)

One workaround lives here too: :func:`pace`, which host loops call once per
iteration so that XLA:CPU never deadlocks on a mesh of several CPU devices.

>>> chunk_loop() in ("host", "scan"), conv_kind() in ("jacuap", "lax")
(True, True)
"""

from __future__ import annotations

import os

__all__ = ["LOOP_ENV", "CONV_ENV", "LOOPS", "CONVS", "chunk_loop", "conv_kind", "pace"]

LOOP_ENV = "JACUAP_LOOP"
CONV_ENV = "JACUAP_CONV"
LOOPS = ("scan", "host")
CONVS = ("jacuap", "lax")


def _forced(env: str, choices) -> str:
    value = os.environ.get(env, "").strip()
    if value and value not in choices:
        raise ValueError(f"{env} must be one of {', '.join(choices)}, got {value!r}")
    return value


def _backend() -> str:
    import jax  # at call time: importing this module initialises nothing

    return jax.default_backend()


def chunk_loop() -> str:
    """``"host"`` on CPU, ``"scan"`` elsewhere, unless ``JACUAP_LOOP`` says otherwise (module docstring)."""
    return _forced(LOOP_ENV, LOOPS) or ("host" if _backend() == "cpu" else "scan")


def conv_kind() -> str:
    """``"jacuap"`` on CPU and GPU, ``"lax"`` elsewhere, unless ``JACUAP_CONV`` says otherwise (module docstring)."""
    return _forced(CONV_ENV, CONVS) or ("jacuap" if _backend() in ("cpu", "gpu", "cuda", "rocm") else "lax")


def pace(tree):
    """Waits for ``tree`` when its arrays span several CPU devices; returns ``tree``.

    Every host loop of jacuap that dispatches compiled steps (the chunk loops,
    the power iteration, the attacks' epochs, training) calls it once per
    iteration on what the iteration produced.  Why: XLA:CPU (jaxlib 0.10)
    deadlocks when, on a mesh of several CPU devices, a program with an
    all-reduce (a sharded chunk or training step) is dispatched while another
    multi-device program of the loop (a replicated update: the power step's
    normalisation, the running sums) is still pending.  Some devices' threads
    then wait in the all-reduce's rendezvous for participants that never
    come, and after 40 s XLA aborts the process ("Termination timeout for
    `all reduce ...`").  A loop alternating a sharded step and a replicated
    update on ``--xla_force_host_platform_device_count=8`` aborted in 3 runs of
    3, with synchronous dispatch too; waiting once per iteration, 0 of 3.
    Elsewhere (one device, GPU, TPU) it returns at once, and dispatch stays
    asynchronous.

    >>> import jax.numpy as jnp
    >>> float(pace(jnp.ones(())))
    1.0
    """
    import jax

    for leaf in jax.tree_util.tree_leaves(tree):
        devices = getattr(getattr(leaf, "sharding", None), "device_set", None)
        if devices:
            if len(devices) > 1 and next(iter(devices)).platform == "cpu":
                jax.block_until_ready(tree)
            break
    return tree
