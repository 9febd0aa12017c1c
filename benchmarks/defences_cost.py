"""Cost per training step of each defence, as a ratio to a plain step; and PGD-AT's step count.

    python benchmarks/defences_cost.py [--reps 5] [--batch 128] [--pgd-epochs 0]

Times one jitted train step (compiled beforehand, ``block_until_ready``) of:
plain, frobenius JR exact (K VJPs), frobenius JR with 1 projection,
stacked_spectral (``jr_power_iters`` 2 and 3), alignment, and TRADES (10 inner
steps, as Zhang et al.), on the Fashion-MNIST CNN when its files are found,
else the digits MLP.  The variants are interleaved, rep by rep, so a noisy
neighbour slows them all alike; the median is reported.  Prints the ratios and
writes ``benchmarks/results/defences_cost.json``.  Not a test.

``--pgd-epochs N`` also trains PGD-AT on digits (MLP, same seed) with 3 and
with 10 PGD steps for N epochs each and reports clean accuracy and PGD-20
robust accuracy (eps 0.1), to decide whether 3 steps (benchmarks/reproduce.py's
``pgd_steps``) are enough there.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import jax
import numpy as np
import optax

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jacuap  # noqa: E402
from jacuap import attacks, configs, metrics, train  # noqa: E402


def _dataset():
    try:
        return jacuap.load_dataset("fashion_mnist"), "fashion_mnist", "cnn"
    except Exception:  # absent files: the digits MLP
        return jacuap.load_dataset("digits"), "digits", "mlp"


def cost(reps: int, batch: int) -> dict:
    ds, name, model_name = _dataset()
    model = jacuap.create_model(model_name, ds.num_classes, ds.mean, ds.std)
    x, y = np.asarray(ds.train_images[:batch]), np.asarray(ds.train_labels[:batch])
    std = tuple(ds.std)
    eps = 0.1
    variants = {
        "plain": dict(jr_lambda=0.0, jr_num_proj=None),
        "frobenius_exact": dict(jr_lambda=0.1, jr_num_proj=None),
        "frobenius_1proj": dict(jr_lambda=0.1, jr_num_proj=1),
        "stacked_spectral_2it": dict(jr_lambda=0.1, jr_num_proj=None, jr_mode="stacked_spectral", jr_power_iters=2),
        "stacked_spectral_3it": dict(jr_lambda=0.1, jr_num_proj=None, jr_mode="stacked_spectral", jr_power_iters=3),
        "alignment": dict(jr_lambda=0.1, jr_num_proj=None, jr_mode="alignment"),
        "trades_10": dict(jr_lambda=0.0, jr_num_proj=None, trades_beta=6.0,
                          adversary=train.Adversary("trades", eps, 10, 2.5 * eps / 10)),
        "pgd_at_3": dict(jr_lambda=0.0, jr_num_proj=None, adversary=train.Adversary("pgd", eps, 3, 2.5 * eps / 3)),
        "uat": dict(jr_lambda=0.0, jr_num_proj=None, adversary=train.Adversary("uat", eps, 1, eps / 4)),
        "sat_3_heap16": dict(jr_lambda=0.0, jr_num_proj=None,
                             adversary=train.Adversary("sat", eps, 3, 2.5 * eps / 3, 16)),
        "cw_uat": dict(jr_lambda=0.0, jr_num_proj=None, adversary=train.Adversary("cw_uat", eps, 1, eps / 4)),
    }
    step = jax.jit(train.train_step, static_argnames=train.STATIC_ARGNAMES)
    states, runs = {}, {}
    for key, kw in variants.items():
        class_wise = ds.num_classes if key == "cw_uat" else 0
        states[key] = train.create_train_state(model, jax.random.PRNGKey(0), ds.image_shape, optax.adam(1e-3),
                                               kw.get("jr_mode", "frobenius"), class_wise)
        args = dict(input_std=std, **kw)
        runs[key] = (lambda s, a=args: step(s, x, y, train.step_key(0, 0), **a))
        jax.block_until_ready(runs[key](states[key]))  # compile
    times = {k: [] for k in variants}
    for _ in range(reps):
        for key in variants:
            t0 = time.perf_counter()
            jax.block_until_ready(runs[key](states[key]))
            times[key].append(time.perf_counter() - t0)
    median = {k: statistics.median(v) for k, v in times.items()}
    return {"dataset": name, "model": model_name, "batch": batch, "reps": reps,
            "backend": jax.default_backend(), "median_seconds": median,
            "ratio_to_plain": {k: median[k] / median["plain"] for k in median}}


def pgd_steps(epochs: int) -> dict:
    out = {}
    ds = jacuap.load_dataset("digits")
    for steps in (3, 10):
        config = configs.override(configs.get_config("digits"), jr_lambda=0.0, adv_training="pgd", adv_eps=0.1,
                                  adv_steps=steps, num_epochs=epochs, progress=False, eval_num_inputs=50)
        workdir = os.path.join("/tmp", f"defences_cost_pgd{steps}_{os.getpid()}")
        summary = train.train_and_evaluate(config, workdir)
        restored = train.restore_model(workdir)
        x_adv = attacks.pgd(restored.apply_fn, restored.params, ds.test_images, ds.test_labels, eps=0.1,
                            num_steps=20, key=jax.random.PRNGKey(1))
        out[f"pgd_at_{steps}"] = {"clean_accuracy": summary["test_accuracy"],
                                  "pgd20_accuracy": metrics.accuracy(restored.apply_fn, restored.params, x_adv,
                                                                     ds.test_labels),
                                  "train_seconds": summary["train_seconds"]}
    return {"epochs": epochs, "eps": 0.1, **out}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--pgd-epochs", type=int, default=0)
    args = parser.parse_args()
    path = os.path.join(ROOT, "benchmarks", "results", "defences_cost.json")
    load_before = os.getloadavg()
    result = {"cost": cost(args.reps, args.batch)}
    result["cost"]["loadavg"] = {"before": load_before, "after": os.getloadavg()}
    c = result["cost"]
    print(f"{c['dataset']} {c['model']}, batch {c['batch']}, {c['reps']} reps, {c['backend']}:")
    for k, r in c["ratio_to_plain"].items():
        print(f"  {k:22s} {c['median_seconds'][k] * 1e3:9.2f} ms   x{r:.2f}")
    if args.pgd_epochs:
        result["pgd_steps"] = pgd_steps(args.pgd_epochs)
        print(json.dumps(result["pgd_steps"], indent=2))
    elif os.path.exists(path):  # keep the last --pgd-epochs measurement
        with open(path) as f:
            previous = json.load(f)
        if "pgd_steps" in previous:
            result["pgd_steps"] = previous["pgd_steps"]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
