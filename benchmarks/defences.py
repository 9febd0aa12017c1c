"""Every defence trained the same way and attacked the same way: the defences' table.

    python benchmarks/defences.py                      # Fashion-MNIST CNN, 4 epochs, seed 0 (hours on 2 CPU cores)
    python benchmarks/defences.py --only none,uat      # some rows
    python benchmarks/defences.py --quick --workroot /tmp/d --out /tmp/d.json   # digits MLP, toy sizes

Each row is two commands, run as subprocesses and recorded in the output:
``train.py`` with the defence's config fields (the rest at the dataset's
defaults) in ``<workroot>/<name>``, then ``attack.py --attack=sgd_uap`` at
l_inf eps 0.1 and 0.2 (crafted on 5,000 training inputs, UER on the 10,000
test inputs) once per attack seed (``--attack_seeds``, default 0,1,2: the
crafting subset, its shuffles and the start) into ``<workroot>/<name>/sgd``
(seed 0) and ``sgd_seed<s>``; the table gives the worst UER over the seeds
(the attacker picks the best of its runs) and their range.  A row whose
training (``summary.json``, with the same config fields in ``config.json``)
or attack (a complete ``results.json`` at the same budgets) is already there
is read, not rerun; one cut short resumes (both programs resume).  The cost
column is the defence's training-step time over a plain step's, measured side
by side by ``benchmarks/defences_cost.py`` (``benchmarks/results/defences_cost.json``),
not from these trainings' wall times, which ran at different loads.

Writes ``--out`` (JSON: the rows, the commands, the settings) after every
row, and ``<out without .json>.md`` (the table); rows of other defences that
``--out`` already holds at the same settings stay.  Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from jacuap import io  # noqa: E402

# (name, config fields, key in defences_cost.json, label).  Strengths: JR's lambda 0.1 (RESULTS.md's
# choice); the adversarial trainings at adv_eps 0.1, the attack's smaller budget.
DEFENCES: Tuple[Tuple[str, Dict[str, Any], str, str], ...] = (
    ("none", {"jr_lambda": 0.0}, "plain", "none"),
    ("jr_frobenius", {"jr_lambda": 0.1, "jr_num_proj": 1}, "frobenius_1proj",
     "JR frobenius lambda 0.1, 1 projection"),
    ("uat", {"jr_lambda": 0.0, "adv_training": "uat", "adv_eps": 0.1}, "uat", "UAT (FGSM-UAT), adv_eps 0.1"),
    ("cw_uat", {"jr_lambda": 0.0, "adv_training": "cw_uat", "adv_eps": 0.1}, "cw_uat",
     "class-wise UAT, adv_eps 0.1"),
    ("sat", {"jr_lambda": 0.0, "adv_training": "sat", "adv_eps": 0.1, "adv_steps": 3}, "sat_3_heap16",
     "shared AT, adv_eps 0.1, 3 steps, heaps of 16"),
    ("pgd_at", {"jr_lambda": 0.0, "adv_training": "pgd", "adv_eps": 0.1, "adv_steps": 3}, "pgd_at_3",
     "PGD-AT, adv_eps 0.1, 3 steps"),
    ("stacked_spectral", {"jr_mode": "stacked_spectral", "jr_lambda": 0.1, "jr_num_proj": None},
     "stacked_spectral_2it", "stacked spectral lambda 0.1, 2 power iterations"),
    ("trades", {"jr_lambda": 0.0, "adv_training": "trades", "adv_eps": 0.1, "adv_steps": 10}, "trades_10",
     "TRADES beta 6, adv_eps 0.1, 10 steps"),
    ("alignment", {"jr_mode": "alignment", "jr_lambda": 0.1, "jr_num_proj": None}, "alignment",
     "alignment lambda 0.1"),
)
NAMES = tuple(d[0] for d in DEFENCES)


class UserError(Exception):
    """A mistake in the arguments or a workdir holding another run: one line, exit 2."""


def _settings(args: argparse.Namespace) -> Dict[str, Any]:
    if args.quick:
        return dict(dataset="digits", model="mlp", epochs=1, num_craft=300, num_eval=360)
    return dict(dataset="fashion_mnist", model="cnn", epochs=args.epochs, num_craft=5000, num_eval=10000)


def _cli_value(value: Any) -> str:
    return "None" if value is None else str(value)


def attack_dir(workdir: str, attack_seed: int) -> str:
    return os.path.join(workdir, "sgd" if attack_seed == 0 else f"sgd_seed{attack_seed}")


def commands(name: str, fields: Dict[str, Any], workroot: str, settings: Dict[str, Any], seed: int,
             eps: Sequence[float], data_dir: str, attack_seed: int = 0) -> Tuple[List[str], List[str]]:
    """The train.py and attack.py command lines of one row (program paths relative to the checkout)."""
    workdir = os.path.join(workroot, name)
    train = ["train.py", f"--workdir={workdir}", f"--config.dataset={settings['dataset']}",
             f"--config.model={settings['model']}", f"--config.num_epochs={settings['epochs']}",
             f"--config.seed={seed}", "--config.progress=False"]
    if data_dir:
        train.append(f"--config.data_dir={data_dir}")
    train += [f"--config.{k}={_cli_value(v)}" for k, v in fields.items()]
    attack = ["attack.py", f"--workdir={workdir}", "--attack=sgd_uap", "--norm=linf",
              "--eps=" + ",".join(str(e) for e in eps), f"--num_craft={settings['num_craft']}",
              f"--num_eval={settings['num_eval']}", "--num_metrics=0", "--noprogress",
              f"--seed={attack_seed}", f"--out={attack_dir(workdir, attack_seed)}"]
    return train, attack


def _read_json(path: str) -> Optional[Dict[str, Any]]:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def trained(workdir: str, expected: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The finished run's summary, None if unfinished; UserError if the workdir trained something else."""
    config = _read_json(os.path.join(workdir, "config.json"))
    if config is None:
        return None
    differ = {k: (config.get(k), v) for k, v in expected.items() if config.get(k) != v}
    if differ:
        fields = ", ".join(f"{k}={a!r}, not {b!r}" for k, (a, b) in differ.items())
        raise UserError(f"{workdir} holds another run ({fields}); give another --workroot")
    return _read_json(os.path.join(workdir, "summary.json"))


def attacked(out: str, eps: Sequence[float], settings: Dict[str, Any], attack_seed: int
             ) -> Optional[Dict[str, float]]:
    """UER by eps from a complete results.json at these budgets, sizes and seed, else None."""
    results = _read_json(os.path.join(out, "results.json"))
    if not results or not results.get("complete"):
        return None
    config = results["config"]
    if (sorted(config["eps"]) != sorted(eps) or config["num_craft_requested"] != settings["num_craft"]
            or config["num_eval_requested"] != settings["num_eval"] or config["seed"] != attack_seed):
        return None
    return {str(r["eps"]): r["uer"] for r in results["results"] if r["attack"] == "sgd_uap"}


def _run(argv: List[str], log: str) -> None:
    with open(log, "a") as f:
        code = subprocess.call([sys.executable] + argv, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    if code:
        raise UserError(f"{' '.join(argv[:2])} failed with exit status {code}; see {log}")


def markdown(record: Dict[str, Any]) -> str:
    eps = record["settings"]["eps"]
    s = record["settings"]
    seeds = ", ".join(str(a) for a in s["attack_seeds"])
    lines = [f"Defences on {s['dataset']} {s['model']}, {s['epochs']} epochs, seed {s['seed']}; SGD-UAP "
             f"(l_inf) crafted on {s['num_craft']} training inputs, UER on {s['num_eval']} test inputs: the "
             f"worst over attack seeds {seeds}, their range in brackets. Step cost: a training step's time over "
             f"a plain step's ({record['cost_source']}).", "",
             "| defence | clean accuracy | " + " | ".join(f"UER eps {e}" for e in eps) + " | step cost x plain |",
             "|---|---:|" + "---:|" * len(eps) + "---:|"]
    for row in record["rows"]:
        cost = "" if row["step_cost"] is None else f"{row['step_cost']:.1f}"
        uers = " | ".join(f"{row['uer'][str(e)]:.3f} ({min(row['uer_by_seed'][str(e)]):.3f}-"
                          f"{max(row['uer_by_seed'][str(e)]):.3f})" for e in eps)
        lines.append(f"| {row['label']} | {row['clean_accuracy']:.3f} | {uers} | {cost} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workroot", default=os.path.join(ROOT, "runs", "defences"))
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "defences.json"))
    parser.add_argument("--only", default="", help="Comma-separated row names: " + ",".join(NAMES))
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0, help="The training seed.")
    parser.add_argument("--attack_seeds", default="0,1,2", help="Comma-separated attack.py --seed values.")
    parser.add_argument("--data_dir", default="")
    parser.add_argument("--cost", default=os.path.join(ROOT, "benchmarks", "results", "defences_cost.json"))
    parser.add_argument("--quick", action="store_true", help="Digits MLP, 1 epoch, small attack sets.")
    args = parser.parse_args(argv)
    try:
        return _main(args)
    except UserError as exc:
        print(f"defences.py: {exc}", file=sys.stderr)
        return 2


def _main(args: argparse.Namespace) -> int:
    only = [n for n in args.only.split(",") if n] or list(NAMES)
    unknown = sorted(set(only) - set(NAMES))
    if unknown:
        raise UserError(f"--only: unknown rows {', '.join(unknown)}; the rows are {', '.join(NAMES)}")
    if args.epochs < 1:
        raise UserError(f"--epochs must be at least 1, got {args.epochs}")
    try:
        attack_seeds = sorted({int(a) for a in args.attack_seeds.split(",")})
    except ValueError:
        raise UserError(f"--attack_seeds: comma-separated integers, got {args.attack_seeds!r}") from None
    settings = _settings(args)
    eps = [0.1, 0.2]
    cost_record = _read_json(args.cost) or {}
    ratios = cost_record.get("cost", {}).get("ratio_to_plain", {})
    same_model = (cost_record.get("cost", {}).get("dataset"), cost_record.get("cost", {}).get("model")) == \
        (settings["dataset"], settings["model"])
    record: Dict[str, Any] = {
        "settings": dict(settings, seed=args.seed, eps=eps, attack="sgd_uap", norm="linf",
                         attack_seeds=attack_seeds),
        "cost_source": (f"{os.path.relpath(args.cost, ROOT)}, python benchmarks/defences_cost.py --reps 5"
                        if same_model else "not measured for this model"),
        "rows": []}
    # Rows of the other defences already in --out (same settings) are kept: --only adds, never drops.
    previous = _read_json(args.out) or {}
    kept = {r["name"]: r for r in previous.get("rows", [])} if previous.get("settings") == record["settings"] else {}
    os.makedirs(args.workroot, exist_ok=True)
    for name, fields, cost_key, label in DEFENCES:
        if name not in only:
            if name in kept:
                record["rows"].append(kept[name])
            continue
        workdir = os.path.join(args.workroot, name)
        train_cmd, _ = commands(name, fields, args.workroot, settings, args.seed, eps, args.data_dir)
        attack_cmds = [commands(name, fields, args.workroot, settings, args.seed, eps, args.data_dir, a)[1]
                       for a in attack_seeds]
        expected = dict(fields, dataset=settings["dataset"], model=settings["model"],
                        num_epochs=settings["epochs"], seed=args.seed)
        log = workdir + ".log"
        summary = trained(workdir, expected)
        if summary is None:
            print(f"{name}: training", flush=True)
            _run(train_cmd, log)
            summary = trained(workdir, expected)
        if summary is None:
            raise UserError(f"{name}: train.py ended without a summary; see {log}")
        by_seed = []
        for attack_seed, attack_cmd in zip(attack_seeds, attack_cmds):
            uer = attacked(attack_dir(workdir, attack_seed), eps, settings, attack_seed)
            if uer is None:
                print(f"{name}: attacking, seed {attack_seed}", flush=True)
                _run(attack_cmd, log)
                uer = attacked(attack_dir(workdir, attack_seed), eps, settings, attack_seed)
            if uer is None:
                raise UserError(f"{name}: attack.py ended without its results; see {log}")
            by_seed.append(uer)
        uer_by_seed = {str(e): [u[str(e)] for u in by_seed] for e in eps}
        uer = {e: max(v) for e, v in uer_by_seed.items()}
        record["rows"].append({
            "name": name, "label": label, "config": fields, "clean_accuracy": summary["test_accuracy"],
            "uer": uer, "uer_by_seed": uer_by_seed, "step_cost": ratios.get(cost_key) if same_model else None,
            "train_seconds": summary.get("train_seconds"),
            "commands": [" ".join(["python"] + c) for c in [train_cmd] + attack_cmds]})
        _write(args.out, record)
        print(f"{name}: clean {summary['test_accuracy']:.4f}, worst UER "
              + ", ".join(f"eps {e}: {uer[str(e)]:.4f}" for e in eps), flush=True)
    _write(args.out, record)
    print(markdown(record))
    return 0


def _write(out: str, record: Dict[str, Any]) -> None:
    io.write_json_atomic(out, record)
    io.write_text_atomic(os.path.splitext(out)[0] + ".md", markdown(record))


if __name__ == "__main__":
    sys.exit(main())
