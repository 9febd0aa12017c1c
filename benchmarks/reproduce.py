"""Reproduces the paper's experiments: JR lambda sweep vs UAPs, with two baselines.

    python benchmarks/reproduce.py                 # full sweep, fashion_mnist and mnist
    python benchmarks/reproduce.py --quick         # reduced sweep, < ~10 min on 2 CPU cores
    python benchmarks/reproduce.py --datasets=cifar10

For each dataset: trains one model per ``jr_lambda`` (default 0, 0.01, 0.05,
0.1, 0.5, 1.0) plus universal adversarial training (``uat``, Shafahi et al.
2020) and PGD adversarial training (``pgd``, Madry et al. 2018), all with the
same seed and schedule; attacks each with SGD-UAP, the singular-vector UAP and
DeepFool-UAP over an l_inf eps sweep (crafted on training inputs, evaluated on
the test set); measures the Jacobian metrics on a fixed test sample; and writes
``<out>/<dataset>.json``, ``<out>/<dataset>.md`` and PNG plots.  Work already
done (a trained workdir with its summary.json, an attack results.json with
the same request) is reused, so an interrupted run resumes.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from absl import app, flags  # noqa: E402

from jacuap.configs import default  # noqa: E402
from jacuap import attack_run, cli, data, metrics  # noqa: E402
from jacuap.train import train_and_evaluate  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("datasets", ["fashion_mnist", "mnist"], "Datasets to run (skipped with a note when absent).")
flags.DEFINE_bool("quick", False, "Reduced sweep (MLP, 2 epochs, 3 lambdas, small attack sets).")
flags.DEFINE_string("out", os.path.join(ROOT, "results"), "Where the tables, JSON and plots go.")
flags.DEFINE_string("workroot", os.path.join(ROOT, "runs", "reproduce"), "Where the models are trained.")
flags.DEFINE_list("lambdas", None, "Override the lambda sweep.")
flags.DEFINE_list("eps", None, "Override the l_inf eps sweep.")
flags.DEFINE_integer("epochs", None, "Override the training epochs.")
flags.DEFINE_bool("baselines", True, "Also train the UAT and PGD-AT baselines.")
flags.DEFINE_bool("progress", True, "Progress bars.")

UNIVERSAL = ("sgd_uap", "sv_uap", "deepfool_uap")  # the sweep's attacks (RESULTS.md); the suite adds SGA and restarts
METRICS = ("mean_frobenius_sq", "stacked_spectral_norm", "mean_spectral_norm_sq", "universality_ratio",
           "shared_perturbation_strength", "jacobian_cosine", "gram_cosine")


def sweep(dataset: str, quick: bool) -> Dict[str, Any]:
    """The experiment's settings for one dataset."""
    color = dataset == "cifar10"
    s = {
        "model": "resnet" if color else "cnn",
        "epochs": 30 if color else 4,
        "lambdas": [0.0, 0.01, 0.05, 0.1, 0.5, 1.0],
        "eps": [2 / 255, 4 / 255, 8 / 255, 16 / 255] if color else [0.02, 0.05, 0.1, 0.15, 0.2, 0.3],
        "adv_eps": 8 / 255 if color else 0.1,
        "pgd_steps": 3,
        "num_craft": 5000,
        "num_craft_deepfool": 500,
        "deepfool_passes": 2,
        "num_eval": 10000,
        "num_metrics": 1000,
        "sgd_epochs": 5,
    }
    if quick:
        s.update(model="resnet_tiny" if color else "mlp", epochs=2, lambdas=[0.0, 0.1, 1.0],
                 eps=s["eps"][1::2], num_craft=2000, num_craft_deepfool=500, deepfool_passes=2,
                 num_eval=2000, num_metrics=300, sgd_epochs=3)
    if FLAGS.lambdas:
        s["lambdas"] = [float(v) for v in FLAGS.lambdas]
    if FLAGS.eps:
        s["eps"] = [float(v) for v in FLAGS.eps]
    if FLAGS.epochs:
        s["epochs"] = FLAGS.epochs
    return s


def model_configs(dataset: str, s: Dict[str, Any]) -> Dict[str, Any]:
    """name -> ConfigDict: the lambda sweep, then the two baselines."""
    out = {}

    def base(**kw):
        config = default.get_config()
        config.update(dataset=dataset, model=s["model"], num_epochs=s["epochs"], progress=False, **kw)
        if s["model"] == "resnet":
            config.update(optimizer="sgd", learning_rate=0.1)
        return config

    for lam in s["lambdas"]:
        out[f"jr_{lam:g}"] = base(jr_lambda=lam)
    if FLAGS.baselines:
        out["uat"] = base(jr_lambda=0.0, adv_training="uat", adv_eps=s["adv_eps"])
        out["pgd_at"] = base(jr_lambda=0.0, adv_training="pgd", adv_eps=s["adv_eps"], adv_steps=s["pgd_steps"])
    return out


def train(name: str, config, workdir: str) -> Dict[str, Any]:
    """Trains (or resumes, or reuses) one model; returns its summary."""
    path = os.path.join(workdir, "summary.json")
    if os.path.exists(path):
        summary = json.load(open(path))
        if summary.get("num_epochs") == config.num_epochs:
            print(f"  {name}: trained already ({workdir})", flush=True)
            return summary
    print(f"  {name}: training {config.model}, {config.num_epochs} epochs, lambda={config.jr_lambda:g}, "
          f"adv={config.adv_training}", flush=True)
    start = time.time()
    summary = train_and_evaluate(config, workdir)
    print(f"  {name}: test accuracy {summary['test_accuracy']:.4f} in {time.time() - start:.0f}s", flush=True)
    return summary


def attack(name: str, workdir: str, s: Dict[str, Any]) -> Dict[str, Any]:
    """SGD-UAP and SV-UAP on ``num_craft`` inputs, DeepFool-UAP on fewer; reused when done."""
    groups = [
        ("uap", ["sgd_uap", "sv_uap"], s["num_craft"], s["num_metrics"]),
        ("deepfool", ["deepfool_uap"], s["num_craft_deepfool"], 0),
    ]
    merged: Dict[str, Any] = {"results": [], "metrics": {}}
    for tag, names, num_craft, num_metrics in groups:
        request = attack_run.AttackRequest(
            workdir=workdir, attacks=names, norm="linf", eps=s["eps"], out=os.path.join(workdir, f"attack_{tag}"),
            num_craft=num_craft, num_eval=s["num_eval"], num_metrics=num_metrics, sgd_epochs=s["sgd_epochs"],
            deepfool_passes=s["deepfool_passes"], progress=FLAGS.progress,
            overwrite=True)  # the same request resumes; another (a changed sweep) replaces the old outputs
        path = os.path.join(request.out, "results.json")
        done = None
        if os.path.exists(path):
            done = json.load(open(path))
            c = done["config"]
            if not (c["attacks"] == names and c["eps"] == list(s["eps"]) and c["num_craft"] <= num_craft
                    and c["num_eval"] <= s["num_eval"] and c["checkpoint_step"] is not None):
                done = None
        if done is None:
            start = time.time()
            done = attack_run.run_attacks(request)
            print(f"  {name}: {', '.join(names)} in {time.time() - start:.0f}s", flush=True)
        merged["results"] += done["results"]
        merged["metrics"].update(done["metrics"])
    return merged


def eps_at_half(eps: Sequence[float], uer: Sequence[float]) -> Optional[float]:
    """The eps at which UER first reaches 0.5, linearly interpolated; None if never."""
    prev_e, prev_u = 0.0, None
    for e, u in zip(eps, uer):
        if u >= 0.5:
            if prev_u is None or prev_u >= 0.5:
                return e
            return prev_e + (0.5 - prev_u) * (e - prev_e) / (u - prev_u)
        prev_e, prev_u = e, u
    return None


def analyse(dataset: str, s: Dict[str, Any], models: Dict[str, Any]) -> Dict[str, Any]:
    """Tables, robustness factors and correlations from the per-model results."""
    eps = list(s["eps"])
    for m in models.values():
        m["uer"] = {a: [next(r["uer"] for r in m["attack"]["results"] if r["attack"] == a and r["eps"] == e)
                        for e in eps] for a in UNIVERSAL}
        m["eps50"] = {a: eps_at_half(eps, m["uer"][a]) for a in UNIVERSAL}
    base = models.get("jr_0")
    factors = {}
    if base is not None:
        for name, m in models.items():
            if name == "jr_0":
                continue
            factors[name] = {
                a: {
                    "uer_ratio": [(b / u if u > 0 else None) for b, u in zip(base["uer"][a], m["uer"][a])],
                    "eps50_ratio": (m["eps50"][a] / base["eps50"][a]
                                    if m["eps50"][a] and base["eps50"][a] else None),
                }
                for a in UNIVERSAL
            }
    # Correlation of each metric with UER across models, per attack, at each eps.
    corr = {}
    names = list(models)
    for a in UNIVERSAL:
        corr[a] = {}
        for key in METRICS:
            values = [models[n]["attack"]["metrics"].get(key) for n in names]
            per_eps = []
            for i, e in enumerate(eps):
                uer = [models[n]["uer"][a][i] for n in names]
                per_eps.append({"eps": e, "pearson": _safe(metrics.pearson, values, uer),
                                "spearman": _safe(metrics.spearman, values, uer)})
            corr[a][key] = per_eps
    return {"factors": factors, "correlations": corr}


def _safe(fn, a, b):
    try:
        value = fn(a, b)
        return None if value is None or not math.isfinite(value) else float(value)
    except Exception:  # constant input: undefined correlation
        return None


def write_report(dataset: str, s: Dict[str, Any], models: Dict[str, Any], analysis: Dict[str, Any],
                 seconds: float, out: str) -> None:
    os.makedirs(out, exist_ok=True)
    eps = list(s["eps"])
    record = {"dataset": dataset, "settings": s, "seconds": seconds, "analysis": analysis,
              "models": {n: {"summary": m["summary"], "uer": m["uer"], "eps50": m["eps50"],
                             "metrics": {k: m["attack"]["metrics"].get(k) for k in METRICS},
                             "results": m["attack"]["results"]} for n, m in models.items()}}
    with open(os.path.join(out, f"{dataset}.json.tmp"), "w") as f:
        json.dump(record, f, indent=1)
    os.replace(os.path.join(out, f"{dataset}.json.tmp"), os.path.join(out, f"{dataset}.json"))

    lines = [f"# {dataset}: Jacobian regularization vs universal perturbations", "",
             f"Model `{s['model']}`, {s['epochs']} epochs, seed 0; UAPs crafted on {s['num_craft']} training "
             f"inputs ({s['num_craft_deepfool']} for DeepFool-UAP), evaluated on {s['num_eval']} test inputs; "
             f"l_inf. Wall time {seconds / 60:.1f} min.", "",
             "## Clean accuracy and Jacobian metrics", "",
             "| model | clean acc | Δ vs λ=0 | mean ‖J‖²_F | σ_max(J_X) | universality | s_ij | Frob. cos | Gram cos |",
             "|---|---|---|---|---|---|---|---|---|"]
    base_acc = models["jr_0"]["summary"]["test_accuracy"] if "jr_0" in models else None
    for n, m in models.items():
        mt = m["attack"]["metrics"]
        acc = m["summary"]["test_accuracy"]
        delta = f"{100 * (acc - base_acc):+.2f} pt" if base_acc is not None else "-"
        lines.append(f"| {n} | {acc:.4f} | {delta} | {mt['mean_frobenius_sq']:.3g} | "
                     f"{mt['stacked_spectral_norm']:.3g} | {mt['universality_ratio']:.3f} | "
                     f"{mt['shared_perturbation_strength']:.3f} | {mt['jacobian_cosine']:.3f} | "
                     f"{mt['gram_cosine']:.3f} |")
    for a in UNIVERSAL:
        lines += ["", f"## UER of {a} by eps", "",
                  "| model | " + " | ".join(f"{e:.3g}" for e in eps) + " | eps at UER 50% |",
                  "|---|" + "---|" * (len(eps) + 1)]
        for n, m in models.items():
            e50 = m["eps50"][a]
            lines.append(f"| {n} | " + " | ".join(f"{u:.3f}" for u in m["uer"][a]) +
                         f" | {e50:.3g} |" if e50 else f"| {n} | " + " | ".join(f"{u:.3f}" for u in m["uer"][a]) +
                         " | > max |")
    if analysis["factors"]:
        for a in UNIVERSAL:
            lines += ["", f"## Robustness factor vs λ=0 ({a}): UER(λ=0) / UER(model), and eps50 ratio", "",
                      "| model | " + " | ".join(f"{e:.3g}" for e in eps) + " | eps50 ratio |",
                      "|---|" + "---|" * (len(eps) + 1)]
            for n, f in analysis["factors"].items():
                r = f[a]
                cells = " | ".join("-" if v is None else f"{v:.2f}" for v in r["uer_ratio"])
                e50 = "-" if r["eps50_ratio"] is None else f"{r['eps50_ratio']:.2f}"
                lines.append(f"| {n} | {cells} | {e50} |")
    lines += ["", "## Correlation of each metric with UER across the models", "",
              "Pearson / Spearman, per attack, at each eps.", ""]
    for a in UNIVERSAL:
        lines += [f"### {a}", "", "| metric | " + " | ".join(f"{e:.3g}" for e in eps) + " |",
                  "|---|" + "---|" * len(eps)]
        for key in METRICS:
            cells = " | ".join(_pair(c) for c in analysis["correlations"][a][key])
            lines.append(f"| {key} | {cells} |")
        lines.append("")
    with open(os.path.join(out, f"{dataset}.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    plot(dataset, s, models, analysis, out)


def _pair(c):
    p = "-" if c["pearson"] is None else f"{c['pearson']:+.2f}"
    r = "-" if c["spearman"] is None else f"{c['spearman']:+.2f}"
    return f"{p} / {r}"


def plot(dataset, s, models, analysis, out):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    eps = s["eps"]
    fig, axes = plt.subplots(1, len(UNIVERSAL), figsize=(5 * len(UNIVERSAL), 4), sharey=True)
    for ax, a in zip(axes, UNIVERSAL):
        for n, m in models.items():
            ax.plot(eps, m["uer"][a], marker="o", label=n, linestyle="--" if not n.startswith("jr_") else "-")
        ax.set_title(f"{dataset}: {a}")
        ax.set_xlabel("l_inf eps")
        ax.axhline(0.5, color="grey", lw=0.5)
    axes[0].set_ylabel("universal evasion rate")
    axes[-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out, f"{dataset}_uer_vs_eps.png"), dpi=90)
    plt.close(fig)

    jr = [(m["summary"]["jr_lambda"], m["summary"]["test_accuracy"]) for n, m in models.items() if n.startswith("jr_")]
    fig, ax = plt.subplots(figsize=(4.5, 3.5))
    xs = [max(l, 1e-3) for l, _ in jr]
    ax.plot(xs, [a for _, a in jr], marker="o")
    ax.set_xscale("log")
    ax.set_xlabel("jr_lambda (0 drawn at 1e-3)")
    ax.set_ylabel("clean test accuracy")
    ax.set_title(dataset)
    fig.tight_layout()
    fig.savefig(os.path.join(out, f"{dataset}_accuracy_vs_lambda.png"), dpi=90)
    plt.close(fig)

    ref = len(eps) // 2
    fig, axes = plt.subplots(1, len(METRICS), figsize=(3.2 * len(METRICS), 3.2))
    for ax, key in zip(axes, METRICS):
        xs = [m["attack"]["metrics"][key] for m in models.values()]
        ys = [m["uer"]["sgd_uap"][ref] for m in models.values()]
        ax.scatter(xs, ys)
        for n, x_, y_ in zip(models, xs, ys):
            ax.annotate(n, (x_, y_), fontsize=6)
        c = analysis["correlations"]["sgd_uap"][key][ref]
        ax.set_title(f"{key}\nr={_fmt(c['pearson'])} rho={_fmt(c['spearman'])}", fontsize=8)
        if key in ("mean_frobenius_sq", "stacked_spectral_norm", "mean_spectral_norm_sq"):
            ax.set_xscale("log")
        ax.set_ylabel(f"SGD-UAP UER, eps={eps[ref]:.3g}", fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out, f"{dataset}_metrics_vs_uer.png"), dpi=90)
    plt.close(fig)


def _fmt(v):
    return "-" if v is None else f"{v:+.2f}"


def run_dataset(dataset: str) -> bool:
    s = sweep(dataset, FLAGS.quick)
    try:
        data.load_dataset(dataset)
    except data.DataError as exc:
        print(f"{dataset}: skipped ({exc})", flush=True)
        return False
    tag = "quick" if FLAGS.quick else "full"
    print(f"== {dataset} ({tag}): {s['model']}, lambdas {s['lambdas']}, eps {[round(e, 4) for e in s['eps']]}",
          flush=True)
    start = time.time()
    models = {}
    for name, config in model_configs(dataset, s).items():
        workdir = os.path.join(FLAGS.workroot, tag, dataset, name)
        summary = train(name, config, workdir)
        models[name] = {"summary": summary, "attack": attack(name, workdir, s)}
    analysis = analyse(dataset, s, models)
    out = os.path.join(FLAGS.out, tag) if FLAGS.quick else FLAGS.out
    write_report(dataset, s, models, analysis, time.time() - start, out)
    print(f"{dataset}: wrote {out}/{dataset}.md, .json and PNGs in {(time.time() - start) / 60:.1f} min", flush=True)
    return True


def main(argv):
    if len(argv) > 1:
        cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")
    with cli.user_errors():
        unknown = [d for d in FLAGS.datasets if d not in data.DATASETS]
        if unknown:
            cli.fail(f"unknown dataset {', '.join(unknown)}; choose from {', '.join(data.DATASETS)}")
        done = [run_dataset(d) for d in FLAGS.datasets]
    if not any(done):
        cli.fail("no dataset could be loaded", code=1)


if __name__ == "__main__":
    sys.exit(cli.run(main))
