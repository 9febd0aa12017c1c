"""Is the training schedule long enough?  Train the same config for E and 2E epochs.

    python benchmarks/convergence.py --model cnn --epochs 12,24 --out results/convergence/cnn.json

For each epoch count, runs ``train.py`` (lambda 0 unless ``--jr_lambda``) in
its own workdir (the cosine schedule spans the whole run, so each count is a
separate schedule, not a prefix of a longer one) and records the test accuracy
from its ``summary.json``.  The JSON is rewritten after every run, so an
interrupted sweep keeps what finished; a rerun skips counts already recorded.
A schedule E is long enough when ``acc(2E) - acc(E)`` is below 0.3 points.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from jacuap import io  # noqa: E402


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="cnn")
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("--data_dir", default="")
    p.add_argument("--epochs", default="12,24", help="comma-separated epoch counts")
    p.add_argument("--jr_lambda", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default=None, help="where the runs' workdirs go (default: a temp dir)")
    p.add_argument("--out", required=True, help="results JSON (rewritten after each run)")
    args = p.parse_args(argv)
    counts = [int(e) for e in args.epochs.split(",") if e]
    results = {"model": args.model, "dataset": args.dataset, "jr_lambda": args.jr_lambda, "seed": args.seed,
               "runs": {}}
    if os.path.exists(args.out):
        with open(args.out) as f:
            results["runs"] = json.load(f).get("runs", {})
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    base = args.workdir or tempfile.mkdtemp(prefix="jacuap_convergence_")
    for epochs in counts:
        if str(epochs) in results["runs"]:
            continue
        workdir = os.path.join(base, f"{args.model}_l{args.jr_lambda:g}_s{args.seed}_e{epochs}")
        cmd = [sys.executable, os.path.join(ROOT, "train.py"), f"--workdir={workdir}",
               f"--config.dataset={args.dataset}", f"--config.data_dir={args.data_dir}",
               f"--config.model={args.model}", f"--config.num_epochs={epochs}",
               f"--config.jr_lambda={args.jr_lambda}", f"--config.seed={args.seed}", "--config.progress=False"]
        start = time.time()
        subprocess.run(cmd, check=True)
        with open(os.path.join(workdir, "summary.json")) as f:
            summary = json.load(f)
        results["runs"][str(epochs)] = {"test_accuracy": summary["test_accuracy"],
                                        "wall_s": time.time() - start, "summary": summary}
        io.write_json_atomic(args.out, results)
        print(f"{args.model} {epochs} epochs: test accuracy {summary['test_accuracy']:.4f}", flush=True)
    done = sorted(int(e) for e in results["runs"])
    results["doubling"] = [
        {"epochs": e, "doubled": 2 * e,
         "delta_points": 100 * (results["runs"][str(2 * e)]["test_accuracy"] - results["runs"][str(e)]["test_accuracy"])}
        for e in done if str(2 * e) in results["runs"]]
    io.write_json_atomic(args.out, results)
    for d in results["doubling"]:
        print(f"{args.model}: {d['epochs']} -> {d['doubled']} epochs moves test accuracy by {d['delta_points']:+.2f} points")
    return results


if __name__ == "__main__":
    main()
