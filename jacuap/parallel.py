"""Data parallelism over every device, on one host or many: JAX's own machinery only.

jacuap shards *data* and replicates *models*: a 1-D ``Mesh`` named
``"batch"`` over all devices (``jax.devices()``: every chip of every host
once ``jax.distributed`` is up), inputs split on their leading axis with
``NamedSharding(mesh, P("batch"))``, parameters and optimizer state
replicated with ``NamedSharding(mesh, P())``.  XLA's SPMD partitioner turns
the per-batch means into all-reduces; there is no home-made engine.

Two ways in:

* **Sharded inputs** (training): each global batch becomes one global
  ``jax.Array`` whose rows live on the devices that own them.  On several
  hosts each process builds only its own rows (:func:`process_rows`, then
  :func:`shard_batch` with ``jax.make_array_from_process_local_data``).
* **A sharded model** (kernels, metrics, attacks over big sets):
  :func:`batch_sharded_apply` wraps ``apply_fn`` so that every batch the
  model sees is constrained to be split over the mesh
  (``jax.lax.with_sharding_constraint``).  Since every jacuap kernel takes
  ``apply_fn``, the stacked spectral norm, the metrics' loops and SGD-UAP's
  minibatches all run data-parallel *unchanged*: pass the wrapped function
  and parameters :func:`replicate`-d on the mesh.

Multi-host: :func:`initialize_multihost` calls ``jax.distributed.initialize``
(arguments auto-detected on Cloud TPU pod slices, SLURM and Open MPI; explicit
``coordinator_address``/``num_processes``/``process_id`` elsewhere).  Only
process 0 writes files (:mod:`jacuap.io`);
orbax coordinates checkpoint writes across processes itself.
"""

from __future__ import annotations

import contextlib
import functools
import os
from typing import Any, Callable, Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jacuap.errors import ParallelError

__all__ = [
    "BATCH_AXIS",
    "ParallelError",
    "initialize_multihost",
    "make_mesh",
    "batch_sharding",
    "replicated_sharding",
    "check_divisible",
    "process_rows",
    "shard_batch",
    "replicate",
    "batch_sharded_apply",
    "batch_multiple",
    "any_process",
]

BATCH_AXIS = "batch"


def initialize_multihost(
    coordinator_address: Optional[str] = None,
    num_processes: Optional[int] = None,
    process_id: Optional[int] = None,
    local_device_ids: Optional[Sequence[int]] = None,
    initialization_timeout: int = 300,
) -> None:
    """Joins this process to a multi-host JAX job (``jax.distributed.initialize``).

    Call before anything else touches JAX devices.  With no arguments JAX
    detects the cluster (Cloud TPU pod slices, SLURM, Open MPI, or the
    ``JAX_COORDINATOR_ADDRESS``/``JAX_NUM_PROCESSES``/``JAX_PROCESS_ID``
    environment variables).  A second call is a no-op.  On CPU (tests, or
    several CPU hosts) the cross-process collectives are gloo's.

    Raises:
      ParallelError: the coordinator could not be reached or the cluster
        could not be detected (one line, with what to set).
    """
    if jax.distributed.is_initialized():
        return
    if coordinator_address is None:
        coordinator_address = os.environ.get("JAX_COORDINATOR_ADDRESS") or None
    if num_processes is None and os.environ.get("JAX_NUM_PROCESSES"):
        num_processes = int(os.environ["JAX_NUM_PROCESSES"])
    if process_id is None and os.environ.get("JAX_PROCESS_ID"):
        process_id = int(os.environ["JAX_PROCESS_ID"])
    with contextlib.suppress(Exception):  # only matters (and only exists) on CPU
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(
            coordinator_address=coordinator_address,
            num_processes=num_processes,
            process_id=process_id,
            local_device_ids=local_device_ids,
            initialization_timeout=initialization_timeout,
        )
    except Exception as exc:  # JAX raises RuntimeError/ValueError/XlaRuntimeError here
        text = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise ParallelError(
            f"--multihost: jax.distributed.initialize failed ({text}); on a TPU pod slice run the "
            "same command on every host; elsewhere set JAX_COORDINATOR_ADDRESS=host:port, "
            "JAX_NUM_PROCESSES and JAX_PROCESS_ID on each process"
        ) from None


def make_mesh(devices: Optional[Sequence[Any]] = None) -> Mesh:
    """A 1-D mesh ``("batch",)`` over ``devices`` (default: every device of every process).

    Devices are ordered by (process, id), so each process owns one contiguous
    block of every global batch.
    """
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ParallelError("make_mesh: no devices")
    devices.sort(key=lambda d: (d.process_index, d.id))
    return Mesh(np.array(devices), (BATCH_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading axis split over the mesh, the other axes whole."""
    return NamedSharding(mesh, P(BATCH_AXIS))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    """A full copy on every device of the mesh."""
    return NamedSharding(mesh, P())


def check_divisible(batch_size: int, mesh: Mesh, what: str = "batch_size") -> None:
    """Raises ParallelError unless ``batch_size`` splits evenly over the mesh's devices."""
    n = mesh.size
    if batch_size % n:
        lower = (batch_size // n) * n
        options = f"{lower} or {lower + n}" if lower else f"{n}"
        raise ParallelError(
            f"{what} {batch_size} does not divide over the {n} devices "
            f"({jax.devices()[0].platform}); use a multiple of {n}, e.g. {options}"
        )


def process_rows(global_batch: int, mesh: Mesh) -> slice:
    """The rows of a ``global_batch``-row batch that this process's devices hold.

    One contiguous block per process (see :func:`make_mesh`); the whole batch
    on a single host.
    """
    check_divisible(global_batch, mesh)
    indices = batch_sharding(mesh).addressable_devices_indices_map((global_batch,))
    starts = sorted(idx[0].indices(global_batch)[:2] for idx in indices.values())
    lo, hi = starts[0][0], starts[-1][1]
    covered = sum(b - a for a, b in starts)
    if covered != hi - lo:
        raise ParallelError("this process's devices do not hold one contiguous block of the batch")
    return slice(lo, hi)


def shard_batch(local: Any, mesh: Mesh, global_batch: Optional[int] = None) -> Any:
    """Host arrays (a pytree) of this process's rows -> global batch-sharded ``jax.Array``s.

    ``local`` holds rows ``process_rows(global_batch, mesh)`` of the global
    batch (on one host: the whole batch).  ``global_batch`` defaults to the
    local row count times the number of processes.
    """
    sharding = batch_sharding(mesh)

    def one(x):
        x = np.asarray(x)
        rows = global_batch if global_batch is not None else x.shape[0] * jax.process_count()
        if jax.process_count() == 1:
            check_divisible(rows, mesh)
            return jax.device_put(x, sharding)
        return jax.make_array_from_process_local_data(sharding, x, (rows,) + x.shape[1:])

    return jax.tree_util.tree_map(one, local)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """A pytree of arrays, copied onto every device of the mesh (every process passes the same values)."""
    sharding = replicated_sharding(mesh)
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)

    def one(x):
        if isinstance(x, jax.Array) and x.sharding == sharding:
            return x
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree_util.tree_map(one, tree)


@functools.lru_cache(maxsize=None)
def batch_sharded_apply(apply_fn: Callable, mesh: Mesh) -> Callable:
    """``apply_fn`` whose input batch is split over ``mesh`` wherever it is called.

    Every kernel of :mod:`jacuap.jacobian`, :mod:`jacuap.metrics` and
    :mod:`jacuap.attacks` evaluates the model through ``apply_fn``; with this
    wrapper (and parameters :func:`replicate`-d on ``mesh``) their batches,
    JVPs and VJPs run data-parallel and their sums over the batch become
    all-reduces.  A batch whose size does not divide over the devices is
    left unconstrained (computed whole, still correct): round batch sizes up
    with :func:`batch_multiple`.  The same object is returned for the same arguments, so compiled
    functions that take ``apply_fn`` as a static argument are reused.  On a
    one-device mesh it is ``apply_fn`` itself.
    """
    if mesh.size == 1:
        return apply_fn
    sharding = batch_sharding(mesh)

    def sharded_apply(params, x):
        if x.ndim and x.shape[0] % mesh.size == 0:
            x = jax.lax.with_sharding_constraint(x, sharding)
        return apply_fn(params, x)

    sharded_apply.__wrapped__ = apply_fn
    sharded_apply.mesh = mesh
    return sharded_apply


def batch_multiple(apply_fn: Callable) -> int:
    """The device count of a :func:`batch_sharded_apply` function's mesh (1 for a plain one).

    Loops over big sets round their batch size up to a multiple of it (and
    pad), so that every batch splits evenly over the devices.
    """
    mesh = getattr(apply_fn, "mesh", None)
    return mesh.size if isinstance(mesh, Mesh) else 1


def any_process(flag: bool) -> bool:
    """True if ``flag`` is true on any process (a collective: call it on all of them)."""
    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils

    flags = multihost_utils.process_allgather(np.array([int(bool(flag))], np.int32))
    return bool(np.any(flags))
