"""Speed of jacuap's kernels, side by side with the strongest PyTorch of each row.

    python benchmarks/speed.py                 # the full table (every row, every PyTorch form)
    python benchmarks/speed.py --quick         # tiny sizes, uncompiled PyTorch forms (the smoke test)
    python benchmarks/speed.py --rows train_plain,train_jr1 --variants eager,func_compile

Rows (``benchmarks/speed_rows.py``): the Fashion-MNIST CNN rows (jacuap's
``cnn``: conv32-conv64-dense128-dense10, batch 128; weights copied into
``benchmarks/torch_reference.TorchCNN``), then the CIFAR-size rows (a
ResNet-20 on 32x32x3 at batch 128) and the ImageNet-size rows (3x224x224:
a JVP, and LOBPCG's stacked spectral norm on 256 inputs) of
``benchmarks/speed_cifar.py``.  Same model, batch and data on both sides.

PyTorch forms (``--variants``; ``benchmarks/torch_func_reference.py``):
``eager`` (today's reference, ``benchmarks/torch_reference.py``: a Python
loop of ``torch.autograd.grad`` calls, JacobianReg style), ``func``
(``torch.func``: ``vmap`` of a batched ``vjp``, ``jvp``, ``grad_and_value``
over ``functional_call``), ``jacrev`` (``vmap(jacrev)``, where a full
Jacobian is wanted), and the ``torch.compile`` of each (``compile``,
``func_compile``, ``jacrev_compile``).  Each row times every form it has;
a form that raises (``torch.compile`` of the eager JR step: "does not
currently support double backward") is recorded as its error string.

Each row is compiled (jacuap: ahead of time, the compile time reported on
its own; compiled PyTorch forms: their first call, reported as
``reference_warmup_s``) and warmed up, then the jacuap and PyTorch
repetitions are INTERLEAVED (j, t1, t2, t3, j, ...) so that all see the same
machine load.  The table gives medians, the best PyTorch form per row and
the ratio jacuap / best (below 1: jacuap is faster); ``speed.json`` keeps
every form's seconds under ``references``.  Rows with a JAX baseline instead
of PyTorch (``vmap(jacrev)`` exact JR, 50 power iterations) give that ratio.

A floor per row is the XLA cost analysis of jacuap's program (FLOPs of the
step, loop bodies times their trip counts) over the measured matmul rate of
the machine: how far each kernel runs from the arithmetic limit.

PyTorch runs on ``--torch-device`` (default: ``cuda`` when torch sees a GPU,
else ``cpu``); on ``cuda`` every PyTorch repetition ends with
``torch.cuda.synchronize()`` before the clock is read, as every jacuap one
ends with ``block_until_ready``.  ``--data-dir`` is passed to
``jacuap.load_dataset`` (a folder holding the Fashion-MNIST IDX files, say);
``--cifar-dir`` holds CIFAR-10's binary files (random images of the same
shape without it, which the output says).

Results go to ``benchmarks/results/speed.json`` (``--out``), rewritten after
every row (with ``"partial": true`` until the run ends), so a run that is
stopped keeps the rows it finished.  PyTorch is the
``bench`` extra (``pip install -e '.[bench]'``); without it the jacuap
columns are still measured.  No timing is ever asserted by the tests.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable, Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import jacuap  # noqa: E402
from jacuap import attacks, io, jacobian, models, parallel, train  # noqa: E402
from benchmarks.speed_rows import CIFAR_ROWS, ROWS  # noqa: E402

try:
    import torch  # noqa: E402

    from benchmarks import torch_func_reference as tf  # noqa: E402
    from benchmarks import torch_reference as tr  # noqa: E402
except ImportError:  # the bench extra is optional
    torch = None
    tr = tf = None

#: PyTorch forms (benchmarks/torch_func_reference.py); written out so that --help works without torch.
TORCH_VARIANTS = ("eager", "func", "jacrev", "compile", "func_compile", "jacrev_compile")
#: The forms of a kernel that takes no full Jacobian (a gradient, projections, a JVP).
NO_JACREV = tuple(v for v in TORCH_VARIANTS if not v.startswith("jacrev"))



def _copy(tree):
    return jax.tree_util.tree_map(jnp.copy, tree)


def _block(tree):
    return jax.tree_util.tree_map(lambda a: a.block_until_ready() if hasattr(a, "block_until_ready") else a, tree)


def _time(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _flops(compiled) -> Optional[float]:
    try:
        cost = compiled.cost_analysis()
        if isinstance(cost, (list, tuple)):
            cost = cost[0]
        return float(cost.get("flops", float("nan")))
    except Exception:  # pragma: no cover - backend without cost analysis
        return None


def _peak_bytes(compiled) -> Optional[int]:
    try:
        m = compiled.memory_analysis()
        return int(m.temp_size_in_bytes + m.output_size_in_bytes + m.argument_size_in_bytes)
    except Exception:  # pragma: no cover
        return None


def _temp_bytes(compiled) -> Optional[int]:
    try:
        return int(compiled.memory_analysis().temp_size_in_bytes)
    except Exception:  # pragma: no cover
        return None


def _error_text(exc: BaseException) -> str:
    """A failed variant's record: the exception's type and first line (dynamo appends pages of hints)."""
    lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:500]


class Bench:
    """Interleaved repetitions of jacuap and its references; medians, the best reference and ratios.

    A row has one or more references (PyTorch's ``eager``, ``func``,
    ``compile``, ... forms, or a JAX baseline).  Each repetition times jacuap,
    then every reference in turn (j, t1, t2, t3, j, t1, ...), so all see the
    same machine load.  A reference whose warm-up or repetition raises is
    recorded as its error string and dropped from the row; the run goes on.
    Compiled references (a name containing ``compile``) get at least one
    warm-up call whatever ``warmup``: their first call compiles, and its
    seconds are reported (``reference_warmup_s``), never mixed into the reps.
    """

    def __init__(self, reps: int, warmup: int, torch_sync: Optional[Callable[[], None]] = None,
                 on_row: Optional[Callable[[], None]] = None):
        self.reps, self.warmup = reps, warmup
        self.torch_sync = torch_sync  # torch.cuda.synchronize when PyTorch runs on a GPU
        self.on_row = on_row  # called after each row (speed.py saves the partial results)
        self.rows: Dict[str, Dict[str, Any]] = {}

    def run(self, name: str, jax_fn: Callable[[], Any], refs, *,
            ref_name: str = "torch", compile_s: Optional[float] = None, flops: Optional[float] = None,
            reps: Optional[int] = None, warmup: Optional[int] = None, note: str = "",
            extra: Optional[dict] = None, errors: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
        """Times ``jax_fn`` against ``refs``: a callable (named ``ref_name``), a dict ``variant -> callable``, or None.

        With a dict, ``ref_name`` prefixes the variant names in the row's
        ``reference`` (``"torch func"``).  ``errors``: variants that failed
        before timing (e.g. while being built), recorded as they are.
        """
        reps = self.reps if reps is None else reps
        warmup = self.warmup if warmup is None else warmup
        if refs is None:
            refs = {}
        elif callable(refs):
            refs, ref_name = {ref_name: refs}, ""
        sync = self.torch_sync if ref_name.startswith("torch") else None
        calls: Dict[str, Callable[[], Any]] = {}
        for variant, fn in refs.items():
            def call(fn=fn):  # asynchronous CUDA work is done when the clock is read
                out = fn()
                if sync is not None:
                    sync()
                return out
            calls[variant] = call
        failed: Dict[str, str] = dict(errors or {})
        warm_s: Dict[str, float] = {}

        def attempt(variant):
            try:
                return _time(lambda: _block(calls[variant]()))
            except Exception as exc:  # a variant that fails is a result, not the end of the run
                failed[variant] = _error_text(exc)
                del calls[variant]
                print(f"    {name} {variant}: {failed[variant]}", flush=True)
                return None

        for i in range(max([warmup] + [1 for v in calls if "compile" in v])):
            if i < warmup:
                _block(jax_fn())
            for variant in list(calls):
                if i < warmup or "compile" in variant:
                    t = attempt(variant)
                    if t is not None and i == 0:
                        warm_s[variant] = t
        jt: List[float] = []
        rt: Dict[str, List[float]] = {v: [] for v in calls}
        for _ in range(reps):
            jt.append(_time(lambda: _block(jax_fn())))
            for variant in list(calls):
                t = attempt(variant)
                if t is not None:
                    rt[variant].append(t)
        medians = {v: statistics.median(ts) for v, ts in rt.items() if v in calls and ts}
        best = min(medians, key=medians.get) if medians else None
        label = lambda v: f"{ref_name} {v}".strip() if ref_name else v
        row = {
            "jacuap_s": statistics.median(jt),
            "jacuap_all_s": jt,
            "reference": label(best) if best else None,
            "reference_variant": best,
            "reference_s": medians.get(best),
            "reference_all_s": rt.get(best, []),
            # every variant: its median seconds, or the error it raised
            "references": {**{v: medians.get(v) for v in refs if v not in failed}, **failed},
            "references_all_s": {v: ts for v, ts in rt.items() if v in medians},
            "reference_warmup_s": warm_s,
            "compile_s": compile_s,
            "flops": flops,
            "note": note,
        }
        if best:
            row["ratio"] = row["jacuap_s"] / row["reference_s"]
            row["ratio_pairwise_median"] = statistics.median(j / r for j, r in zip(jt, rt[best]))
        row.update(extra or {})
        self.rows[name] = row
        ref = f"{row['reference_s']:.4f}s ({row['reference']})" if best else "-"
        ratio = f"{row['ratio']:.2f}" if best else "-"
        print(f"  {name:32s} jacuap {row['jacuap_s']:.4f}s  best ref {ref}  ratio {ratio}  "
              f"compile {compile_s if compile_s is None else round(compile_s, 2)}s {note}", flush=True)
        if len(row["references"]) > 1:
            parts = [f"{v} {t:.4f}s" if isinstance(t, float) else f"{v} FAILED" for v, t in row["references"].items()]
            print(f"    {'; '.join(parts)}", flush=True)
        if self.on_row is not None:
            self.on_row()
        return row


def _aot(fn, *args, **kwargs):
    """``(compiled, compile_seconds)`` for a jitted ``fn`` at these arguments."""
    start = time.perf_counter()
    lowered = fn.lower(*args, **kwargs)
    compiled = lowered.compile()
    return compiled, time.perf_counter() - start


def _torch_sync(device: str) -> Callable[[], None]:
    """Waits for ``device``'s queued PyTorch work (a no-op on the CPU)."""
    if torch is not None and torch.device(device).type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def matmul_rate(n: int = 2048, reps: int = 5, torch_device: Optional[str] = "cpu") -> Dict[str, float]:
    """Measured float32 matmul rates (FLOP/s) of XLA and, when present, PyTorch (on ``torch_device``)."""
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
    mm = jax.jit(jnp.dot)
    mm(a, a).block_until_ready()
    out = {"xla": 2 * n**3 / min(_time(lambda: mm(a, a).block_until_ready()) for _ in range(reps))}
    if torch is not None and torch_device is not None:
        sync = _torch_sync(torch_device)
        t = torch.randn(n, n).to(torch_device)

        def tmm():
            t @ t
            sync()

        tmm()
        out["torch"] = 2 * n**3 / min(_time(tmm) for _ in range(reps))
    out["peak"] = max(out.values())
    return out


# ---------------------------------------------------------------------------
# The rows.
# ---------------------------------------------------------------------------


def _vmap_jacrev_fro(apply_fn, params, x):
    """Exact ``||J(x_b)||_F^2`` by ``vmap(jacrev)`` per example: the textbook baseline."""
    per_example = lambda xi: apply_fn(params, xi[None])[0]
    jac = jax.vmap(jax.jacrev(per_example))(x)
    return apply_fn(params, x), jnp.sum(jnp.square(jac.reshape(x.shape[0], -1)), axis=1)


def _vmap_jacrev_train_step(state, images, labels, jr_lambda, input_std):
    std = jnp.asarray(input_std, images.dtype)

    def loss(params):
        jr_apply = lambda p, z: state.apply_fn(p, std * z)  # J w.r.t. z = x / std, as jr_space="normalized"
        logits, fro = _vmap_jacrev_fro(jr_apply, params, images / std)
        ce = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))
        return ce + jr_lambda * 0.5 * jnp.mean(fro)

    grads = jax.grad(loss)(state.params)
    return state.apply_gradients(grads=grads)


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny sizes (sklearn digits, small sets): seconds")
    p.add_argument("--dataset", default=None, help="default fashion_mnist (digits with --quick)")
    p.add_argument("--batch", type=int, default=None, help="training/attack batch (default 128)")
    p.add_argument("--set-size", type=int, default=None, help="inputs for the set kernels (default 10000)")
    p.add_argument("--deepfool-size", type=int, default=None, help="inputs of the DeepFool-UAP pass (default 10000)")
    p.add_argument("--reps", type=int, default=None, help="timed repetitions of the fast rows")
    p.add_argument("--slow-reps", type=int, default=None, help="timed repetitions of the set rows")
    p.add_argument("--pretrain-steps", type=int, default=None, help="plain steps before timing (realistic weights)")
    p.add_argument("--power-iters", type=int, default=None,
                   help="power iterations actually timed for the 50-iteration baseline (time scaled to 50; default 10)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory check (compile-time analysis)")
    p.add_argument("--rows", default=",".join(ROWS), help="comma-separated subset of " + ",".join(ROWS))
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch reference")
    p.add_argument("--variants", default=None,
                   help="comma-separated PyTorch forms to time, of " + ",".join(TORCH_VARIANTS)
                        + " (default: all; with --quick the uncompiled ones, since each torch.compile "
                          "takes tens of seconds)")
    p.add_argument("--cifar-dir", default=None,
                   help="the CIFAR-10 binary files for the cifar_* rows (default: random images of the same shape)")
    p.add_argument("--cifar-deepfool-size", type=int, default=None,
                   help="inputs of the cifar DeepFool-UAP pass (default 256)")
    p.add_argument("--imagenet-size", type=int, default=None, help="side of the imagenet224_* rows' images (224)")
    p.add_argument("--imagenet-set-size", type=int, default=None,
                   help="inputs of the imagenet224_lobpcg row (default 256)")
    p.add_argument("--imagenet-batch", type=int, default=None,
                   help="batch of the JVP row and chunk of the LOBPCG row (default 32)")
    p.add_argument("--imagenet-power-iters", type=int, default=None,
                   help="power iterations of the PyTorch side of imagenet224_lobpcg (default 10)")
    p.add_argument("--torch-threads", type=int, default=0,
                   help="torch.set_num_threads; 0 (default): the faster of 1 and all cores on a plain step "
                        "(CPU only; on cuda 0 leaves torch's default)")
    p.add_argument("--torch-device", default=None,
                   help="device of the PyTorch reference (default: cuda if torch.cuda.is_available() else cpu)")
    p.add_argument("--data-dir", default=None,
                   help="passed to jacuap.load_dataset (e.g. a folder with the Fashion-MNIST IDX files)")
    p.add_argument("--conv", choices=("jacuap", "lax"), default="jacuap",
                   help="the model's convolution: jacuap.models.conv's (default) or plain jax.lax (to measure what it buys)")
    p.add_argument("--loop", choices=("host", "scan"), default="host",
                   help="set-kernel chunk loop: 'host' (a Python loop over one compiled chunk step, the default "
                        "on CPU) or 'scan' (lax.scan inside one program)")
    p.add_argument("--out", default=None, help="JSON output (default benchmarks/results/speed.json; '' for none)")
    args = p.parse_args(argv)

    quick = args.quick
    dataset_name = args.dataset or ("digits" if quick else "fashion_mnist")
    batch = args.batch or (32 if quick else 128)
    set_size = args.set_size or (256 if quick else 10_000)
    deepfool_size = args.deepfool_size or (128 if quick else 1000)
    power_iters = args.power_iters or 5
    reps = args.reps or (2 if quick else 15)
    slow_reps = args.slow_reps or (1 if quick else 2)
    pretrain = args.pretrain_steps if args.pretrain_steps is not None else (5 if quick else 300)
    rows = [r for r in args.rows.split(",") if r]
    unknown = set(rows) - set(ROWS)
    if unknown:
        p.error(f"unknown rows {sorted(unknown)}; choose from {ROWS}")
    variants = [v for v in (args.variants or "").split(",") if v] or \
        [v for v in TORCH_VARIANTS if not (quick and "compile" in v)]
    if set(variants) - set(TORCH_VARIANTS):
        p.error(f"unknown --variants {sorted(set(variants) - set(TORCH_VARIANTS))}; choose from {TORCH_VARIANTS}")
    use_torch = torch is not None and not args.no_torch
    torch_device = None
    if use_torch:
        torch_device = args.torch_device or ("cuda" if torch.cuda.is_available() else "cpu")
        try:
            on_cuda = torch.device(torch_device).type == "cuda"
        except RuntimeError as exc:
            p.error(f"--torch-device {torch_device!r}: {exc}")
        if on_cuda and not torch.cuda.is_available():
            p.error(f"--torch-device {torch_device!r}: torch sees no CUDA device")
    on_cuda = torch_device is not None and torch.device(torch_device).type == "cuda"
    out_path = args.out if args.out is not None else os.path.join(os.path.dirname(__file__), "results", "speed.json")

    ds = jacuap.load_dataset(dataset_name, data_dir=args.data_dir)
    image_shape = tuple(ds.image_shape)
    model = models.create_model("cnn", ds.num_classes, ds.mean, ds.std)
    if args.conv == "lax":
        model = model.clone(conv_general_dilated=jax.lax.conv_general_dilated)
    apply_fn = models.make_apply_fn(model)
    tx = optax.adam(1e-3)
    state = train.create_train_state(model, jax.random.PRNGKey(0), image_shape, tx)
    step_fn = jax.jit(train.train_step, static_argnames=("jr_lambda", "jr_num_proj", "input_std"),
                      donate_argnums=0)
    input_std = tuple(float(s) for s in ds.std)
    train_x, train_y = ds.train_images, ds.train_labels
    rng = np.random.default_rng(0)
    for i in range(pretrain):  # realistic weights for the attacks (DeepFool's work depends on them)
        idx = rng.choice(len(train_x), batch, replace=False)
        state, _ = step_fn(state, train_x[idx], train_y[idx], jax.random.PRNGKey(i), 0.0, None, None)
    params = jax.tree_util.tree_map(lambda a: a.copy(), state.params)
    set_x = jnp.asarray(ds.test_images[:set_size])
    set_y = jnp.asarray(ds.test_labels[:set_size])
    xb, yb = jnp.asarray(train_x[:batch]), jnp.asarray(train_y[:batch])

    info = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "jax": jax.__version__,
            "backend": jax.default_backend(),
            "devices": [str(d) for d in jax.devices()],
            "torch": torch.__version__ if torch is not None else None,
            "torch_threads": torch.get_num_threads() if torch is not None else None,
            "torch_device": torch_device,
            "gpu_name": torch.cuda.get_device_name(torch.device(torch_device)) if on_cuda else None,
            "jax_device_kinds": sorted({getattr(d, "device_kind", "") for d in jax.devices()}),
            # float32 precision both sides use on GPUs (TF32 or not): read, never changed here.
            "torch_cuda_matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32 if on_cuda else None,
            "torch_cudnn_allow_tf32": torch.backends.cudnn.allow_tf32 if on_cuda else None,
            "jax_default_matmul_precision": jax.config.jax_default_matmul_precision,
            "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
            "loadavg_at_start": os.getloadavg(),
        },
        "config": {"dataset": dataset_name, "data_source": ds.source, "batch": batch, "set_size": set_size,
                   "deepfool_size": deepfool_size, "reps": reps, "slow_reps": slow_reps,
                   "pretrain_steps": pretrain, "quick": quick, "conv": args.conv, "loop": args.loop, "data_dir": args.data_dir,
                   "torch_variants": variants if use_torch else [],
                   "argv": sys.argv[1:] if argv is None else argv},
    }
    rate = matmul_rate(512 if quick else 2048, torch_device=torch_device or ("cpu" if torch is not None else None))
    info["matmul_flops_per_s"] = rate
    print(f"jacuap speed: {dataset_name} ({ds.source}), batch {batch}, set {set_size}; "
          f"matmul {rate['peak'] / 1e9:.1f} GFLOP/s; jax {jax.default_backend()}; "
          f"torch {torch_device if use_torch else 'off'}", flush=True)

    dev = torch_device
    tmodel = tr.from_flax(params, ds.mean, ds.std, image_shape).to(dev) if use_torch else None
    txb = tr.to_nchw(xb).to(dev) if use_torch else None
    tyb = torch.from_numpy(np.asarray(yb, np.int64)).to(dev) if use_torch else None
    if use_torch and not on_cuda:
        threads = args.torch_threads or _best_torch_threads(tmodel, txb, tyb)
        torch.set_num_threads(threads)
        info["machine"]["torch_threads"] = threads
        print(f"torch threads: {threads}", flush=True)
    elif use_torch and args.torch_threads:
        torch.set_num_threads(args.torch_threads)
        info["machine"]["torch_threads"] = args.torch_threads

    def save_partial():
        if out_path:
            _write_json(out_path, {**info, "rows": bench.rows, "partial": True})

    bench = Bench(reps, warmup=1, torch_sync=_torch_sync(dev) if use_torch else None, on_row=save_partial)
    key = jax.random.PRNGKey(1)
    jr_lambda = 0.5
    torch_refs = functools.partial(_torch_refs, variants if use_torch else [])

    # --- training steps --------------------------------------------------
    def train_row(name, lam, num_proj):
        jstate = [train.create_train_state(model, jax.random.PRNGKey(0), image_shape, tx).replace(params=_copy(params))]
        compiled, compile_s = _aot(step_fn, jstate[0], xb, yb, key, lam, num_proj, input_std if lam else None)

        def jfn():
            jstate[0], aux = compiled(jstate[0], xb, yb, key)
            return aux

        def make(variant):  # each form trains its own copy of the same weights
            tm = tr.from_flax(params, ds.mean, ds.std, image_shape).to(dev)
            step = tf.train_step_variant(variant, tm, tr.make_optimizer(tm), lam, num_proj)
            return lambda: step(txb, tyb)

        refs, errors = torch_refs(TORCH_VARIANTS if lam and num_proj is None else NO_JACREV, make)
        return bench.run(name, jfn, refs, compile_s=compile_s, flops=_flops(compiled), errors=errors)

    if "train_plain" in rows:
        train_row("train_plain", 0.0, None)
    if "train_jr1" in rows:
        train_row("train_jr1", jr_lambda, 1)
    if "train_jr_exact" in rows:
        train_row("train_jr_exact", jr_lambda, None)
    if "train_jr_exact_vmap_jacrev" in rows:
        vstate = [train.create_train_state(model, jax.random.PRNGKey(0), image_shape, tx).replace(params=_copy(params))]
        vstep = jax.jit(_vmap_jacrev_train_step, static_argnames=("jr_lambda", "input_std"), donate_argnums=0)
        compiled, compile_s = _aot(vstep, vstate[0], xb, yb, jr_lambda, input_std)
        fast = [train.create_train_state(model, jax.random.PRNGKey(0), image_shape, tx).replace(params=_copy(params))]
        fast_c, _ = _aot(step_fn, fast[0], xb, yb, key, jr_lambda, None, input_std)

        def vfn():
            vstate[0] = compiled(vstate[0], xb, yb)
            _block(vstate[0].params)

        def ffn():
            fast[0], aux = fast_c(fast[0], xb, yb, key)
            _block(aux)

        # Here "jacuap" is jacuap's exact JR step and the reference vmap(jacrev): ratio < 1/3 is the goal.
        bench.run("train_jr_exact_vmap_jacrev", ffn, vfn, ref_name="jax vmap(jacrev)",
                  compile_s=compile_s, flops=_flops(fast_c), reps=max(3, reps // 3),
                  note="(jacuap exact JR vs vmap(jacrev))")

    # --- exact per-batch Jacobian ----------------------------------------
    if "input_jacobian" in rows:
        jfun = jax.jit(jacobian.input_jacobian, static_argnums=0)
        compiled, compile_s = _aot(jfun, apply_fn, params, xb)
        refs, errors = torch_refs(TORCH_VARIANTS, lambda v: functools.partial(tf.jacobian_variant(v, tmodel), txb))
        bench.run("input_jacobian", lambda: compiled(params, xb), refs, compile_s=compile_s, flops=_flops(compiled),
                  errors=errors)

    # --- stacked spectral norm on the set ---------------------------------
    chunk = min(256, set_size)
    if "stacked_spectral_norm" in rows or "stacked_spectral_norm_power50" in rows:
        reference = _dense_reference(apply_fn, params, set_x, chunk)
        info["stacked_reference"] = {"sigma": reference, "how": "float64 eigh of sum_i J_i^T J_i (exact rows)"}
    # loop="host" (the default): called eagerly, as jacuap.metrics and the
    # singular-vector UAP call it, the set loop runs from Python over one
    # compiled chunk step.  loop="scan": the whole kernel as one jitted program
    # (compiled once per method; an eager lax.scan would re-trace every call).
    # The first call's extra time is compile.
    ssn_jit = jax.jit(jacobian.stacked_spectral_norm, static_argnums=0,
                      static_argnames=("num_iters", "batch_size", "method", "loop"))

    def ssn_eager(**kw):
        fn = jacobian.stacked_spectral_norm if args.loop == "host" else ssn_jit
        return lambda: fn(apply_fn, params, set_x, key, batch_size=chunk, loop=args.loop, **kw)

    if "stacked_spectral_norm" in rows:
        gram_one = jax.jit(lambda xc: jacobian.stacked_gram(apply_fn, params, xc, chunk))
        gram_flops = _flops(_aot(gram_one, set_x[:chunk])[0])
        gram_flops = None if gram_flops is None else gram_flops * -(-set_size // chunk)
        first = time.perf_counter()
        sigma = float(_block(ssn_eager(method="auto")())[0])
        first = time.perf_counter() - first
        tset = tr.to_nchw(set_x).to(dev) if use_torch else None
        refs, errors = torch_refs(TORCH_VARIANTS, lambda v: functools.partial(
            tr.stacked_spectral_norm, tmodel, tset, chunk, tf.jacobian_variant(v, tmodel)))
        row = bench.run("stacked_spectral_norm", ssn_eager(method="auto"), refs, flops=gram_flops, reps=slow_reps,
                        warmup=0, note="(method='auto': Gram, eager)", errors=errors,
                        extra={"sigma": sigma, "rel_error": abs(sigma - reference) / reference, "first_call_s": first})
        row["compile_s"] = max(first - row["jacuap_s"], 0.0)
    if "stacked_spectral_norm_power50" in rows:
        sigma_a = float(_block(ssn_eager(method="auto")())[0])
        first = time.perf_counter()
        sigma_p = float(_block(ssn_eager(method="power", num_iters=power_iters)())[0])
        first = time.perf_counter() - first
        row = bench.run("stacked_spectral_norm_power50", ssn_eager(method="auto"),
                        ssn_eager(method="power", num_iters=power_iters),
                        ref_name=f"jax power x{power_iters} (scaled to 50)", reps=slow_reps, warmup=0,
                        note=f"(jacuap auto vs power iteration; {power_iters} timed, x{50 / power_iters:g})",
                        extra={"sigma_auto": sigma_a, f"sigma_power{power_iters}": sigma_p,
                               "rel_error_auto": abs(sigma_a - reference) / reference,
                               f"rel_error_power{power_iters}": abs(sigma_p - reference) / reference,
                               "power_iters_timed": power_iters})
        # Power iteration does the same work every iteration: the 50-iteration time is linear in it.
        scale = 50 / power_iters
        row["compile_s"] = max(first - row["reference_s"], 0.0)
        row["reference_measured_s"] = row["reference_s"]
        row["reference_all_s"] = [t * scale for t in row["reference_all_s"]]
        row["reference_s"] *= scale
        row["references"] = {row["reference"]: row["reference_s"]}
        row["references_all_s"] = {row["reference"]: row["reference_all_s"]}
        row["ratio"] = row["jacuap_s"] / row["reference_s"]
        row["ratio_pairwise_median"] /= scale
        f_ = lambda u: apply_fn(params, u)
        one = jax.jit(lambda xc, v: jax.linear_transpose(jax.linearize(f_, xc)[1], xc)(jax.linearize(f_, xc)[1](v)))
        flops_p = _flops(_aot(one, set_x[:chunk], set_x[:chunk])[0])
        row["reference_flops"] = None if flops_p is None else flops_p * 50 * -(-set_size // chunk)
        print(f"    scaled to 50 iterations: {row['reference_s']:.2f}s, ratio {row['ratio']:.3f}", flush=True)

    # --- SGD-UAP epoch ----------------------------------------------------
    eps = 0.1
    if "sgd_uap_epoch" in rows:
        nb = -(-set_size // batch)
        alpha = attacks.default_sgd_step_size(eps, nb)
        f32 = lambda a: jnp.asarray(a, jnp.float32)
        args_ = (apply_fn, None, params, jnp.zeros(image_shape), set_x, set_y, key, f32(eps), f32(alpha), f32(12.0))
        kw = dict(norm="linf", batch_size=batch, targeted=False)
        compiled, compile_s = _aot(attacks.sgd_uap_epoch, *args_, **kw)
        # XLA's cost analysis counts a loop body once: FLOPs of one minibatch step times the steps.
        one = jax.jit(jax.value_and_grad(lambda v, xc, yc: attacks.uap_objective(
            apply_fn, None, params, v, xc, yc, jnp.ones(xc.shape[0]), f32(12.0))))
        sgd_flops = _flops(_aot(one, jnp.zeros(image_shape), set_x[:batch], set_y[:batch])[0])
        sgd_flops = None if sgd_flops is None else sgd_flops * nb

        def jfn():
            return attacks.sgd_uap(apply_fn, params, set_x, set_y, eps=eps, key=key, num_epochs=1,
                                   batch_size=batch)[0]

        _block(jfn())  # fill jit's cache (the compile time is the AOT figure above)
        if use_torch:
            tset, tlab = tr.to_nchw(set_x).to(dev), torch.from_numpy(np.asarray(set_y, np.int64)).to(dev)

        def make(variant):
            step = tf.sgd_step_variant(variant, tmodel)
            gen = torch.Generator().manual_seed(0)  # on the CPU: the same shuffles on every device and form
            return lambda: tr.sgd_uap_epoch(tmodel, torch.zeros(1, *tset.shape[1:], device=dev), tset, tlab, eps,
                                            alpha, batch, generator=gen, step_fn=step)

        refs, errors = torch_refs(NO_JACREV, make)
        bench.run("sgd_uap_epoch", jfn, refs, compile_s=compile_s, flops=sgd_flops, reps=slow_reps, warmup=0,
                  extra={"temp_bytes": _temp_bytes(compiled)}, errors=errors)

    # --- DeepFool-UAP pass --------------------------------------------------
    if "deepfool_uap_pass" in rows:
        dx, dy = set_x[:deepfool_size], set_y[:deepfool_size]
        clean = jnp.asarray(jacuap.metrics.predict(apply_fn, params, dx, batch_size=256), jnp.int32)
        f32 = lambda a: jnp.asarray(a, jnp.float32)
        args_ = (apply_fn, params, jnp.zeros(image_shape), dx, clean, key, f32(eps), f32(0.02), f32(eps))
        kw = dict(norm="linf", inner="deepfool", aggregate="mean", batch_size=batch, deepfool_max_iter=20,
                  inner_steps=10, num_classes=None)
        compiled, compile_s = _aot(attacks.deepfool_uap_pass, *args_, **kw)

        def jfn():
            return attacks.deepfool_uap(apply_fn, params, dx, dy, eps=eps, max_passes=1, target_fooling_rate=1.0,
                                        batch_size=batch, key=key)[0]

        _block(jfn())  # fill jit's cache (the compile time is the AOT figure above)
        # FLOPs of one DeepFool iteration on a minibatch (forward, K VJPs, forward); the pass's
        # count of iterations is the PyTorch reference's (same algorithm, same data).
        clipped = lambda p_, u: apply_fn(p_, jnp.clip(u, 0.0, 1.0))
        it_fn = jax.jit(lambda u: (jacobian.input_jacobian(clipped, params, u), clipped(params, u), clipped(params, u)))
        iter_flops = _flops(_aot(it_fn, dx[:batch])[0])
        counts: Dict[str, List[int]] = {}
        if use_torch:
            tset, tclean = tr.to_nchw(dx).to(dev), torch.from_numpy(np.asarray(clean, np.int64)).to(dev)
        make = lambda v: deepfool_ref(v, tmodel, tset, tclean, eps, batch, counts)
        refs, errors = torch_refs(TORCH_VARIANTS, make)
        row = bench.run("deepfool_uap_pass", jfn, refs, compile_s=compile_s, reps=slow_reps, warmup=0,
                        extra={"temp_bytes": _temp_bytes(compiled), "flops_per_iteration": iter_flops},
                        errors=errors)
        iters = _iterations_per_pass(counts)
        if iters is not None:
            row["iterations_per_pass"] = iters
            row["iterations_per_pass_by_variant"] = {v: statistics.mean(c) for v, c in counts.items() if c}
            row["flops"] = iter_flops * iters if iter_flops else None

    # --- CIFAR-size and ImageNet-size rows (benchmarks/speed_cifar.py) --------
    if any(r in rows for r in CIFAR_ROWS):
        from benchmarks import speed_cifar

        speed_cifar.run_rows(bench, rows, info, args, quick=quick, reps=reps, slow_reps=slow_reps,
                             torch_refs=torch_refs, dev=dev)

    # --- memory: compiled temp buffers at two set sizes --------------------------
    if not args.no_memory:
        half = max(set_size // 2, 2)
        info["memory"] = memory_check(apply_fn, params, ds, image_shape, min(batch, half), min(chunk, half),
                                      sizes=(half, set_size))
        for name, m in info["memory"].items():
            print(f"  memory {name:28s} temp bytes {m}", flush=True)

    # --- summary ------------------------------------------------------------
    peak = rate["peak"]
    print(f"\n{'row':32s} {'jacuap s':>10s} {'ref s':>10s} {'ratio':>7s} {'compile s':>9s} {'floor s':>9s}  reference")
    for name, row in bench.rows.items():
        floor = row["flops"] / peak if row.get("flops") else None
        row["floor_s"] = floor
        fmt = lambda v, w=10, d=4: f"{v:{w}.{d}f}" if isinstance(v, (int, float)) and v is not None else f"{'-':>{w}s}"
        print(f"{name:32s} {fmt(row['jacuap_s'])} {fmt(row['reference_s'])} {fmt(row.get('ratio'), 7, 2)} "
              f"{fmt(row['compile_s'], 9, 2)} {fmt(floor, 9, 4)}  {row['reference'] or '-'}")
    info["machine"]["loadavg_at_end"] = os.getloadavg()
    result = {**info, "rows": bench.rows}
    if out_path:
        _write_json(out_path, result)
        print(f"wrote {out_path}")
    return result


def _torch_refs(selected, allowed, make):
    """``({variant: callable}, {variant: error})`` for the ``selected`` forms this row has (``allowed``).

    ``make(variant)`` builds one form's zero-argument callable; a form that
    cannot even be built is an error string, not the end of the run.
    """
    refs, errors = {}, {}
    for variant in selected:
        if variant not in allowed:
            continue
        try:
            refs[variant] = make(variant)
        except Exception as exc:
            errors[variant] = _error_text(exc)
    return (refs or None), errors


def deepfool_ref(variant, tmodel, tset, tclean, eps, batch, counts):
    """One DeepFool-UAP pass in form ``variant``; the DeepFool iterations of each call go to ``counts[variant]``."""
    step = tf.deepfool_step_variant(variant, tmodel)
    gen = torch.Generator().manual_seed(0)  # the same shuffles in every form
    v0 = torch.zeros(1, *tset.shape[1:], device=tset.device)

    def run():
        before = tr.DEEPFOOL_ITERATIONS[0]
        out = tr.deepfool_uap_pass(tmodel, v0, tset, tclean, eps, batch, generator=gen, step_fn=step)
        counts.setdefault(variant, []).append(tr.DEEPFOOL_ITERATIONS[0] - before)
        return out

    return run


def _iterations_per_pass(counts) -> Optional[float]:
    """DeepFool iterations of one pass: the eager form's mean (every form runs the same algorithm)."""
    for variant in ("eager",) + tuple(counts):
        if counts.get(variant):
            return statistics.mean(counts[variant])
    return None


def _write_json(path: str, obj: Any) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    io.write_text_atomic(path, json.dumps(obj, indent=2))  # never a half-written file


def _best_torch_threads(tmodel, x, y) -> int:
    """The faster torch thread count (1 or all cores) on plain training steps.

    On a shared machine OpenMP's spinning threads can make all-core torch
    several times slower than one thread; the reference gets its best setting.
    """
    candidates = sorted({1, torch.get_num_threads()})
    opt = tr.make_optimizer(tmodel, lr=0.0)
    best = {}
    for _ in range(2):
        for n in candidates:
            torch.set_num_threads(n)
            tr.train_step(tmodel, opt, x, y)
            best[n] = min(best.get(n, float("inf")), min(_time(lambda: tr.train_step(tmodel, opt, x, y))
                                                         for _ in range(3)))
    return min(best, key=best.get)


def memory_check(apply_fn, params, ds, image_shape, batch, chunk, sizes):
    """XLA's temp-buffer bytes of each set kernel, compiled at two set sizes.

    The set itself is an argument (not counted); a kernel whose peak does not
    grow with the set shows the same temp bytes at both sizes.
    """
    f32 = lambda a: jnp.asarray(a, jnp.float32)
    key = jax.random.PRNGKey(0)
    ssn = jax.jit(jacobian.stacked_spectral_norm, static_argnums=0,
                  static_argnames=("num_iters", "batch_size", "method"))
    out: Dict[str, Dict[str, Optional[int]]] = {}
    for n in sizes:
        x = jax.ShapeDtypeStruct((n,) + image_shape, jnp.float32)
        y = jax.ShapeDtypeStruct((n,), jnp.int32)
        v = jnp.zeros(image_shape)
        kernels = {
            "stacked_spectral_norm_gram": lambda: _aot(ssn, apply_fn, params, x, key, batch_size=chunk,
                                                       method="gram")[0],
            "stacked_spectral_norm_power": lambda: _aot(ssn, apply_fn, params, x, key, num_iters=2,
                                                        batch_size=chunk, method="power")[0],
            "sgd_uap_epoch": lambda: _aot(attacks.sgd_uap_epoch, apply_fn, None, params, v, x, y, key, f32(0.1),
                                          f32(0.01), f32(12.0), norm="linf", batch_size=batch, targeted=False)[0],
            "deepfool_uap_pass": lambda: _aot(attacks.deepfool_uap_pass, apply_fn, params, v, x, y, key, f32(0.1),
                                              f32(0.02), f32(0.1), norm="linf", inner="deepfool", aggregate="mean",
                                              batch_size=batch, deepfool_max_iter=20, inner_steps=10,
                                              num_classes=None)[0],
        }
        for name, make in kernels.items():
            out.setdefault(name, {})[f"N={n}"] = _temp_bytes(make())
    return out


def _dense_reference(apply_fn, params, x, chunk: int) -> float:
    """``sigma_max(J_X)`` from exact Jacobian rows, Gram accumulated and diagonalised in float64."""
    jac_fn = jax.jit(jacobian.input_jacobian, static_argnums=0)
    d = math.prod(x.shape[1:])
    gram = np.zeros((d, d), np.float64)
    for start in range(0, x.shape[0], chunk):
        jac = np.asarray(jac_fn(apply_fn, params, x[start:start + chunk]), np.float64).reshape(-1, d)
        gram += jac.T @ jac
    return float(np.sqrt(max(np.linalg.eigvalsh(gram)[-1], 0.0)))


if __name__ == "__main__":
    main()
