"""The convolution-level evidence behind benchmarks/SPEED.md, in one run.

    python benchmarks/conv_ops.py            # ~3 minutes on 2 CPU cores
    python benchmarks/conv_ops.py --quick    # seconds (fewer repetitions, smaller sets)

Four small experiments on the Fashion-MNIST CNN's shapes (batch 128), each
printed as a markdown table and saved to ``benchmarks/results/conv_ops.json``:

1. ``per_op``: each convolution of the CNN and its two VJPs, XLA (through
   ``jacuap.models.conv``) against torch (``conv2d``, ``conv2d_input``,
   ``conv2d_weight``), with GFLOP/s; each op timed in its own block (torch's
   spinning OpenMP threads slow an interleaved XLA call).  Skipped without
   torch.
2. ``loop_forms``: SGD-UAP-like steps (forward + input VJP) over 8
   minibatches, as one ``lax.scan`` and as a Python loop over a jitted step,
   with the model on ``jax.lax`` convolutions and on ``jacuap.conv``.
3. ``forward_mode_price``: a jitted power iteration (``spectral_norm``,
   20 iterations: JVPs inside a loop), lax vs jacuap.conv.
4. ``exact_penalty_forms``: the gradient of the exact ``mean ||J||_F^2`` with
   the K one-hot VJPs as a Python loop (jacuap), as ``vmap`` over the
   cotangents, and as one VJP of a K-times tiled batch.

Medians of interleaved repetitions; nothing here is asserted by a test.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import time
from typing import Callable, Dict, List

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax import lax  # noqa: E402

import jacuap  # noqa: E402
from jacuap import io, jacobian, models  # noqa: E402
from jacuap.models import conv  # noqa: E402

try:
    import torch  # noqa: E402
except ImportError:  # the bench extra is optional
    torch = None

DN = ("NHWC", "HWIO", "NHWC")


def _medians(fns: Dict[str, Callable[[], object]], reps: int, interleave: bool = True) -> Dict[str, float]:
    """Seconds per call: warm up each, then interleave the repetitions (or run each in a block)."""
    if not interleave:
        return {name: _medians({name: fn}, reps)[name] for name, fn in fns.items()}
    for fn in fns.values():
        jax.block_until_ready(fn())
    times: Dict[str, List[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            start = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def per_op(reps: int) -> List[Dict[str, object]]:
    rows = []
    for label, (hw, c_in, c_out) in {"conv0 (1->32, 28x28)": (28, 1, 32), "conv1 (32->64, 14x14)": (14, 32, 64)}.items():
        keys = jax.random.split(jax.random.PRNGKey(0), 3)
        x = jax.random.normal(keys[0], (128, hw, hw, c_in))
        w = 0.1 * jax.random.normal(keys[1], (3, 3, c_in, c_out))
        dy = jax.random.normal(keys[2], (128, hw, hw, c_out))
        f = lambda x, w: conv.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=DN)
        fwd = jax.jit(f)
        grad_x = jax.jit(lambda dy: jax.vjp(lambda x_: f(x_, w), x)[1](dy)[0])
        grad_w = jax.jit(lambda dy: jax.vjp(lambda w_: f(x, w_), w)[1](dy)[0])
        f_lax = lambda x, w: lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=DN)
        grad_x_lax = jax.jit(lambda dy: jax.vjp(lambda x_: f_lax(x_, w), x)[1](dy)[0])
        tx = torch.from_numpy(np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2)))
        tw = torch.from_numpy(np.ascontiguousarray(np.asarray(w).transpose(3, 2, 0, 1)))
        tdy = torch.from_numpy(np.ascontiguousarray(np.asarray(dy).transpose(0, 3, 1, 2)))
        t = _medians({
            "xla forward": lambda: fwd(x, w),
            "torch forward": lambda: torch.nn.functional.conv2d(tx, tw, padding=1),
            "xla input-gradient": lambda: grad_x(dy),
            "xla input-gradient, lax conv": lambda: grad_x_lax(dy),
            "torch input-gradient": lambda: torch.nn.grad.conv2d_input(tx.shape, tw, tdy, padding=1),
            "xla weight-gradient": lambda: grad_w(dy),
            "torch weight-gradient": lambda: torch.nn.grad.conv2d_weight(tx, tw.shape, tdy, padding=1),
        }, reps, interleave=False)  # interleaved, torch's spinning OpenMP threads slow XLA's next call
        flops = 2 * 128 * hw * hw * c_in * c_out * 9
        for op in ("forward", "input-gradient", "weight-gradient"):
            a, b = t[f"xla {op}"], t[f"torch {op}"]
            rows.append({"op": f"{label} {op}", "xla_ms": 1e3 * a, "torch_ms": 1e3 * b,
                         "xla_gflops": flops / a / 1e9, "torch_gflops": flops / b / 1e9, "ratio": a / b})
        rows.append({"op": f"{label} input-gradient with lax conv", "xla_ms": 1e3 * t["xla input-gradient, lax conv"],
                     "torch_ms": 1e3 * t["torch input-gradient"],
                     "xla_gflops": flops / t["xla input-gradient, lax conv"] / 1e9,
                     "torch_gflops": flops / t["torch input-gradient"] / 1e9,
                     "ratio": t["xla input-gradient, lax conv"] / t["torch input-gradient"]})
    return rows


def _cnn(ds, conv_fn):
    model = models.create_model("cnn", ds.num_classes, ds.mean, ds.std).clone(conv_general_dilated=conv_fn)
    return models.make_apply_fn(model), models.init_params(model, jax.random.PRNGKey(0), tuple(ds.image_shape))


def loop_forms(ds, reps: int, steps: int = 8, batch: int = 128) -> Dict[str, float]:
    x = jnp.asarray(ds.test_images[: steps * batch])
    y = jnp.asarray(ds.test_labels[: steps * batch])
    fns = {}
    for name, conv_fn in (("lax", lax.conv_general_dilated), ("jacuap.conv", conv.conv_general_dilated)):
        apply_fn, params = _cnn(ds, conv_fn)

        def update(p, v, xb, yb, apply_fn=apply_fn):
            loss = lambda u: jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
                apply_fn(p, jnp.clip(xb + u, 0.0, 1.0)), yb))
            return v + 1e-3 * jnp.sign(jax.grad(loss)(v))

        @jax.jit
        def scan(p, v, update=update):
            body = lambda v, i: (update(p, v, lax.dynamic_slice_in_dim(x, i * batch, batch),
                                        lax.dynamic_slice_in_dim(y, i * batch, batch)), None)
            return lax.scan(body, v, jnp.arange(steps))[0]

        step = jax.jit(update)

        def python_loop(p, v, step=step):
            for i in range(steps):
                v = step(p, v, x[i * batch:(i + 1) * batch], y[i * batch:(i + 1) * batch])
            return v

        v0 = jnp.zeros(x.shape[1:])
        fns[f"{name}, lax.scan"] = functools.partial(scan, params, v0)
        fns[f"{name}, Python loop"] = functools.partial(python_loop, params, v0)
    return _medians(fns, reps)


def forward_mode_price(ds, reps: int) -> Dict[str, float]:
    x = jnp.asarray(ds.test_images[:128])
    fns = {}
    for name, conv_fn in (("lax", lax.conv_general_dilated), ("jacuap.conv", conv.conv_general_dilated)):
        apply_fn, params = _cnn(ds, conv_fn)
        power = jax.jit(lambda p, x, f=apply_fn: jacobian.spectral_norm(f, p, x, jax.random.PRNGKey(0), num_iters=20, method="power"))
        fns[f"{name}, spectral_norm power x20 (jit)"] = functools.partial(power, params, x)
    return _medians(fns, reps)


def exact_penalty_forms(ds, reps: int) -> Dict[str, float]:
    x = jnp.asarray(ds.train_images[:128])
    apply_fn, params = _cnn(ds, conv.conv_general_dilated)
    k = ds.num_classes

    def python_loop(p):
        return jnp.mean(jacobian.logits_and_frobenius_sq(apply_fn, p, x)[1])

    def vmap_cotangents(p):
        logits, vjp = jax.vjp(lambda u: apply_fn(p, u), x)
        rows = jax.vmap(lambda e: vjp(jnp.broadcast_to(e, logits.shape))[0])(jnp.eye(k, dtype=logits.dtype))
        return jnp.mean(jnp.sum(jnp.square(rows.reshape(k, x.shape[0], -1)), axis=(0, 2)))

    def tiled_batch(p):
        logits, vjp = jax.vjp(lambda u: apply_fn(p, u), jnp.tile(x, (k, 1, 1, 1)))
        rows = vjp(jnp.repeat(jnp.eye(k, dtype=logits.dtype), x.shape[0], axis=0))[0]
        return jnp.mean(jnp.sum(jnp.square(rows.reshape(k, x.shape[0], -1)), axis=(0, 2)))

    fns = {}
    for name, fn in (("K VJPs, Python loop (jacuap)", python_loop), ("vmap over the K cotangents", vmap_cotangents),
                     ("one VJP of a K-times tiled batch", tiled_batch)):
        fns[name] = functools.partial(jax.jit(jax.grad(fn)), params)
    values = {name: float(jax.jit(fn)(params)) for name, fn in (("loop", python_loop), ("vmap", vmap_cotangents))}
    assert abs(values["loop"] - values["vmap"]) <= 1e-4 * abs(values["loop"]), values
    return _medians(fns, reps)


def _table(title: str, result: Dict[str, float]) -> None:
    print(f"\n{title}\n\n| form | s |\n|---|---:|")
    for name, seconds in result.items():
        print(f"| {name} | {seconds:.4f} |")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="2 repetitions, smaller loops (the smoke test)")
    p.add_argument("--dataset", default=None, help="default fashion_mnist (digits with --quick)")
    p.add_argument("--out", default=None, help="JSON output (default benchmarks/results/conv_ops.json; '' for none)")
    args = p.parse_args(argv)
    reps = 2 if args.quick else 9
    ds = jacuap.load_dataset(args.dataset or ("digits" if args.quick else "fashion_mnist"))
    if torch is not None:
        torch.set_num_threads(os.cpu_count() or 1)
    result = {"machine": {"jax": jax.__version__, "backend": jax.default_backend(), "cpu_count": os.cpu_count(),
                          "torch": None if torch is None else torch.__version__, "loadavg": os.getloadavg()},
              "dataset": args.dataset or ("digits" if args.quick else "fashion_mnist")}
    if torch is not None and not args.quick:
        result["per_op"] = per_op(reps)
        print("| op | XLA (jacuap.conv) ms (GFLOP/s) | torch ms (GFLOP/s) | XLA/torch |\n|---|---:|---:|---:|")
        for r in result["per_op"]:
            print(f"| {r['op']} | {r['xla_ms']:.2f} ({r['xla_gflops']:.0f}) | {r['torch_ms']:.2f} "
                  f"({r['torch_gflops']:.0f}) | {r['ratio']:.2f} |")
    result["loop_forms"] = loop_forms(ds, reps, steps=2 if args.quick else 8, batch=32 if args.quick else 128)
    _table("SGD-UAP-like steps (forward + input VJP) over 8 minibatches of 128 (--quick: 2 of 32)",
           result["loop_forms"])
    result["forward_mode_price"] = forward_mode_price(ds, reps)
    _table("JVPs inside a loop", result["forward_mode_price"])
    result["exact_penalty_forms"] = exact_penalty_forms(ds, reps)
    _table("gradient of the exact mean ||J||_F^2, batch 128", result["exact_penalty_forms"])
    out = args.out if args.out is not None else os.path.join(os.path.dirname(__file__), "results", "conv_ops.json")
    if out:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        io.write_text_atomic(out, json.dumps(result, indent=2))  # never a half-written file
        print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
