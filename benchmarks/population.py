"""Throughput of P models trained in one program (jacuap.train.population) against P separate runs.

    python benchmarks/population.py            # Fashion-MNIST mlp and cnn, P = 1, 2, 4, 8 (minutes; a quiet machine)
    python benchmarks/population.py --quick    # digits, tiny nets, P = 1, 2 (the smoke test, seconds)

Two kinds of row, the two ways the reproduction sweep trains many models of one method:

* ``jr lambdas``: one seed, P strengths of ``jr_lambda`` (0, 0.01, 0.05, 0.1, 0.5, 1, cycled), one
  projection: the JR grid.  The population shares each batch and traces lambda; a separate run at lambda 0
  takes the plain step (the penalty skipped), as ``train_and_evaluate`` does.
* ``plain seeds``: P seeds at lambda 0 (the static plain step), each model its own data order: the
  claims' extra seeds.

Per row, a repetition is ``--steps`` training steps of all P models, as the training loop runs them
(each step's batch gathered on the host from the epoch's permutation, sorted): either one call of the
vmapped step per batch (``population``) or the ordinary jitted ``train_step`` called once per model per
batch (``separate``).  Repetitions interleave (population, separate, population, ...) after a warm-up
call of each (compilation is left out).  Reported: the medians, ``ratio = population / separate``
(below 1: the population is faster), models x steps per second of each, and the 1-minute load average
before and after the row.  Written to ``benchmarks/results/population.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Dict, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import jacuap  # noqa: E402
from jacuap import io, train  # noqa: E402

JR_GRID = (0.0, 0.01, 0.05, 0.1, 0.5, 1.0)  # the sweep's (benchmarks/reproduction/plan.py)
KINDS = ("jr lambdas", "plain seeds")


def _keyed(state, images, labels, seeds, jr_lambdas, jr_num_proj, input_std):
    """The population step as train_population runs it: each model's key from its seed and step, in the program."""
    keys = train.population_keys(seeds, state.step)
    return train.population_train_step(state, images, labels, keys, jr_lambdas, jr_num_proj, input_std)


def _batches(ds, seeds: Sequence[int], steps: int, batch: int):
    """Each step's per-model index arrays, as the loop makes them: ``sort(perm[i * B:(i + 1) * B])``."""
    n = len(ds.train_images)
    perms = {s: train.epoch_permutation(s, 0, n) for s in set(seeds)}
    spe = n // batch
    return [[np.sort(perms[s][(i % spe) * batch:(i % spe + 1) * batch]) for s in seeds] for i in range(steps)]


def row(ds, arch: str, kwargs: Dict, kind: str, size: int, batch: int, steps: int, reps: int) -> Dict:
    """One row: ``size`` models of ``arch`` of ``kind``, timed together and separately."""
    load_before = os.getloadavg()[0]
    plain = kind == "plain seeds"
    seeds = list(range(size)) if plain else [0] * size
    lambdas = [0.0] * size if plain else [JR_GRID[p % len(JR_GRID)] for p in range(size)]
    model = jacuap.create_model(arch, ds.num_classes, ds.mean, ds.std, kwargs)
    tx = optax.adam(1e-3)
    first = train.create_train_state(model, jax.random.PRNGKey(0), ds.image_shape, tx)
    states = [first] + [train.create_train_state(model, jax.random.PRNGKey(s), ds.image_shape, tx).replace(
        apply_fn=first.apply_fn) for s in seeds[1:]]
    input_std = tuple(float(s) for s in ds.std)  # jr_space="normalized", the default
    static = ("jr_num_proj", "input_std") + (("jr_lambdas",) if plain else ())
    pop_step = jax.jit(_keyed, static_argnames=static, donate_argnums=0)
    sep_step = jax.jit(train.train_step, static_argnames=train.STATIC_ARGNAMES, donate_argnums=0)
    weights = 0.0 if plain else jnp.asarray(lambdas, jnp.float32)
    seeds_arr = jnp.asarray(seeds, jnp.int32)
    shared = len(set(seeds)) == 1
    idx = _batches(ds, seeds, steps, batch)
    box = {"pop": train.stack_states(states), "sep": [jax.tree_util.tree_map(jnp.copy, s) for s in states],
           "t": 0}

    def population():
        for step_idx in idx:
            if shared:
                x, y = ds.train_images[step_idx[0]], ds.train_labels[step_idx[0]]
            else:
                x = np.stack([ds.train_images[i] for i in step_idx])
                y = np.stack([ds.train_labels[i] for i in step_idx])
            box["pop"], _ = pop_step(box["pop"], x, y, seeds_arr, weights, jr_num_proj=1, input_std=input_std)
        return box["pop"]

    def separate():
        for step_idx in idx:
            for p, i in enumerate(step_idx):
                key = train.step_key(seeds[p], box["t"])
                box["sep"][p], _ = sep_step(box["sep"][p], ds.train_images[i], ds.train_labels[i], key, lambdas[p], 1,
                                            input_std)
            box["t"] += 1
        return box["sep"]

    times = {"population": [], "separate": []}
    fns = {"population": population, "separate": separate}
    for fn in fns.values():
        jax.block_until_ready(fn())  # compiles
    for _ in range(reps):
        for name, fn in fns.items():
            start = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - start)
    pop_s, sep_s = statistics.median(times["population"]), statistics.median(times["separate"])
    return {"arch": arch, "kind": kind, "P": size, "steps": steps, "reps": reps, "batch": batch,
            "population_s": pop_s, "separate_s": sep_s, "ratio": pop_s / sep_s,
            "population_model_steps_per_s": size * steps / pop_s, "separate_model_steps_per_s": size * steps / sep_s,
            "loadavg_before": load_before, "loadavg_after": os.getloadavg()[0]}


def main(argv=None) -> Dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="digits, tiny nets, P = 1, 2, 2 steps x 2 repetitions")
    p.add_argument("--archs", default="mlp,cnn", help="comma-separated: mlp, cnn")
    p.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated: {', '.join(KINDS)}")
    p.add_argument("--populations", default=None, help="comma-separated P (default 1,2,4,8; --quick 1,2)")
    p.add_argument("--steps", type=int, default=None, help="steps per repetition (default 5; --quick 2)")
    p.add_argument("--reps", type=int, default=None, help="repetitions per row (default 7; --quick 2)")
    p.add_argument("--out", default=None, help="JSON output (default benchmarks/results/population.json; '' none)")
    args = p.parse_args(argv)
    quick = args.quick
    kinds = [k.strip() for k in args.kinds.split(",")]
    for kind in kinds:
        if kind not in KINDS:
            raise SystemExit(f"--kinds: unknown kind {kind!r}; use {', '.join(KINDS)}")
    dataset = "digits" if quick else "fashion_mnist"
    ds = jacuap.load_dataset(dataset)
    batch = 32 if quick else 128  # the configs' batch_size (jacuap/configs/default.py)
    sizes = [int(s) for s in (args.populations or ("1,2" if quick else "1,2,4,8")).split(",")]
    steps = args.steps or (2 if quick else 5)
    reps = args.reps or (2 if quick else 7)
    nets = {"mlp": {"hidden": (16,)}, "cnn": {"features": (4, 8), "dense": 16}} if quick else {"mlp": {}, "cnn": {}}
    result = {"machine": {"jax": jax.__version__, "backend": jax.default_backend(), "cpu_count": os.cpu_count(),
                          "loadavg_start": os.getloadavg()},
              "dataset": dataset, "batch": batch, "quick": quick, "rows": []}
    print("| arch | kind | P | population s | separate s | ratio | models x steps/s (pop / sep) | load before/after |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for arch in args.archs.split(","):
        for kind in kinds:
            for size in sizes:
                r = row(ds, arch, nets[arch], kind, size, batch, steps, reps)
                result["rows"].append(r)
                print(f"| {arch} | {kind} | {size} | {r['population_s']:.4f} | {r['separate_s']:.4f} | "
                      f"{r['ratio']:.2f} | {r['population_model_steps_per_s']:.1f} / "
                      f"{r['separate_model_steps_per_s']:.1f} | {r['loadavg_before']:.2f} / "
                      f"{r['loadavg_after']:.2f} |", flush=True)
    result["machine"]["loadavg_end"] = os.getloadavg()
    out = args.out if args.out is not None else os.path.join(os.path.dirname(__file__), "results", "population.json")
    if out:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        io.write_text_atomic(out, json.dumps(result, indent=2))  # never a half-written file
        print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
