"""Before/after speed of jacuap's kernels: ``speed.py`` of two checkouts, row by row, interleaved.

    git worktree add /tmp/jacuap_before <old commit>
    python benchmarks/speed_ab.py --before /tmp/jacuap_before --work runs/speed_ab \\
        --out benchmarks/results/speed_ab_cpu.json

For each row of ``speed.py`` (jacuap's side only: ``--no-torch``), runs the
row with the old checkout's ``benchmarks/speed.py`` and with this one's, each
in its own process, alternating which goes first from row to row (ABBA), so
that a drift in machine load falls on both sides.  Each run's JSON is kept in
``--work`` as ``<side>_<row>.json`` and reused by a rerun (a stopped
comparison continues).  The output gives per row both medians and
``after / before`` (below 1: faster now), with the load average at each run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.speed_rows import ROWS  # noqa: E402


def _load(path: str) -> Optional[Dict[str, Any]]:
    try:
        with open(path) as f:
            result = json.load(f)
    except (OSError, ValueError):
        return None
    return None if result.get("partial") else result


def run_side(side: str, tree: str, row: str, work: str, extra: List[str]) -> Dict[str, Any]:
    """``speed.py --rows row`` of ``tree``; the result JSON (reused when ``work`` has it)."""
    path = os.path.abspath(os.path.join(work, f"{side}_{row}.json"))  # the run's cwd is its tree
    found = _load(path)
    if found is not None:
        return found
    cmd = [sys.executable, os.path.join(tree, "benchmarks", "speed.py"), "--rows", row, "--no-torch",
           "--out", path, *extra]
    start = time.time()
    with open(os.path.join(work, f"{side}_{row}.log"), "w") as log:
        proc = subprocess.run(cmd, cwd=tree, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise SystemExit(f"speed_ab.py: {side} {row} failed (exit {proc.returncode}); see {log.name}")
    with open(os.path.join(work, "times.txt"), "a") as f:
        f.write(f"{side} {row} {time.time() - start:.0f} s  load: {' '.join(f'{v:.2f}' for v in os.getloadavg())}\n")
    return _load(path)


def compare(before: str, work: str, rows, extra: List[str]) -> Dict[str, Any]:
    out: Dict[str, Any] = {"before_tree": os.path.abspath(before), "after_tree": ROOT, "rows": {}}
    for i, row in enumerate(rows):
        order = ("before", "after") if i % 2 == 0 else ("after", "before")
        results = {side: run_side(side, before if side == "before" else ROOT, row, work, extra) for side in order}
        b, a = (results[s]["rows"].get(row, {}) for s in ("before", "after"))
        entry = {"before_s": b.get("jacuap_s"), "after_s": a.get("jacuap_s"), "order": list(order)}
        if entry["before_s"] and entry["after_s"]:
            entry["after_over_before"] = entry["after_s"] / entry["before_s"]
        out["rows"][row] = entry
        out.setdefault("machine", results["after"].get("machine"))
    return out


def rows_of(tree: str) -> List[str]:
    """The rows ``tree``'s ``speed.py`` knows (its ``benchmarks/speed_rows.py``, JAX-free, loaded by path)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_speed_rows_of_tree", os.path.join(tree, "benchmarks", "speed_rows.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return list(module.ROWS)


def default_rows(before: str) -> List[str]:
    """This tree's rows that ``before`` knows too, in this tree's order (an older tree lacks the newer rows)."""
    known = set(rows_of(before))
    return [r for r in ROWS if r in known]


def main(argv=None) -> Dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", required=True, help="a checkout of the old version (git worktree add DIR COMMIT)")
    p.add_argument("--work", required=True, help="folder for each run's JSON and log (reused by a rerun)")
    p.add_argument("--rows", default=None, help="comma list (default: every row both trees know)")
    p.add_argument("--out", default=None, help="the comparison JSON")
    p.add_argument("--speed-arg", action="append", default=[], metavar="ARG", help="extra speed.py argument")
    args = p.parse_args(argv)
    if not os.path.isfile(os.path.join(args.before, "benchmarks", "speed.py")):
        p.error(f"--before {args.before} holds no benchmarks/speed.py")
    known = rows_of(args.before) if os.path.isfile(os.path.join(args.before, "benchmarks", "speed_rows.py")) else []
    if args.rows is None:
        rows = default_rows(args.before)
    else:
        rows = [r for r in args.rows.split(",") if r]
        missing = [r for r in rows if r not in known]
        if missing:
            p.error(f"--before {args.before} has no row {missing[0]}; it knows {', '.join(known) or 'none'}")
    os.makedirs(args.work, exist_ok=True)
    result = compare(args.before, args.work, rows, args.speed_arg)
    print(f"{'row':32s} {'before s':>10s} {'after s':>10s} {'after/before':>13s}")
    for row, e in result["rows"].items():
        ratio = e.get("after_over_before")
        print(f"{row:32s} {e['before_s'] or float('nan'):10.4f} {e['after_s'] or float('nan'):10.4f} "
              f"{'-' if ratio is None else f'{ratio:.3f}':>13s}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
            f.write("\n")
    return result


if __name__ == "__main__":
    main()
