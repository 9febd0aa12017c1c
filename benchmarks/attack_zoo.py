"""Which UAP attack wins where: every attack of the zoo on two Fashion-MNIST CNNs, plus ART's UniversalPerturbation.

    python benchmarks/attack_zoo.py                        # trains a lambda-0 and a JR CNN (8 epochs), then attacks
    python benchmarks/attack_zoo.py --workdirs=A,B         # existing train.py workdirs instead
    python benchmarks/attack_zoo.py --quick                # digits MLPs, tiny sizes (the smoke test)
    python benchmarks/attack_zoo.py --table                # only rewrite the table from what is done

Per model, norm and attack seed, ``attack.py``'s job
(:func:`jacuap.evaluation.run_attacks`) runs ``--suite=zoo``, every attack and
variant of :data:`jacuap.attacks.ATTACKS` once (the margin-loss variants,
Cosine-UAP on data and on the range prior, GD-UAP with its three priors),
at l_inf eps 0.05, 0.1 and 0.2 and l2 eps 1 and 2 (pixel units), crafting on
``--num_craft`` training inputs and evaluating on the first ``--num_eval``
test inputs.  Each (model, norm, seed) is one output folder under
``--workroot``, so a killed run resumes row by row.  With the ``bench`` extra
(torch, adversarial-robustness-toolbox), ART's ``UniversalPerturbation``
with its ``fgsm`` and ``pgd`` attackers runs on a PyTorch copy of the same
weights (``benchmarks/torch_reference.from_flax``; CNNs only), l_inf only,
crafting on the first ``--art_craft`` of the same crafting inputs (it works
per sample); its UAP is scored by jacuap on the same evaluation inputs.

The table (``benchmarks/results/attack_zoo.md``, and ``.json`` with every
row): per model, norm, budget and attack, the mean UER and fooling rate over
the seeds with their range, the mean seconds, and how many seeds made it the
worst case (chosen on the crafting split: by UER, and by fooling rate).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from typing import Any, Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

from jacuap import configs, evaluation, io, metrics  # noqa: E402
from jacuap.train import checkpoints, train_and_evaluate  # noqa: E402

BUDGETS = {"linf": [0.05, 0.1, 0.2], "l2": [1.0, 2.0]}
QUICK_BUDGETS = {"linf": [0.1, 0.2], "l2": [1.0]}
ART_ATTACKERS = ("fgsm", "pgd")


def _train(workdir: str, dataset: str, model: str, jr_lambda: float, epochs: int) -> None:
    if os.path.isdir(workdir) and checkpoints.latest_step(workdir) is not None:
        return
    config = configs.get_config(dataset)
    configs.override(config, model=model, jr_lambda=jr_lambda, num_epochs=epochs, progress=False,
                     eval_num_inputs=100)
    print(f"training {dataset} {model} jr_lambda={jr_lambda:g} for {epochs} epochs in {workdir}", flush=True)
    train_and_evaluate(config, workdir)


def _art_rows(workdir: str, eps_list: List[float], seeds: List[int], num_craft: int, num_eval: int,
              out: Dict[str, Any], save) -> None:
    """ART's UniversalPerturbation (fgsm, pgd attackers) on the torch twin of a jacuap CNN, l_inf."""
    try:
        import torch
        from art.attacks.evasion import UniversalPerturbation
        from art.estimators.classification import PyTorchClassifier
    except ImportError:
        out["art_note"] = "ART rows skipped: install the bench extra (torch, adversarial-robustness-toolbox)"
        return
    from benchmarks import torch_reference as tr

    model = evaluation.restore(workdir)
    spec = model.restored.meta["model_spec"]
    if spec["name"] != "cnn":
        out["art_note"] = f"ART rows need the cnn (a torch twin exists for it only), not {spec['name']}"
        return
    torch.set_num_threads(1)
    shape = tuple(spec["image_shape"])
    twin = tr.from_flax(model.restored.params, spec["mean"], spec["std"], shape).eval()
    for p in twin.parameters():
        p.requires_grad_(False)
    classifier = PyTorchClassifier(model=twin, loss=torch.nn.CrossEntropyLoss(), input_shape=(shape[2],) + shape[:2],
                                   nb_classes=spec["num_classes"], clip_values=(0.0, 1.0), device_type="cpu")
    nchw = lambda a: np.ascontiguousarray(np.asarray(a, np.float32).transpose(0, 3, 1, 2))
    for seed in seeds:
        request = evaluation.AttackRequest(workdir=workdir, attacks=["sgd_uap"], norm="linf", eps=[0.1], out="-",
                                           num_craft=num_craft, num_eval=num_eval, seed=seed, progress=False)
        x_craft, _, x_eval, y_eval = evaluation.craft_and_eval_sets(model.dataset, request)
        for attacker in ART_ATTACKERS:
            for eps in eps_list:
                key = f"art_{attacker}|linf|{eps:g}|{seed}"
                if key in out["art"]:
                    continue
                random.seed(seed)
                np.random.seed(seed)
                params = {"eps": eps / 4} if attacker == "fgsm" else {"eps": eps, "eps_step": eps / 4, "max_iter": 10, "verbose": False}
                attack = UniversalPerturbation(classifier, attacker=attacker, attacker_params=params, eps=eps,
                                               norm=np.inf, max_iter=5, delta=0.2, batch_size=500, verbose=False)
                start = time.perf_counter()
                attack.generate(nchw(x_craft[:num_craft]))
                seconds = time.perf_counter() - start
                v = np.asarray(attack.noise, np.float32)[0].transpose(1, 2, 0)
                v = np.clip(v, -eps, eps)  # ART projects; this only removes float noise at the boundary
                out["art"][key] = {
                    "attack": f"art_{attacker}", "norm": "linf", "eps": eps, "seed": seed, "seconds": seconds,
                    "uer": metrics.universal_evasion_rate(model.apply_fn, model.params, x_eval, y_eval, v),
                    "fooling_rate": metrics.fooling_rate(model.apply_fn, model.params, x_eval, v),
                    "num_craft": int(min(num_craft, len(x_craft))), "attacker_params": params,
                    "settings": "UniversalPerturbation(max_iter=5, delta=0.2), per sample"}
                print(f"  {key}: UER {out['art'][key]['uer']:.3f} in {seconds:.0f} s", flush=True)
                save()


def summarise(runs: Dict[str, Any], art: Dict[str, Any]) -> List[Dict[str, Any]]:
    """One line per (model, norm, eps, attack): means and ranges over seeds, worst-case counts."""
    cells: Dict[tuple, Dict[str, Any]] = {}
    for run in runs.values():
        results = run["results"]
        for row in results["results"]:
            cell = cells.setdefault((run["model"], row["norm"], row["eps"], row["attack"]),
                                    {"uer": [], "fooling_rate": [], "seconds": [], "worst_by_uer": 0,
                                     "worst_by_fooling_rate": 0})
            for k in ("uer", "fooling_rate", "seconds"):
                cell[k].append(row[k])
        for by, key in evaluation.WORST_CASE_BY.items():
            for w in results.get(key) or []:
                cells[(run["model"], results["config"]["norm"], w["eps"], w["attack"])][
                    "worst_by_" + by] += 1
    for row in art.values():
        cell = cells.setdefault((row["model"], row["norm"], row["eps"], row["attack"]),
                                {"uer": [], "fooling_rate": [], "seconds": [], "worst_by_uer": None,
                                 "worst_by_fooling_rate": None})
        for k in ("uer", "fooling_rate", "seconds"):
            cell[k].append(row[k])
    lines = []
    for (model, norm, eps, attack), c in sorted(cells.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2])):
        lines.append({"model": model, "norm": norm, "eps": eps, "attack": attack, "seeds": len(c["uer"]),
                      "uer": float(np.mean(c["uer"])), "uer_range": [min(c["uer"]), max(c["uer"])],
                      "fooling_rate": float(np.mean(c["fooling_rate"])),
                      "fooling_rate_range": [min(c["fooling_rate"]), max(c["fooling_rate"])],
                      "seconds": float(np.mean(c["seconds"])), "worst_by_uer": c["worst_by_uer"],
                      "worst_by_fooling_rate": c["worst_by_fooling_rate"]})
    return lines


# The families of the zoo's rows, for the "who wins where" table: each question a reader asks (is the
# standard ensemble enough? does the margin loss help? what does an attacker without data reach?) is the
# best row of one family.
FAMILIES = (
    ("standard suite", lambda a: a in {m.name for m in evaluation.SUITES["standard"].members}),
    ("margin loss", lambda a: a.endswith("_margin")),
    ("label-free on data", lambda a: a in ("cosine_uap", "fg_uap", "layer_max", "gd_uap_data")),
    ("data-free", lambda a: a in ("gd_uap", "gd_uap_range", "cosine_uap_range")),
    ("generative", lambda a: a == "gap_uap"),
    ("ART", lambda a: a.startswith("art_")),
)


def winners(lines: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Per (model, norm, eps): the best row overall and the best of each family, by mean evaluation UER."""
    groups: Dict[tuple, List[Dict[str, Any]]] = {}
    for line in lines:
        groups.setdefault((line["model"], line["norm"], line["eps"]), []).append(line)
    out = []
    for (model, norm, eps), group in groups.items():
        best = max(group, key=lambda g: g["uer"])
        row = {"model": model, "norm": norm, "eps": eps, "seeds": max(g["seeds"] for g in group),
               "best": (best["attack"], best["uer"]), "families": {}}
        for family, member in FAMILIES:
            rows = [g for g in group if member(g["attack"])]
            if rows:
                top = max(rows, key=lambda g: g["uer"])
                row["families"][family] = (top["attack"], top["uer"])
        out.append(row)
    return out


def winners_markdown(lines: List[Dict[str, Any]]) -> List[str]:
    out = ["## Who wins where", "",
           "Per budget: the attack with the highest mean evaluation UER, then the best of each family "
           "(`attack` UER). Standard suite: " + ", ".join(m.name for m in evaluation.SUITES["standard"].members)
           + "; data-free: GD-UAP without data or on the range prior, Cosine-UAP on the range prior; label-free "
           "on data: Cosine-UAP, FG-UAP, the layer-maximising UAP, GD-UAP's data prior.", "",
           "| model | budget | seeds | best | " + " | ".join(f for f, _ in FAMILIES) + " |",
           "|---|---|---:|---|" + "---|" * len(FAMILIES)]
    for w in winners(lines):
        hits = [w["families"].get(family) for family, _ in FAMILIES]
        cells = [f"`{hit[0]}` {hit[1]:.3f}" if hit else "-" for hit in hits]
        out.append(f"| {w['model']} | {w['norm']} {w['eps']:g} | {w['seeds']} | `{w['best'][0]}` {w['best'][1]:.3f} | "
                   + " | ".join(cells) + " |")
    return out + [""]


def worst_counts(lines: List[Dict[str, Any]]) -> List[tuple]:
    """``(attack, by UER, by fooling rate)``: how many (model, budget, seed) each attack was the worst case of,
    most first; attacks never the worst case (and ART's, which no suite ranks) are left out.

    >>> worst_counts([{"attack": "a", "worst_by_uer": 1, "worst_by_fooling_rate": 2},
    ...               {"attack": "b", "worst_by_uer": 3, "worst_by_fooling_rate": 2},
    ...               {"attack": "a", "worst_by_uer": 0, "worst_by_fooling_rate": 0},
    ...               {"attack": "art_fgsm", "worst_by_uer": None, "worst_by_fooling_rate": None}])
    [('b', 3, 2), ('a', 1, 2)]
    """
    counts: Dict[str, List[int]] = {}
    for line in lines:
        if line.get("worst_by_uer") is not None:
            c = counts.setdefault(line["attack"], [0, 0])
            c[0] += line["worst_by_uer"]
            c[1] += line["worst_by_fooling_rate"] or 0
    return sorted(((a, u, f) for a, (u, f) in counts.items() if u or f), key=lambda t: (-t[1], -t[2], t[0]))


def worst_counts_markdown(lines: List[Dict[str, Any]]) -> List[str]:
    counts = worst_counts(lines)
    total = sum(u for _, u, _ in counts)
    return (["## How often each attack was the worst case", "",
             f"Over all {total} (model, budget, seed), chosen on the crafting split; every attack not listed "
             "was never the worst case.", "", "| attack | by UER | by fooling rate |", "|---|---:|---:|"]
            + [f"| {a} | {u} | {f} |" for a, u, f in counts] + [""])


def markdown(lines: List[Dict[str, Any]], info: Dict[str, Any]) -> str:
    out = [f"# The UAP attack zoo ({info['dataset']})", "",
           f"`python benchmarks/attack_zoo.py {' '.join(info['argv'])}`: {info['num_craft']} crafting "
           f"(training) inputs, {info['num_eval']} evaluation (test) inputs, attack seeds {info['seeds']}; "
           "UER and fooling rate on the evaluation inputs, mean (min-max) over the seeds; 'worst' counts the "
           "seeds whose worst case (chosen on the crafting split) was this attack, by UER / by fooling rate. "
           f"Load average at start {info['loadavg_at_start']}. Seconds are wall time on a machine shared "
           "with other jobs: compare them within a row's order of magnitude only.", ""]
    out += winners_markdown(lines)
    out += worst_counts_markdown(lines)
    groups: Dict[tuple, List[Dict[str, Any]]] = {}
    for line in lines:
        groups.setdefault((line["model"], line["norm"], line["eps"]), []).append(line)
    for (model, norm, eps), group in groups.items():
        out += [f"## {model}, {norm} eps {eps:g}", "",
                "| attack | UER | fooling rate | seconds | worst (UER / FR) |", "|---|---:|---:|---:|---:|"]
        for g in sorted(group, key=lambda g: -g["uer"]):
            worst = "-" if g["worst_by_uer"] is None else f"{g['worst_by_uer']} / {g['worst_by_fooling_rate']}"
            out.append(f"| {g['attack']} | {g['uer']:.3f} ({g['uer_range'][0]:.3f}-{g['uer_range'][1]:.3f}) | "
                       f"{g['fooling_rate']:.3f} ({g['fooling_rate_range'][0]:.3f}-{g['fooling_rate_range'][1]:.3f})"
                       f" | {g['seconds']:.1f} | {worst} |")
        out.append("")
    return "\n".join(out)


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="digits MLPs, 256 crafting / 200 evaluation inputs")
    p.add_argument("--workdirs", default="", help="comma list of train.py workdirs (default: train two)")
    p.add_argument("--epochs", type=int, default=8, help="training epochs of the two default models")
    p.add_argument("--jr_lambda", type=float, default=0.1, help="the JR model's lambda")
    p.add_argument("--seeds", default="0,1,2", help="attack seeds")
    p.add_argument("--norms", default="linf,l2")
    p.add_argument("--num_craft", type=int, default=None, help="crafting inputs (default 5000)")
    p.add_argument("--num_eval", type=int, default=None, help="evaluation inputs (default 10000)")
    p.add_argument("--art_craft", type=int, default=None, help="ART's crafting inputs (default 1000)")
    p.add_argument("--no_art", action="store_true")
    p.add_argument("--table", action="store_true", help="only rewrite the table from the finished runs")
    p.add_argument("--workroot", default=os.path.join(ROOT, "runs", "attack_zoo"))
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "attack_zoo"),
                   help="results stem: <out>.json and <out>.md")
    args = p.parse_args(argv)
    dataset = "digits" if args.quick else "fashion_mnist"
    num_craft = args.num_craft or (256 if args.quick else 5000)
    num_eval = args.num_eval or (200 if args.quick else 10000)
    art_craft = args.art_craft or (64 if args.quick else 1000)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    budgets = QUICK_BUDGETS if args.quick else BUDGETS
    norms = [n for n in args.norms.split(",") if n]
    unknown = [n for n in norms if n not in budgets]
    if unknown:
        p.error(f"unknown norm {unknown[0]}; choose from {', '.join(budgets)}")
    if args.workdirs:
        models = {os.path.basename(os.path.normpath(w)): w for w in args.workdirs.split(",") if w}
    else:
        arch, epochs = ("mlp", 10) if args.quick else ("cnn", args.epochs)
        models = {f"{arch}_jr0": os.path.join(args.workroot, f"{arch}_jr0"),
                  f"{arch}_jr{args.jr_lambda:g}": os.path.join(args.workroot, f"{arch}_jr{args.jr_lambda:g}")}
        if not args.table:
            for name, workdir in models.items():
                _train(workdir, dataset, arch, 0.0 if name.endswith("_jr0") else args.jr_lambda, epochs)
    path = args.out + ".json"
    try:
        with open(path) as f:
            state = json.load(f)
    except (OSError, ValueError):
        state = {}
    info = {"dataset": dataset, "num_craft": num_craft, "num_eval": num_eval, "seeds": seeds,
            "budgets": {n: budgets[n] for n in norms}, "models": models,
            "argv": sys.argv[1:] if argv is None else list(argv),
            "loadavg_at_start": [round(x, 2) for x in os.getloadavg()]}
    if args.table and state.get("info"):
        info = state["info"]  # the table is rewritten from the runs that made it: their command and load
    state.update(info=info)
    state.setdefault("runs", {})
    state.setdefault("art", {})

    def save():
        state["table"] = summarise(state["runs"], {k: {**r, "model": r.get("model")} for k, r in state["art"].items()})
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        io.write_json_atomic(path, state)
        io.write_text_atomic(args.out + ".md", markdown(state["table"], info) + "\n")

    if not args.table:
        # Resuming on a retrained model (a new machine has no runs/) is safe only if it is the same model.
        for name, workdir in models.items():
            recorded = {r["results"]["config"]["model_fingerprint"] for r in state["runs"].values()
                        if r["model"] == name}
            if recorded:
                now = evaluation.store.model_fingerprint(checkpoints.restore_model(workdir).params)
                if recorded != {now}:
                    sys.exit(f"attack_zoo.py: error: {name} in {workdir} ({now}) is not the model of the recorded "
                             f"runs ({', '.join(sorted(recorded))}); move {path} away to start afresh")
        for name, workdir in models.items():
            for norm in norms:
                for seed in seeds:
                    key = f"{name}|{norm}|{seed}"
                    if key in state["runs"]:
                        continue
                    out = os.path.join(args.workroot, "runs", name, f"{norm}_seed{seed}")
                    request = evaluation.AttackRequest(workdir=workdir, attacks=[], suite="zoo", norm=norm,
                                                       eps=budgets[norm], out=out, num_craft=num_craft,
                                                       num_eval=num_eval, num_metrics=0, seed=seed, progress=False)
                    start = time.perf_counter()
                    print(f"{key}: zoo suite into {out}", flush=True)
                    results = evaluation.run_attacks(request, log=lambda line: print("  " + line, flush=True))
                    state["runs"][key] = {"model": name, "norm": norm, "seed": seed, "seconds": time.perf_counter() - start,
                                          "results": results}
                    save()
            if not args.no_art and "linf" in norms:
                art: Dict[str, Any] = {}
                known = {k: v for k, v in state["art"].items() if v.get("model") == name}
                art.update({k.split("|", 1)[1]: v for k, v in known.items()})
                bucket = {"art": art}

                def save_art():
                    for k, v in bucket["art"].items():
                        state["art"][f"{name}|{k}"] = {**v, "model": name}
                    if "art_note" in bucket:
                        state["art_note"] = bucket["art_note"]
                    save()

                _art_rows(workdir, budgets["linf"], seeds, art_craft, num_eval, bucket, save_art)
                save_art()
    save()
    print(markdown(state["table"], info))
    return state


if __name__ == "__main__":
    main()
