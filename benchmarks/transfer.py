"""The transfer matrix of universal perturbations between trained models.

    python benchmarks/transfer.py --workdirs=W1,W2,W3 --eps=0.1 --out=DIR

Entry ``uer[i][j]`` is the universal evasion rate on model ``j`` (its
evaluation split, ``--num_eval`` test inputs) of model ``i``'s UAP: the worst
case at ``--eps`` of ``W_i/attack/results.json`` when ``attack.py --suite`` was
run there, else its ``sgd_uap`` UAP there, else one crafted now (``sgd_uap``,
into ``DIR/craft_<i>``).  Each entry is an ``attack.py --uap_file`` run
(``DIR/eval_<i>_<j>``, resumable).  Writes ``DIR/transfer.json`` (workdirs,
which UAP each one gave, ``uer`` and ``fooling_rate`` matrices; rows: source
model, columns: evaluated model) and the heat map ``DIR/transfer.png``.  The
models must take inputs of one shape.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Dict, List, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from absl import flags  # noqa: E402

from jacuap import cli, evaluation, io  # noqa: E402
from jacuap.errors import AttackError  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("workdirs", None, "Comma list of train.py workdirs (at least 2).")
flags.DEFINE_float("eps", 0.1, "The budget, in pixel units.")
flags.DEFINE_string("norm", "linf", "linf or l2.")
flags.DEFINE_string("out", None, "Output folder.")
flags.DEFINE_string("attack_dir", "attack", "Where each workdir's attack.py outputs are (relative to it).")
flags.DEFINE_integer("num_craft", 5000, "Crafting inputs when a UAP must be crafted.")
flags.DEFINE_integer("num_eval", 10000, "Evaluation inputs.")
flags.DEFINE_integer("sgd_epochs", 5, "SGD-UAP epochs when a UAP must be crafted.")
flags.DEFINE_integer("seed", 0, "Seed of the sets.")
flags.DEFINE_bool("progress", False, "Progress bars.")
flags.mark_flags_as_required(["workdirs", "out"])


def existing_uap(folder: str, eps: float, norm: str) -> Optional[Tuple[str, Dict[str, Any]]]:
    """``(path, origin)`` of the worst-case UAP at ``eps`` in an attack.py folder, else of its sgd_uap UAP, else None."""
    try:
        with open(os.path.join(folder, evaluation.store.RESULTS_NAME)) as f:
            results = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(results, dict) or results.get("config", {}).get("norm") != norm:
        return None
    eps = evaluation.store.canonical_eps(eps)
    for w in results.get("worst_case") or []:
        if w.get("eps") == eps and w.get("file"):
            return os.path.join(folder, w["file"]), {"kind": "worst_case", **w}
    for r in results.get("results") or []:
        if r.get("attack") == "sgd_uap" and r.get("eps") == eps and r.get("file"):
            return os.path.join(folder, r["file"]), {"kind": "sgd_uap", **{k: r.get(k) for k in (
                "attack", "seed", "eps", "uer", "craft_uer", "file")}}
    return None


def _request(workdir: str, out: str, **kw) -> evaluation.AttackRequest:
    base = dict(workdir=workdir, attacks=[], norm=FLAGS.norm, eps=[FLAGS.eps], out=out, num_craft=FLAGS.num_craft,
                num_eval=FLAGS.num_eval, num_metrics=0, sgd_epochs=FLAGS.sgd_epochs, seed=FLAGS.seed,
                progress=FLAGS.progress)
    base.update(kw)
    return evaluation.AttackRequest(**base)


def transfer_matrix(workdirs: List[str], out: str, log=print) -> Dict[str, Any]:
    """Builds and writes the transfer matrix (module docstring); returns what ``transfer.json`` holds."""
    if len(workdirs) < 2:
        raise AttackError("--workdirs needs at least 2 workdirs")
    os.makedirs(out, exist_ok=True)
    sources = []
    for i, w in enumerate(workdirs):
        found = existing_uap(os.path.join(w, FLAGS.attack_dir), FLAGS.eps, FLAGS.norm)
        if found is None:
            folder = os.path.join(out, f"craft_{i}")
            log(f"{w}: no worst-case or sgd_uap UAP at eps={FLAGS.eps:g}; crafting sgd_uap into {folder}")
            evaluation.run_attacks(_request(w, folder, attacks=["sgd_uap"]), log=log)
            found = existing_uap(folder, FLAGS.eps, FLAGS.norm)
        sources.append(found)
    uer = [[None] * len(workdirs) for _ in workdirs]
    fooling = [[None] * len(workdirs) for _ in workdirs]
    for i, (path, _) in enumerate(sources):
        for j, w in enumerate(workdirs):
            results = evaluation.run_attacks(_request(w, os.path.join(out, f"eval_{i}_{j}"), uap_file=path),
                                             log=lambda line: None)
            uer[i][j], fooling[i][j] = results["results"][0]["uer"], results["results"][0]["fooling_rate"]
    record = {"eps": evaluation.store.canonical_eps(FLAGS.eps), "norm": FLAGS.norm,
              "workdirs": [os.path.abspath(w) for w in workdirs],
              "sources": [{**origin, "file": os.path.abspath(p)} for p, origin in sources],
              "rows": "source model (whose UAP)", "columns": "evaluated model",
              "uer": uer, "fooling_rate": fooling}
    io.write_json_atomic(os.path.join(out, "transfer.json"), evaluation.store.finite_or_null(record))
    _plot(uer, [os.path.basename(os.path.normpath(w)) for w in workdirs], os.path.join(out, "transfer.png"))
    return record


def _plot(matrix, names, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    k = len(names)
    fig, ax = plt.subplots(figsize=(1.5 + 0.8 * k, 1.2 + 0.8 * k))
    try:
        image = ax.imshow(np.array(matrix, dtype=float), vmin=0, vmax=1, cmap="viridis")
        for i in range(k):
            for j in range(k):
                ax.text(j, i, f"{matrix[i][j]:.2f}", ha="center", va="center", color="w", fontsize=7)
        ax.set_xticks(range(k), names, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(k), names, fontsize=7)
        ax.set_xlabel("evaluated model")
        ax.set_ylabel("UAP crafted on")
        ax.set_title(f"UAP transfer: UER, {FLAGS.norm} eps={FLAGS.eps:g}", fontsize=8)
        fig.colorbar(image, ax=ax, fraction=0.046)
        fig.tight_layout()
        io.save_figure_atomic(fig, path, dpi=80)
    finally:
        plt.close(fig)


def main(argv):
    del argv
    with cli.user_errors():
        record = transfer_matrix([w.strip() for w in FLAGS.workdirs if w.strip()], FLAGS.out)
    width = max(len(os.path.basename(w)) for w in record["workdirs"]) + 2
    print("UER of row's UAP on column's model")
    for w, row in zip(record["workdirs"], record["uer"]):
        print(f"{os.path.basename(w):<{width}}" + "".join(f"{'n/a' if v is None else format(v, '.3f'):>8}" for v in row))
    print(f"outputs in {FLAGS.out}: transfer.json, transfer.png")


if __name__ == "__main__":
    sys.exit(cli.run(main))
