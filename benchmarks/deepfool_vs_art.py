"""DeepFool-UAP per pass: jacuap's batched variants against ART's per-sample UniversalPerturbation.

    python benchmarks/deepfool_vs_art.py                      # trains a Fashion-MNIST CNN for 1 epoch first
    python benchmarks/deepfool_vs_art.py --workdir RUN        # reuses (or trains into) a train.py workdir
    python benchmarks/deepfool_vs_art.py --quick              # digits, tiny sizes (the smoke test)

Same weights on both sides: the jacuap ``cnn`` is copied into
``benchmarks/torch_reference.TorchCNN`` (the clean predictions of both
models are compared and reported) and wrapped in ART's
``PyTorchClassifier(clip_values=(0, 1))``.  ART runs
``UniversalPerturbation(attacker="deepfool", eps, norm=np.inf, max_iter=1,
delta=0.0)`` on the crafting inputs: one pass over them in random order, per
sample (ART's DeepFool is the l2 DeepFool with its defaults: 100 iterations,
overshoot 1e-6; ``v <- P_eps(clip(x_i + v + r_i) - x_i)`` when ``r_i`` flips
the label).  ``delta`` is ART's "desired accuracy": it stops once its fooling
rate on the crafting set reaches ``1 - delta``; ``delta=0.0`` never stops
early, and ``max_iter=1`` caps it at one pass.  ``y`` is not passed, so ART,
like jacuap, attacks the model's clean predictions.

jacuap runs ``attacks.deepfool_uap(..., max_passes=1)`` in several variants
(aggregate, batch size, inner step).  Every UAP is scored by
``jacuap.metrics.universal_evasion_rate`` on the jacuap model, on held-out
test inputs disjoint from the crafting ones.  Each attack runs once; the
order interleaves ART among the jacuap variants, and ``os.getloadavg()`` is
recorded around every row (the machine may be shared).  jacuap's pass is
compiled ahead of time first (``compile_s``, reported beside the seconds;
the timed ``deepfool_uap`` call then finds it in jit's cache).  PyTorch runs
with ``--torch-threads`` (default 1: on a shared 2-core machine all-core
torch was measured 10-30x slower per ART DeepFool call).

Results go to ``benchmarks/results/deepfool_vs_art.json`` (``--out``),
rewritten after every row; a markdown table is printed at the end.
Requires the ``bench`` extra (torch and adversarial-robustness-toolbox).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import jacuap  # noqa: E402
from jacuap import attacks, configs, io, metrics  # noqa: E402
from jacuap.train import checkpoints, train_and_evaluate  # noqa: E402

# name -> deepfool_uap keywords (max_passes=1 is added); "default" is deepfool_uap's defaults.
VARIANTS: Dict[str, Dict[str, Any]] = {
    "default": {},
    "mean_b32": {"aggregate": "mean", "batch_size": 32},
    "mean_b8": {"aggregate": "mean", "batch_size": 8},
    "mean_b1": {"aggregate": "mean", "batch_size": 1},
    "seq_b128": {"aggregate": "sequential", "batch_size": 128},
    "seq_b32": {"aggregate": "sequential", "batch_size": 32},
    "seq_b8": {"aggregate": "sequential", "batch_size": 8},
    "seq_b1": {"aggregate": "sequential", "batch_size": 1},
}


def _load() -> List[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _write_json(path: str, obj: Any) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    io.write_text_atomic(path, json.dumps(obj, indent=2))


def _model(args) -> checkpoints.RestoredModel:
    """The workdir's model, training it first (``num_epochs`` of the dataset's config) if it has none."""
    workdir = args.workdir or tempfile.mkdtemp(prefix="deepfool_vs_art_")
    if checkpoints.latest_step(workdir) if os.path.isdir(workdir) else None:
        print(f"reusing {workdir}", flush=True)
    else:
        config = configs.get_config(args.dataset)
        configs.override(config, num_epochs=args.epochs, jr_lambda=args.jr_lambda, eval_num_inputs=100,
                         progress=False, model="cnn")
        start = time.perf_counter()
        print(f"training {args.dataset} cnn, {args.epochs} epoch(s), jr_lambda {args.jr_lambda} in {workdir}",
              flush=True)
        summary = train_and_evaluate(config, workdir)
        print(f"trained in {time.perf_counter() - start:.0f} s; test accuracy "
              f"{summary.get('test_accuracy', summary.get('accuracy'))}", flush=True)
    restored = checkpoints.restore_model(workdir)
    restored.meta["workdir"] = workdir
    return restored


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="digits, 64 crafting / 128 test inputs (seconds)")
    p.add_argument("--workdir", default=None, help="a train.py workdir to reuse or train into (default: a temp dir)")
    p.add_argument("--dataset", default=None, help="training dataset when training (default fashion_mnist)")
    p.add_argument("--epochs", type=int, default=1, help="training epochs when training (default 1)")
    p.add_argument("--jr-lambda", type=float, default=0.0, help="training jr_lambda (default 0: a plain CNN)")
    p.add_argument("--eps", type=float, default=0.2)
    p.add_argument("--n-craft", type=int, default=None, help="crafting inputs (default 1000)")
    p.add_argument("--n-eval", type=int, default=None, help="held-out test inputs (default 2000)")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"jacuap variants, from {list(VARIANTS)}")
    p.add_argument("--no-art", action="store_true", help="skip ART")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--torch-threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    p.add_argument("--out", default=None, help="JSON output (default benchmarks/results/deepfool_vs_art.json)")
    args = p.parse_args(argv)
    args.dataset = args.dataset or ("digits" if args.quick else "fashion_mnist")
    n_craft = args.n_craft or (64 if args.quick else 1000)
    n_eval = args.n_eval or (128 if args.quick else 2000)
    variants = [v for v in args.variants.split(",") if v]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        p.error(f"unknown variants {sorted(unknown)}; choose from {list(VARIANTS)}")
    out_path = args.out if args.out is not None else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "results", "deepfool_vs_art.json")

    import torch
    from art.attacks.evasion import UniversalPerturbation
    from art.estimators.classification import PyTorchClassifier
    import art

    torch.set_num_threads(args.torch_threads)
    from benchmarks import torch_reference as tr

    restored = _model(args)
    apply_fn, params = restored.apply_fn, restored.params
    spec = restored.meta["model_spec"]
    ds = jacuap.load_dataset(restored.config.dataset)
    if len(ds.test_images) < n_craft + n_eval:
        p.error(f"{ds.name} has {len(ds.test_images)} test inputs; need n_craft + n_eval = {n_craft + n_eval}")
    craft_x = ds.test_images[:n_craft]
    eval_x, eval_y = ds.test_images[n_craft:n_craft + n_eval], ds.test_labels[n_craft:n_craft + n_eval]
    image_shape = tuple(spec["image_shape"])

    # The same weights in PyTorch, wrapped for ART; the clean predictions must agree.
    tmodel = tr.from_flax(params, spec["mean"], spec["std"], image_shape).eval()
    for prm in tmodel.parameters():
        prm.requires_grad_(False)
    nchw = lambda a: np.ascontiguousarray(np.asarray(a, np.float32).transpose(0, 3, 1, 2))
    both = np.concatenate([craft_x, eval_x])
    jax_logits = np.asarray(apply_fn(params, jnp.asarray(both)))
    with torch.no_grad():
        torch_logits = tmodel(torch.from_numpy(nchw(both))).numpy()
    agree = float(np.mean(jax_logits.argmax(1) == torch_logits.argmax(1)))
    max_diff = float(np.max(np.abs(jax_logits - torch_logits)))
    classifier = PyTorchClassifier(model=tmodel, loss=torch.nn.CrossEntropyLoss(),
                                   input_shape=(image_shape[2],) + image_shape[:2],
                                   nb_classes=ds.num_classes, clip_values=(0.0, 1.0), device_type="cpu")
    art_agree = float(np.mean(classifier.predict(nchw(both), batch_size=500).argmax(1) == jax_logits.argmax(1)))

    clean_uer = metrics.universal_evasion_rate(apply_fn, params, eval_x, eval_y, jnp.zeros(image_shape))
    info: Dict[str, Any] = {
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "jax": jax.__version__,
                    "backend": jax.default_backend(), "torch": torch.__version__,
                    "torch_threads": torch.get_num_threads(), "art": art.__version__,
                    "loadavg_at_start": _load()},
        "config": {"dataset": ds.name, "data_source": ds.source, "workdir": restored.meta["workdir"],
                   "train_config": {k: restored.config[k] for k in ("num_epochs", "jr_lambda", "batch_size")},
                   "train_step": restored.step, "eps": args.eps, "norm": "linf",
                   "n_craft": n_craft, "n_eval": n_eval, "crafting": f"test[:{n_craft}]",
                   "held_out": f"test[{n_craft}:{n_craft + n_eval}]", "seed": args.seed,
                   "argv": sys.argv[1:] if argv is None else argv},
        "models_agree": {"clean_prediction_agreement": agree, "art_prediction_agreement": art_agree,
                         "max_abs_logit_diff": max_diff, "inputs": len(both)},
        "clean_error_rate": clean_uer,
    }
    print(f"{ds.name}: craft {n_craft}, eval {n_eval}, eps {args.eps}; torch/jax agree {agree:.4f} "
          f"(max logit diff {max_diff:.2e}); clean error {clean_uer:.3f}; load {_load()}", flush=True)
    rows: Dict[str, Dict[str, Any]] = {}

    def save(partial=True):
        if out_path:
            _write_json(out_path, {**info, "rows": rows, "partial": partial})

    def score(v: np.ndarray) -> Dict[str, float]:
        v = jnp.asarray(v, jnp.float32).reshape(image_shape)
        return {"uer": metrics.universal_evasion_rate(apply_fn, params, eval_x, eval_y, v),
                "craft_fooling_rate": metrics.fooling_rate(apply_fn, params, craft_x, v),
                "linf": float(jnp.max(jnp.abs(v)))}

    def run_art():
        random.seed(args.seed)  # ART draws the pass order with Python's random
        np.random.seed(args.seed)
        attack = UniversalPerturbation(classifier, attacker="deepfool", eps=args.eps, norm=np.inf, max_iter=1,
                                       delta=0.0, batch_size=500, verbose=False,
                                       attacker_params={"verbose": False})
        load0, start = _load(), time.perf_counter()
        attack.generate(nchw(craft_x))
        seconds = time.perf_counter() - start
        v = np.asarray(attack.noise, np.float32)[0].transpose(1, 2, 0)
        return {"method": "ART UniversalPerturbation(deepfool), per sample", "seconds": seconds,
                "art_fooling_rate": float(attack.fooling_rate), "load_before": load0, "load_after": _load(),
                **score(v)}

    def run_jacuap(name):
        kw = dict(VARIANTS[name])
        key = jax.random.PRNGKey(args.seed)
        # Compile ahead of time (the timed call below finds the program in jit's cache).
        f32 = lambda a: jnp.asarray(a, jnp.float32)
        x = jnp.asarray(craft_x)
        clean = jnp.zeros((n_craft,), jnp.int32)
        batch = min(kw.get("batch_size", 128), n_craft)
        start = time.perf_counter()
        attacks.deepfool_uap_pass.lower(
            apply_fn, params, jnp.zeros(image_shape), x, clean, key, f32(args.eps), f32(0.02), f32(args.eps),
            norm="linf", inner="deepfool", aggregate=kw.get("aggregate", "mean"), batch_size=batch,
            deepfool_max_iter=20, inner_steps=10, num_classes=None).compile()
        compile_s = time.perf_counter() - start
        load0, start = _load(), time.perf_counter()
        result = attacks.deepfool_uap(apply_fn, params, x, eps=args.eps, norm="linf", key=key, max_passes=1, **kw)
        v = np.asarray(result.v)
        seconds = time.perf_counter() - start
        return {"method": f"jacuap deepfool_uap {kw or '(defaults)'}", "settings": kw, "seconds": seconds,
                "compile_s": compile_s, "load_before": load0, "load_after": _load(), **score(v)}

    order = list(variants[:1]) + ([] if args.no_art else ["ART"]) + list(variants[1:])
    for name in order:
        print(f"  {name} ...", end=" ", flush=True)
        row = run_art() if name == "ART" else run_jacuap(name)
        rows[name] = row
        print(f"UER {row['uer']:.3f}, {row['seconds']:.1f} s (load {row['load_after'][0]})", flush=True)
        save()
    info["machine"]["loadavg_at_end"] = _load()
    save(partial=False)

    art_row = rows.get("ART")
    lines = ["| attack | UER (held-out) | fooling rate (crafting) | seconds (+ compile) "
             "| x faster than ART (with compile) |", "|---|---|---|---|---|"]
    for name, row in rows.items():
        speed, secs = "", f"{row['seconds']:.1f}"
        if "compile_s" in row:
            secs += f" (+ {row['compile_s']:.1f})"
            if art_row:
                speed = (f"{art_row['seconds'] / row['seconds']:.1f} "
                         f"({art_row['seconds'] / (row['seconds'] + row['compile_s']):.1f})")
        lines.append(f"| {name} | {row['uer']:.3f} | {row['craft_fooling_rate']:.3f} | {secs} | {speed} |")
    print("\n".join(lines))
    return {**info, "rows": rows}


if __name__ == "__main__":
    main()
