"""The plain CNN train step under XLA:CPU's options: does any of them close the gap to PyTorch?

    python benchmarks/plain_step_flags.py                  # 2 interleaved rounds, medians of 30 steps
    python benchmarks/plain_step_flags.py --rounds 1 --steps 5 --dataset digits --model mlp   # smoke

Each configuration (an ``XLA_FLAGS`` value and/or ``JACUAP_CONV``) runs in its own process, since
XLA reads its flags once; the configurations alternate within each round, so that a drift in load
falls on all of them.  A process times ``jacuap.train.train_step`` (lambda 0: the plain step,
compiled once ahead of time, batch 128) after 5 warm-up steps and prints one JSON line.  A
configuration that XLA refuses is reported with its error.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CONFIGS = (
    ("", ""),
    ("", "lax"),
    ("--xla_cpu_use_xnnpack=true", ""),
    ("--xla_cpu_use_onednn=true", ""),
    ("--xla_cpu_use_thunk_runtime=false", ""),
    ("--xla_cpu_use_fusion_emitters=false", ""),
)


def time_step(dataset: str, model: str, batch: int, steps: int) -> dict:
    """Median seconds of one compiled plain train step in this process's XLA flags."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    import jacuap
    from jacuap import train
    from jacuap.configs import default

    ds = jacuap.load_dataset(dataset)
    net = jacuap.create_model(model, ds.num_classes, ds.mean, ds.std)
    params = jacuap.init_params(net, jax.random.PRNGKey(0), ds.image_shape)
    tx = train.make_optimizer(default.get_config(), 100)
    state = train.create_train_state(net, jax.random.PRNGKey(0), ds.image_shape, tx).replace(params=params)
    xb, yb = jnp.asarray(ds.train_images[:batch]), jnp.asarray(ds.train_labels[:batch])
    key = jax.random.PRNGKey(1)
    step = jax.jit(train.train_step, static_argnames=("jr_lambda", "jr_num_proj", "input_std"), donate_argnums=0)
    start = time.perf_counter()
    compiled = step.lower(state, xb, yb, key, 0.0, None, None).compile()
    compile_s = time.perf_counter() - start
    for _ in range(5):
        state, _ = compiled(state, xb, yb, key)
    jax.block_until_ready(state)
    seconds = []
    for _ in range(steps):
        start = time.perf_counter()
        state, _ = compiled(state, xb, yb, key)
        jax.block_until_ready(state)
        seconds.append(time.perf_counter() - start)
    return dict(median_s=float(np.median(seconds)), compile_s=compile_s)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("--model", default="cnn")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "plain_step_flags.json"))
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(time_step(args.dataset, args.model, args.batch, args.steps)))
        return {}
    rows = []
    for round_ in range(args.rounds):
        for flags, conv in CONFIGS:
            env = dict(os.environ, XLA_FLAGS=flags, JACUAP_CONV=conv)
            cmd = [sys.executable, os.path.abspath(__file__), "--child", f"--dataset={args.dataset}",
                   f"--model={args.model}", f"--batch={args.batch}", f"--steps={args.steps}"]
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
            row = dict(round=round_, xla_flags=flags, conv=conv or "default", load=os.getloadavg()[0])
            if proc.returncode == 0:
                row.update(json.loads(proc.stdout.strip().splitlines()[-1]))
            else:
                row["error"] = (proc.stderr.strip().splitlines() or ["(no output)"])[-1][:300]
            rows.append(row)
            shown = f"{1e3 * row['median_s']:7.1f} ms" if "median_s" in row else row["error"]
            print(f"round {round_}  {flags or '(none)':40s} conv={row['conv']:8s} {shown}", flush=True)
    result = dict(dataset=args.dataset, model=args.model, batch=args.batch, steps=args.steps, rows=rows)
    if args.out:
        with open(args.out + ".tmp", "w") as f:
            json.dump(result, f, indent=2)
        os.replace(args.out + ".tmp", args.out)
    return result


if __name__ == "__main__":
    main()
