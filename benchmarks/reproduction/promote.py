"""Moves a re-run's records into the sweep's results, archiving the ones they replace.

A re-run (``reproduce.py --out=results/rerun``) retrains models whose
checkpoints are gone; on another CPU the same config gives other parameters
(XLA:CPU compiles for the host's instruction set), so its records describe
new models and replace the old ones whole, never field by field.

    python -m benchmarks.reproduction.promote --src=results/rerun --dst=results --archive=results/v2 \\
        --dataset=fashion_mnist --whole=mlp

* An architecture named in ``--whole`` was re-run in full (its own schedule
  stage aside): every record of it in ``dst`` is archived, the re-run's take
  their place, and its ``selection.json`` and ``transfer.json`` entries are
  the re-run's (strengths are re-chosen from the new records).
* Any other architecture: only the records whose ids the re-run has are
  archived and replaced; the selection and transfer entries stay.

Archived records keep their paths under ``<archive>/<dataset>/models/``.  A
record already in the archive is never overwritten (the step refuses).
Afterwards ``reproduce.py --max_models=0`` rewrites the analysis.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from typing import Dict, List, Sequence

from jacuap import io as jacuap_io

__all__ = ["promote"]


def _records(out: str, dataset: str) -> Dict[str, str]:
    """``{"<arch>/<name>": path}`` of the records under ``<out>/<dataset>/models``."""
    models = os.path.join(out, dataset, "models")
    found = {}
    for arch in sorted(os.listdir(models)) if os.path.isdir(models) else []:
        for name in sorted(os.listdir(os.path.join(models, arch))):
            if name.endswith(".json"):
                found[f"{arch}/{name}"] = os.path.join(models, arch, name)
    return found


def _json(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return {}


def promote(src: str, dst: str, archive: str, dataset: str, whole: Sequence[str] = ()) -> List[str]:
    """Moves ``src``'s records of ``dataset`` into ``dst`` (see the module docstring); returns the moved keys.

    Raises:
      ValueError: ``src`` has no records, an architecture of ``whole`` has none in ``src``, or a record to
        archive is already in ``archive``.
    """
    new = _records(src, dataset)
    if not new:
        raise ValueError(f"src {src!r} has no records of {dataset}")
    archs = {k.split("/")[0] for k in new}
    missing = [a for a in whole if a not in archs]
    if missing:
        raise ValueError(f"whole names {', '.join(missing)}, which src {src!r} has no records of")
    old = _records(dst, dataset)
    replaced = [k for k in old if k.split("/")[0] in whole or k in new]
    clash = [k for k in replaced if os.path.exists(os.path.join(archive, dataset, "models", k))]
    if clash:
        raise ValueError(f"archive {archive!r} already holds {', '.join(clash)}: refusing to overwrite")
    for k in replaced:
        target = os.path.join(archive, dataset, "models", k)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.move(old[k], target)
    for k, path in new.items():
        target = os.path.join(dst, dataset, "models", k)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copy2(path, target)
    for name, key in (("selection.json", "archs"), ("transfer.json", None)):
        merged, theirs = _json(os.path.join(dst, dataset, name)), _json(os.path.join(src, dataset, name))
        if not merged and not theirs:
            continue
        mine = merged.setdefault(key, {}) if key else merged
        theirs = theirs.get(key, {}) if key else theirs
        for arch in whole:
            if mine.get(arch) is not None:  # the old entry goes to the archive beside its records
                kept = _json(os.path.join(archive, dataset, name))
                (kept.setdefault(key, {}) if key else kept)[arch] = mine.pop(arch)
                os.makedirs(os.path.join(archive, dataset), exist_ok=True)
                jacuap_io.write_json_atomic(os.path.join(archive, dataset, name), kept)
            if arch in theirs:
                mine[arch] = theirs[arch]
        jacuap_io.write_json_atomic(os.path.join(dst, dataset, name), merged)
    return sorted(new)


def main(argv: Sequence[str]) -> int:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--src", required=True)
    p.add_argument("--dst", required=True)
    p.add_argument("--archive", required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--whole", default="", help="comma-separated architectures re-run in full")
    args = p.parse_args(argv)
    try:
        moved = promote(args.src, args.dst, args.archive, args.dataset, [a for a in args.whole.split(",") if a])
    except ValueError as exc:
        print(f"promote: {exc}", file=sys.stderr)
        return 2
    print(f"moved {len(moved)} records from {args.src} into {args.dst}; the replaced ones are in {args.archive}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
