"""A third PyTorch-to-JAX mechanism for issue 28: ONNX export + ``jaxonnxruntime``, against native torch and "convert".

    pip install -e '.[onnx]'        # onnx==1.23.2, jaxonnxruntime==0.3.0 (or pip install --target DIR, PYTHONPATH=DIR)
    python benchmarks/torch_bridge_onnx.py              # ~3-5 minutes on 2 CPU cores
    python benchmarks/torch_bridge_onnx.py --quick      # toy sizes (smoke test)

The network, the inputs, the rows and the checks are ``benchmarks/torch_bridge.py``'s
(its ``make_torch_model``, ``Problem``, ``torch_column``, ``jax_column``,
``run_row``, ``check_row``), with three columns:

* ``torch``: native eager PyTorch (``Normalized(net)``: pixels in [0, 1], NCHW), the reference;
* ``convert``: ``jacuap.from_torch(..., mechanism="convert")``, the torch.fx-converted pure JAX function;
* ``onnx``: the same ``Normalized(net)`` exported by ``torch.onnx.export(..., dynamo=False)`` (the legacy
  TorchScript exporter, opset 17, dynamic batch axis; in eval mode it folds BatchNorm into the convolutions),
  loaded by ``onnx`` and turned into a JAX function by ``jaxonnxruntime.call_onnx.call_onnx_model``
  (``model_func(params, [x_nchw]) -> [logits]``, ``params`` the ONNX initializers as a dict), wrapped as
  ``apply_fn(params, x_nhwc)`` with a transpose to NCHW.

Before timing, the ``onnx`` function's logits are compared with native torch's,
and ``jit``, ``grad`` (VJP), ``jvp``, ``vmap`` (per example, under a batch of
one) and a batch size other than the sample's are each tried on a tiny batch
and recorded.  Timing as torch_bridge.py (each JAX column compiled ahead of
time, run once and checked, then repetitions interleaved torch, convert,
onnx, ...; median and min; ratio column / torch), with fewer repetitions by
default (9 / 5 / 2).  The background benchmark jobs of this checkout
(``benchmarks/reproduce.py``, ``benchmarks/attack_zoo.py``) are paused
(SIGSTOP) for the run and always resumed (SIGCONT) afterwards; the load
average is recorded at the start and the end.

Found (2 cores, batch 128): onnx matches convert on ``input_jacobian`` (1.05x torch) but is ~19x torch on
``sgd_uap_step`` and ``deepfool_uap_pass``: the jaxonnxruntime function is ~20x slower inside a ``lax.scan`` /
while loop than under plain jit (see the notes in the results).

Results: ``benchmarks/results/torch_bridge_onnx.json`` (``--out``) and a Markdown table beside it (``.md``).
"""

from __future__ import annotations

import argparse
import collections
import copy
import io as _io
import os
import signal
import subprocess
import sys
import time
import traceback
from typing import Any, Callable, Dict, List, Optional, Tuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from jacuap import io  # noqa: E402
from benchmarks import torch_bridge as tb  # noqa: E402

COLUMNS = ("torch", "convert", "onnx")
ROWS = tb.ROWS
DEFAULT_REPS = {"sgd_uap_step": 9, "input_jacobian": 5, "deepfool_uap_pass": 2}
QUICK_REPS = {"sgd_uap_step": 2, "input_jacobian": 1, "deepfool_uap_pass": 1}
OPSET = 17
BACKGROUND = "benchmarks/reproduce.py|benchmarks/attack_zoo.py"


# ---------------------------------------------------------------------------
# The ONNX mechanism.
# ---------------------------------------------------------------------------


def onnx_from_torch(native: torch.nn.Module, batch: int) -> Tuple[Callable, Any, Dict[str, Any]]:
    """``(apply_fn, params, info)``: ``native`` (NCHW pixels -> logits) through ONNX and jaxonnxruntime.

    ``apply_fn(params, x)`` takes NHWC pixels ``(B, 32, 32, 3)``.  ``info``: versions, op counts, timings.
    """
    import onnx
    import jaxonnxruntime
    from jaxonnxruntime import call_onnx

    info: Dict[str, Any] = {"onnx": onnx.__version__,
                            "jaxonnxruntime": getattr(jaxonnxruntime, "__version__", None) or tb._pkg_version(
                                "jaxonnxruntime"),
                            "opset": OPSET, "exporter": "torch.onnx.export(dynamo=False), dynamic batch axis"}
    h, w, c = tb.IMAGE_SHAPE
    buf = _io.BytesIO()
    start = time.perf_counter()
    torch.onnx.export(native, torch.zeros((batch, c, h, w)), buf, dynamo=False, opset_version=OPSET,
                      input_names=["x"], output_names=["logits"],
                      dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}})
    info["export_s"] = time.perf_counter() - start
    model = onnx.load_from_string(buf.getvalue())
    onnx.checker.check_model(model)
    info["onnx_bytes"] = len(buf.getvalue())
    info["op_counts"] = dict(collections.Counter(n.op_type for n in model.graph.node))
    sample = np.zeros((batch, c, h, w), np.float32)
    start = time.perf_counter()
    model_func, params = call_onnx.call_onnx_model(model, [sample])
    info["convert_s"] = time.perf_counter() - start
    params = {k: jnp.asarray(v) for k, v in params.items()}
    info["num_initializers"] = len(params)

    def apply_fn(params, x):
        return model_func(params, [jnp.transpose(x, (0, 3, 1, 2))])[0]

    return apply_fn, params, info


def transforms_check(apply_fn: Callable, params: Any, x: np.ndarray, batch: int) -> Dict[str, str]:
    """``jit``, ``grad`` (VJP), ``jvp``, ``vmap`` and another batch size through ``apply_fn``, on 2 examples."""
    xs = jnp.asarray(x[:2])
    tries = {
        "jit": lambda: jax.jit(apply_fn)(params, xs),
        "grad (VJP)": lambda: jax.grad(lambda z: apply_fn(params, z).sum())(xs),
        "jvp": lambda: jax.jvp(lambda z: apply_fn(params, z), (xs,), (jnp.ones_like(xs),))[1],
        "vmap": lambda: jax.vmap(lambda z: apply_fn(params, z[None])[0])(xs),
        "jacrev per example (vmap of vjp)": lambda: jax.vmap(jax.jacrev(lambda z: apply_fn(params, z[None])[0]))(xs),
        f"batch 2 (converted at batch {batch})": lambda: apply_fn(params, xs),
    }
    eager = np.asarray(apply_fn(params, xs))
    out: Dict[str, str] = {}
    for name, fn in tries.items():
        try:
            r = jax.tree_util.tree_map(lambda a: np.asarray(a), fn())
            shapes = [tuple(a.shape) for a in jax.tree_util.tree_leaves(r)]
            text = f"works (output {shapes[0] if len(shapes) == 1 else shapes})"
            if name in ("jit", "vmap"):
                text += f", max abs diff from eager {tb._max_abs(r, eager):.2g}"
            if name.startswith("grad"):  # against the same gradient by finite differences along one direction
                d = np.random.default_rng(1).normal(size=xs.shape).astype(np.float32)
                e = 1e-2
                fd = (float(apply_fn(params, xs + e * d).sum()) - float(apply_fn(params, xs - e * d).sum())) / (2 * e)
                text += f", <grad, d> {float(np.sum(r * d)):.5g} vs central difference {fd:.5g}"
            out[name] = text
        except Exception as exc:
            out[name] = f"FAILS: {tb._reason(exc)}"
        print(f"  {name}: {out[name]}", flush=True)
    return out


# ---------------------------------------------------------------------------
# Pausing the background jobs.
# ---------------------------------------------------------------------------


def _background_pids() -> List[int]:
    try:
        found = subprocess.run(["pgrep", "-f", BACKGROUND], capture_output=True, text=True).stdout.split()
    except FileNotFoundError:
        return []
    return [int(p) for p in found if int(p) != os.getpid()]


def _signal_all(pids: List[int], sig: int) -> List[int]:
    done = []
    for pid in pids:
        try:
            os.kill(pid, sig)
            done.append(pid)
        except ProcessLookupError:
            pass
    return done


# ---------------------------------------------------------------------------
# The run.
# ---------------------------------------------------------------------------


def markdown(result: Dict[str, Any]) -> str:
    cfg, machine, onnx_info = result["config"], result["machine"], result["onnx"]
    cols = [c for c in COLUMNS if c != "torch"]
    lines = [
        "# PyTorch -> JAX through ONNX (jaxonnxruntime) against native PyTorch and from_torch 'convert' (CPU)",
        "",
        f"Same network, inputs, rows and checks as `torch_bridge.md` (ResNet-20-size CIFAR net, "
        f"{cfg['blocks_per_stage']} BasicBlocks per stage, BatchNorm eval, batch {cfg['batch']}, 32x32x3, 10 "
        f"classes, seed 0), produced by `benchmarks/torch_bridge_onnx.py`. Seconds per computation on one "
        f"batch: median (min) over the reps, columns interleaved; ratio = column / torch (median; min in "
        f"brackets). torch threads {machine['torch_threads']}, XLA default pool ({machine['cpu_count']} cores). "
        f"Background jobs paused for the run: {machine['paused_pids'] or 'none found'}. Load average at start "
        f"{tb._load(machine['loadavg_at_start'])}, at end {tb._load(machine['loadavg_at_end'])}; the whole run "
        f"{result.get('wall_s', 0):.0f} s." + (" **--quick: toy sizes, not a measurement.**" if cfg["quick"] else ""),
        "",
        "| row | reps | torch s | " + " | ".join(f"{c} s | {c}/torch" for c in cols) + " |",
        "|---|---:|---:|" + "---:|---:|" * len(cols),
    ]
    for row, r in result["rows"].items():
        cells = [row, str(r["reps"]), tb._cell(r["columns"]["torch"])]
        for c in cols:
            cells += [tb._cell(r["columns"][c]), tb._ratio_cell(r["columns"][c])]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Compile (ahead of time, seconds): " + "; ".join(
        f"{row}: " + ", ".join(f"{c} {r['columns'][c]['compile_s']:.1f}" for c in cols
                                if r["columns"][c].get("compile_s") is not None)
        for row, r in result["rows"].items()) + "."]
    lines += ["", "## The ONNX mechanism", "",
              f"- onnx {onnx_info.get('onnx')}, jaxonnxruntime {onnx_info.get('jaxonnxruntime')}; "
              f"{onnx_info.get('exporter')}, opset {onnx_info.get('opset')}; export "
              f"{onnx_info.get('export_s', float('nan')):.2f} s, jaxonnxruntime conversion "
              f"{onnx_info.get('convert_s', float('nan')):.2f} s (from_torch convert: "
              f"{cfg['setup_s'].get('convert', float('nan')):.2f} s).",
              f"- ONNX graph ops: {onnx_info.get('op_counts')} (the legacy exporter folds eval-mode BatchNorm "
              f"into the convolutions).",
              f"- Logits against native torch (batch {cfg['batch']}): max abs diff "
              f"{tb._short(result['logits_check'].get('onnx_max_abs_diff'))} (convert: "
              f"{tb._short(result['logits_check'].get('convert_max_abs_diff'))}; max |logit| "
              f"{tb._short(result['logits_check'].get('max_abs_logit'))}); argmax agreement "
              f"{tb._short(result['logits_check'].get('onnx_argmax_agree'))}.",
              "- Transforms through the jaxonnxruntime function (2 examples):"]
    lines += [f"  - {k}: {v}" for k, v in result["transforms"].items()]
    lines += ["", "## Checks against native PyTorch (before timing; the JSON has every number)", ""]
    for row, r in result["rows"].items():
        for c in cols:
            col = r["columns"][c]
            if col.get("check"):
                lines.append(f"- {row}, {c}: {tb._check_text(row, col['check'])}")
    lines += ["", "## n/a and notes", ""]
    for row, r in result["rows"].items():
        for c in COLUMNS:
            col = r["columns"][c]
            if col.get("na"):
                lines.append(f"- {row}, {c}: n/a ({col['na']})")
            if col.get("note"):
                lines.append(f"- {row}, {c}: {col['note']}")
    lines += [f"- {note}" for note in result["notes"]]
    lines.append("")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="toy sizes (batch 8, one block per stage, 1-2 reps)")
    p.add_argument("--reps", type=int, default=None, help="timed repetitions of every row (default 9 / 5 / 2)")
    p.add_argument("--batch", type=int, default=None, help="inputs per batch (default 128; --quick 8)")
    p.add_argument("--slow-s", type=float, default=60.0, help="a column slower than this on its first run is not "
                                                              "repeated (default 60)")
    p.add_argument("--no-pause", action="store_true", help="do not SIGSTOP the background benchmark jobs")
    p.add_argument("--out", default=None, help="JSON output (default benchmarks/results/torch_bridge_onnx.json; "
                                               "the .md beside it; '' for none)")
    args = p.parse_args(argv)
    quick = args.quick
    batch = args.batch or (8 if quick else 128)
    blocks = 1 if quick else 3
    max_iter = 3 if quick else 20
    reps = {row: args.reps or (QUICK_REPS if quick else DEFAULT_REPS)[row] for row in ROWS}
    out_path = args.out if args.out is not None else os.path.join(os.path.dirname(__file__), "results",
                                                                  "torch_bridge_onnx.json")

    paused: List[int] = []
    old_term = signal.getsignal(signal.SIGTERM)

    def _on_term(signum, frame):  # turn SIGTERM into an exception so the finally below resumes the jobs
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _on_term)
    try:
        if not args.no_pause:
            paused = _signal_all(_background_pids(), signal.SIGSTOP)
            print(f"paused background jobs {paused}", flush=True)
        return _run(args, quick, batch, blocks, max_iter, reps, out_path, paused)
    finally:
        resumed = _signal_all(paused, signal.SIGCONT)
        if paused:
            print(f"resumed background jobs {resumed}", flush=True)
        signal.signal(signal.SIGTERM, old_term)


def _run(args, quick, batch, blocks, max_iter, reps, out_path, paused) -> Dict[str, Any]:
    wall_start = time.perf_counter()
    load_start = os.getloadavg()
    torch.set_num_threads(os.cpu_count() or 1)
    machine = {**tb._versions(), "torch_threads": torch.get_num_threads(), "loadavg_at_start": load_start,
               "paused_pids": paused}
    print(f"torch_bridge_onnx: batch {batch}, {blocks} blocks/stage, jax {jax.__version__}, torch "
          f"{torch.__version__} with {torch.get_num_threads()} threads; load {tb._load(load_start)}", flush=True)

    pb = tb.Problem(batch)
    net = tb.make_torch_model(blocks)
    native = tb.Normalized(copy.deepcopy(net), tb.CIFAR_MEAN, tb.CIFAR_STD).eval()
    with torch.no_grad():
        ref_logits = native(pb.xt).numpy()
    pb.clean = ref_logits.argmax(1).astype(np.int32)

    runs: Dict[str, Dict[str, tb.Run]] = {"torch": tb.torch_column(native, pb, max_iter)}
    ctx: Dict[str, Any] = {"na": {c: {} for c in COLUMNS}, "models": {}, "problem": pb, "native": native,
                           "max_iter": max_iter, "torch_iterations": None, "ref64": {}}
    setup_s: Dict[str, Optional[float]] = {}
    logits_check: Dict[str, Any] = {"max_abs_logit": float(np.max(np.abs(ref_logits)))}

    from_torch = tb._from_torch()
    start = time.perf_counter()
    conv_apply, conv_params = from_torch(copy.deepcopy(net), tb.IMAGE_SHAPE, mechanism="convert",
                                         torch_layout="NCHW", mean=tb.CIFAR_MEAN, std=tb.CIFAR_STD)
    setup_s["convert"] = time.perf_counter() - start
    runs["convert"] = tb.jax_column(conv_apply, conv_params, pb, max_iter)
    ctx["models"]["convert"] = (conv_apply, conv_params, None)
    logits_check["convert_max_abs_diff"] = tb._max_abs(conv_apply(conv_params, jnp.asarray(pb.x)), ref_logits)

    onnx_info: Dict[str, Any] = {}
    transforms: Dict[str, str] = {}
    try:
        start = time.perf_counter()
        onnx_apply, onnx_params, onnx_info = onnx_from_torch(copy.deepcopy(native), batch)
        setup_s["onnx"] = time.perf_counter() - start
        logits = np.asarray(onnx_apply(onnx_params, jnp.asarray(pb.x)))
        logits_check["onnx_max_abs_diff"] = tb._max_abs(logits, ref_logits)
        logits_check["onnx_argmax_agree"] = float(np.mean(logits.argmax(1) == pb.clean))
        print(f"onnx: export {onnx_info['export_s']:.2f}s, conversion {onnx_info['convert_s']:.2f}s, ops "
              f"{onnx_info['op_counts']}; logits max abs diff vs torch {logits_check['onnx_max_abs_diff']:.3g} "
              f"(convert {logits_check['convert_max_abs_diff']:.3g})", flush=True)
        print("transforms through the jaxonnxruntime function:", flush=True)
        transforms = transforms_check(onnx_apply, onnx_params, pb.x, batch)
        runs["onnx"] = tb.jax_column(onnx_apply, onnx_params, pb, max_iter)
        ctx["models"]["onnx"] = (onnx_apply, onnx_params, None)
    except Exception as exc:  # the whole mechanism failed
        reason = f"ONNX export/conversion failed: {tb._reason(exc)}"
        traceback.print_exc()
        ctx["na"]["onnx"] = {row: reason for row in ROWS}
        onnx_info["error"] = reason

    tb.COLUMNS = COLUMNS  # run_row iterates over the module's COLUMNS: torch, convert, onnx
    rows_out: Dict[str, Any] = {}
    for row in ROWS:
        print(f"\n{row} ({reps[row]} reps)", flush=True)
        rows_out[row] = tb.run_row(row, {c: r[row] for c, r in runs.items() if row not in ctx["na"][c]},
                                   reps[row], args.slow_s, ctx)

    notes = [
        "onnx: jaxonnxruntime converts each ONNX node to a jax.jit-ed JAX function at conversion time (tracing "
        "the graph once at the sample input) and its model_func chains them in Python; under jacuap's jit the "
        "whole chain is traced into one XLA program, so it is a pure JAX function like 'convert' (no host "
        "callback); it differs from 'convert' in the graph it starts from (BatchNorm folded by the exporter).",
        "checks and timing protocol: torch_bridge.py's (run_row / check_row), fewer reps; DeepFool iterations "
        "counted in one more untimed run.",
    ]
    load_end = os.getloadavg()
    machine["loadavg_at_end"] = load_end
    result = {
        "machine": machine,
        "config": {"batch": batch, "blocks_per_stage": blocks, "num_classes": tb.NUM_CLASSES,
                   "deepfool_max_iter": max_iter, "rows": list(ROWS), "columns": list(COLUMNS), "reps": reps,
                   "slow_s": args.slow_s, "quick": quick, "setup_s": setup_s,
                   "argv": sys.argv[1:]},
        "wall_s": time.perf_counter() - wall_start,
        "onnx": onnx_info,
        "logits_check": logits_check,
        "transforms": transforms,
        "rows": rows_out,
        "notes": notes,
    }
    print(f"\nload average at start {tb._load(load_start)}, at end {tb._load(load_end)}")
    text = markdown(result)
    print("\n" + text)
    if out_path:
        os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
        io.write_json_atomic(out_path, result)
        md_path = os.path.splitext(out_path)[0] + ".md"
        io.write_text_atomic(md_path, text)
        print(f"wrote {out_path} and {md_path}")
    return result


if __name__ == "__main__":
    main()
