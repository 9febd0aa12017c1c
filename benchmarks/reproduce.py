"""The reproduction: JR and six other defences against UAPs, trained to convergence, several seeds, intervals.

    python benchmarks/reproduce.py                       # the sweep (Fashion-MNIST; MNIST, CIFAR-10 if present)
    python benchmarks/reproduce.py --max_models=4        # at most 4 new models this run, then stop (rerun continues)
    python benchmarks/reproduce.py --plan                # what the sweep trains, and what is done, then exit
    python benchmarks/reproduce.py --quick --datasets=digits   # the whole pipeline at toy sizes, under runs/

Per dataset and architecture the sweep runs in stages (benchmarks/reproduction/plan.py):
the schedule (lambda 0 at E and 2E epochs until the validation accuracy
moves by less than 0.3 points), the JR grid (lambda 0, 0.01, 0.05, 0.1, 0.5,
1; seed 0), lambda* chosen on the validation split (the largest lambda
within 1 point of lambda 0's accuracy), the claims' extra seeds (lambda 0 and
lambda*), then the defences' grids, their strengths chosen on the validation
split, and their extra seeds.  The transfer matrix between lambda 0 and every
chosen strength (``transfer.json``), one model each (the lowest claim seed
whose model is here or in the store), grows as each group's strengths are
chosen, before that group's extra seeds, and once more at the end.  The
bound step adds ``test.bound`` (the paper's Jacobian bound beside what the
worst-case UAPs do: benchmarks/reproduction/bound_records.py) to every
record whose model is here, from its checkpoint and saved UAPs, without
training or attacking (also with --max_models=0; --nobounds skips it; --plan
lists the records it cannot measure here).  Every finished model is a JSON
record under ``<out>/<dataset>/models/`` (benchmarks/reproduction/records.py) with its
parameters' fingerprint and per-input outcomes; a rerun, on any machine,
skips finished records and resumes a model cut short (its training and each
attack row resume on their own).  The workdirs (``--workroot``) are not
committed, so each finished model's parameters and suite UAPs are, beside its
record (``<out>/<dataset>/weights/``: benchmarks/reproduction/model_store.py;
--nostore_weights skips it), and the steps above restore a missing workdir
from there when they need it: a fresh clone can still run them.  The
analysis (claims with bootstrap intervals: benchmarks/reproduction/report.py;
tables and plots: render.py) is rewritten from all the records there after every model, into ``<out>/<dataset>.md``,
``<out>/<dataset>.json`` and ``<out>/<dataset>_*.png``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
from absl import flags  # noqa: E402

from jacuap import cli, data, io  # noqa: E402
from benchmarks.reproduction import plan as plans, records  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("datasets", ["fashion_mnist", "mnist", "cifar10"],
                  "Datasets to run; one whose files are absent is skipped with a note.")
flags.DEFINE_bool("quick", False, "The whole pipeline at toy sizes (an MLP, two methods, two seeds).")
DEFAULT_OUT = os.path.join(ROOT, "results")
# --quick's toy-sized records never go where the sweep's are: their own git-ignored folder.
QUICK_ROOT = os.path.join(ROOT, "runs", "reproduce_quick")
flags.DEFINE_string("out", None, "Records, tables, JSON and plots (default: results/, to commit; with --quick "
                    "runs/reproduce_quick/results).")
flags.DEFINE_string("workroot", None, "Where the models are trained (default: runs/reproduce; with --quick "
                    "runs/reproduce_quick/work).")
flags.DEFINE_string("data_dir", "", "Folder with the datasets' files (see README, 'Data').")
flags.DEFINE_list("archs", None, "Only these architectures (default: the plan's).")
flags.DEFINE_list("methods", None, "Only these methods (default: the plan's; jr is always kept).")
flags.DEFINE_integer("max_models", None, "Evaluate at most this many new models, then stop (0: analysis only).")
flags.DEFINE_bool("plan", False, "Print the plan and what is done, then exit.")
flags.DEFINE_integer("reps", 2000, "Bootstrap replicates of each interval.")
flags.DEFINE_bool("progress", False, "Progress bars of the attacks.")
flags.DEFINE_bool("bounds", True, "Add test.bound to every record whose model workdir is here (no training or "
                  "attacks; also with --max_models=0).")
flags.DEFINE_bool("store_weights", True, "Commit each finished model's parameters and suite UAPs beside its record "
                  "(<out>/<dataset>/weights/), from its workdir, so that a fresh clone can restore the workdir.")
flags.DEFINE_string("results_md", None, "A file whose <!-- claims:DATASET --> block gets the claims table and "
                    "whose <!-- report:DATASET --> block the report's tables and plots "
                    "(default: RESULTS.md when --out is the default results/, else none).")


def _release_compiled() -> None:
    """Drops the programs jax compiled for the model just finished (the next model compiles its own).

    Every XLA:CPU executable keeps about three memory mappings for its code
    and data, and jax's caches keep every executable alive: one process
    running the MLP sweep reached the kernel's 65,530 mappings after about 20
    models, and LLVM then aborted the process ("Cannot allocate memory").
    """
    import gc

    import jax

    jax.clear_caches()
    gc.collect()


class _Budget(Exception):
    """--max_models new models were evaluated: stop here, a rerun continues."""


class Sweep:
    """One dataset's sweep: its plan, where things live, and the stages."""

    def __init__(self, plan: plans.Plan, out: str, workroot: str, data_dir: str, budget: Optional[int]):
        self.plan, self.out, self.workroot, self.data_dir = plan, out, workroot, data_dir
        self.budget, self.evaluated = budget, 0
        self.dir = os.path.join(out, plan.dataset)

    # -- state on disk --------------------------------------------------------------------------
    def _json(self, name: str) -> Dict[str, Any]:
        try:
            with open(os.path.join(self.dir, name)) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    def _write(self, name: str, value: Dict[str, Any]) -> None:
        os.makedirs(self.dir, exist_ok=True)
        io.write_json_atomic(os.path.join(self.dir, name), value)

    # -- stages ---------------------------------------------------------------------------------
    def schedule(self, arch: plans.Arch) -> int:
        """Stage 1: the epochs of ``arch`` (schedule.json), training lambda 0 at E and 2E as needed."""
        from benchmarks.reproduction import evaluate

        state = self._json("schedule.json")
        runs = state.setdefault(arch.name, {}).setdefault("runs", {})
        while True:
            done = {int(e): r["validation_accuracy"] for e, r in runs.items()}
            chosen, todo = plans.schedule_runs(self.plan, arch, done)
            if chosen is not None:
                state[arch.name].update(epochs=chosen, capped=2 * chosen > arch.max_epochs,
                                        rule=f"lambda 0, seed 0: the first E with |acc(2E) - acc(E)| < "
                                             f"{self.plan.converged_points:g} points on the validation split")
                self._write("schedule.json", state)
                return chosen
            for e in todo:
                spec = plans.ModelSpec(self.plan.dataset, arch, "jr", 0.0, 0, e)
                print(f"  {arch.name}: schedule run, {e} epochs", flush=True)
                summary = evaluate.train(spec, self.plan, self.workroot, self.data_dir)
                runs[str(e)] = {"validation_accuracy": summary["validation_accuracy"],
                                "test_accuracy": summary["test_accuracy"], "train_seconds": summary["train_seconds"]}
                self._write("schedule.json", state)

    def ensure(self, spec: plans.ModelSpec) -> Dict[str, Any]:
        """The record of ``spec``: the finished one, or trained and evaluated now (counts against the budget)."""
        from benchmarks.reproduction import evaluate

        record = records.load_record(self.out, spec.id)
        if record is not None:
            return record
        if self.budget is not None and self.evaluated >= self.budget:
            raise _Budget()
        print(f"  {spec.id}: {spec.epochs} epochs", flush=True)
        record = evaluate.evaluate(spec, self.plan, self.workroot, self.data_dir, progress=FLAGS.progress)
        records.save_record(self.out, record)
        self.evaluated += 1
        self.bounds([record])
        if FLAGS.store_weights:
            self.store_models([record])
        self.analyse()
        _release_compiled()
        return record

    def select(self, arch: plans.Arch, methods: List[str], epochs: int) -> Dict[str, float]:
        """Stage 3: each method's strength from its seed-0 grid records (selection.json)."""
        base = self.ensure(plans.ModelSpec(self.plan.dataset, arch, "jr", 0.0, 0, epochs))
        state = self._json("selection.json")
        chosen = {}
        for m in methods:
            candidates = []
            for s in self.plan.grid(m):
                if m == "jr" and s == 0:
                    continue
                r = self.ensure(plans.ModelSpec(self.plan.dataset, arch, m, s, 0, epochs))
                candidates.append({"strength": s, "validation_accuracy": r["validation"]["accuracy"],
                                   "validation_uer": r["validation"]["sgd_uap_uer"]})
            pick = plans.choose(self.plan, m, candidates, base["validation"]["accuracy"])
            state.setdefault("archs", {}).setdefault(arch.name, {})[m] = pick
            chosen[m] = pick["chosen"]
            self._write("selection.json", state)
        return chosen

    def _log(self, message: str) -> None:
        print(message, flush=True)

    def restore_stored(self, found: List[Dict[str, Any]]) -> List[str]:
        """:func:`.model_store.restore_missing`: the workdirs of ``found`` restored from the store."""
        from benchmarks.reproduction import model_store

        return model_store.restore_missing(self.out, self.workroot, found, log=self._log)

    def store_models(self, found: List[Dict[str, Any]]) -> List[str]:
        """:func:`.model_store.store_missing`: the models of ``found`` whose workdir is here, stored."""
        from benchmarks.reproduction import model_store

        return model_store.store_missing(self.out, self.workroot, found, log=self._log)

    def transfer_models(self, arch: plans.Arch, epochs: int, chosen: Dict[str, float]) -> List[plans.ModelSpec]:
        """The transfer matrix's models: for lambda 0, then each chosen strength, the model of the lowest claim
        seed whose workdir is here or whose weights are stored; seed 0 where none is."""
        from benchmarks.reproduction import evaluate, model_store

        def stored(spec: plans.ModelSpec) -> bool:
            record = records.load_record(self.out, spec.id)
            return record is not None and model_store.holds(self.out, record)

        picked = []
        for m, s in [("jr", 0.0), *chosen.items()]:
            specs = [plans.ModelSpec(self.plan.dataset, arch, m, s, seed, epochs)
                     for seed in sorted(self.plan.claim_seeds)]
            usable = [spec for spec in specs if model_store.finished_here(evaluate.workdir_of(self.workroot, spec))
                      or stored(spec)]
            picked.append(usable[0] if usable else plans.ModelSpec(self.plan.dataset, arch, m, s, 0, epochs))
        return picked

    def transfer(self, arch: plans.Arch, epochs: int, chosen: Dict[str, float]) -> None:
        """The transfer matrix (transfer.json): each model's worst-case UAP at the selection eps, on each.

        One model per group (lambda 0, each chosen strength): :meth:`transfer_models`; its ``models`` lists the
        ids used.  It needs the trained models: a missing workdir is restored from the store first, and a pair
        whose models are neither here nor stored is left out and named in the report.
        """
        from jacuap import metrics
        from jacuap.evaluation import restore
        from benchmarks.reproduction import evaluate

        eps = self.plan.selection_eps
        specs = self.transfer_models(arch, epochs, chosen)
        state = self._json("transfer.json")
        entry = state.setdefault(arch.name, {})
        entry.update(eps=eps, models=[s.id for s in specs], note="UER of the column model under the row model's "
                     "worst-case UAP (crafted on the row model), first num_eval test inputs")
        pairs = entry.setdefault("uer", {})
        unmeasured = {rid for a in specs for b in specs if pairs.get(a.id, {}).get(b.id) is None
                      for rid in (a.id, b.id)}  # the models of the pairs still to measure
        self.restore_stored([r for r in (records.load_record(self.out, rid) for rid in sorted(unmeasured)) if r])
        uaps = {}
        for src in specs:
            path = os.path.join(evaluate.workdir_of(self.workroot, src), "suite", "results.json")
            try:
                with open(path) as f:
                    worst = next(w for w in json.load(f)["worst_case"] if abs(w["eps"] - eps) < 1e-9)
                uaps[src.id] = np.load(os.path.join(os.path.dirname(path), worst["file"]))
            except (OSError, ValueError, StopIteration, KeyError):
                continue
        for target in specs:
            todo = [s for s in specs if s.id in uaps and pairs.get(s.id, {}).get(target.id) is None]
            if not todo or not os.path.isdir(os.path.join(evaluate.workdir_of(self.workroot, target), "checkpoints")):
                continue
            _, dataset, apply_fn, params = restore(evaluate.workdir_of(self.workroot, target))
            x, y = dataset.test_images[:self.plan.num_eval], dataset.test_labels[:self.plan.num_eval]
            for src in todo:
                pairs.setdefault(src.id, {})[target.id] = metrics.universal_evasion_rate(
                    apply_fn, params, x, y, uaps[src.id])
            self._write("transfer.json", state)
        self._write("transfer.json", state)

    def bounds(self, found: Optional[List[Dict[str, Any]]] = None) -> List[str]:
        """The bound step: ``test.bound`` added to each record of ``found`` (default: all) whose workdir is here
        (restored from the store first where it is missing), after the fooling-rate backfill."""
        from benchmarks.reproduction import bound_records

        log = lambda m: print(m, flush=True)
        found = self.records() if found is None else found
        self.restore_stored([r for r in found if not r["test"].get("worst_case_by_fooling_rate")
                             or (FLAGS.bounds and not r["test"].get("bound"))])
        self.fooling_rate_worst_cases(found, log)
        if not FLAGS.bounds:
            return []
        return bound_records.add_bounds(self.out, self.workroot, found, reps=FLAGS.reps, log=log)

    def fooling_rate_worst_cases(self, found: List[Dict[str, Any]], log) -> List[str]:
        """``test.worst_case_by_fooling_rate`` added to each record of ``found`` made before it was recorded,
        where its model's workdir (with a suite run that chose it) is here; nothing is attacked."""
        from benchmarks.reproduction import bound_records, evaluate

        done = []
        for record in found:
            workdir = bound_records.workdir_of_record(self.workroot, record)
            if (record["test"].get("worst_case_by_fooling_rate")
                    or not os.path.isfile(os.path.join(workdir, "suite", "results.json"))
                    or not bound_records.holds_the_record_model(workdir, record)):
                continue
            try:
                record["test"]["worst_case_by_fooling_rate"] = evaluate.fooling_rate_worst_case(workdir, record)
            except ValueError as exc:
                log(f"  {record['id']}: worst case by fooling rate not added ({exc})")
                continue
            records.save_record(self.out, record)
            log(f"  {record['id']}: worst case by fooling rate added: " + ", ".join(
                f"{w['eps']:g}: {w['attack']} (FR {w['fooling_rate']:.4f})"
                for w in record["test"]["worst_case_by_fooling_rate"]))
            done.append(record["id"])
        return done

    def run(self, archs: List[plans.Arch], methods: List[str]) -> None:
        epochs = {a.name: self.schedule(a) for a in archs}
        defences = [m for m in methods if m != "jr"]
        chosen: Dict[str, Dict[str, float]] = {a.name: {} for a in archs}
        # JR first on every architecture (the paper's claims), then the defences. A group's transfer rows
        # need one model of each chosen strength, so they come before its extra seeds rather than after them.
        for group in (["jr"], defences):
            if not group:
                continue
            for arch in archs:
                e = epochs[arch.name]
                picked = self.select(arch, group, e)
                chosen[arch.name].update(picked)
                self.transfer(arch, e, chosen[arch.name])
                for spec in plans.seed_models(self.plan, arch, e, picked):
                    self.ensure(spec)
        for arch in archs:  # the pairs whose models were missing before (restored since, or a lower seed now here)
            self.transfer(arch, epochs[arch.name], chosen[arch.name])

    def records(self) -> List[Dict[str, Any]]:
        found = []
        models = os.path.join(self.dir, "models")
        for arch in sorted(os.listdir(models)) if os.path.isdir(models) else []:
            for name in sorted(os.listdir(os.path.join(models, arch))):
                if name.endswith(".json"):
                    record = records.load_record(self.out, f"{self.plan.dataset}/{arch}/{name[:-5]}")
                    if record is not None:
                        found.append(record)
        return found

    def analyse(self) -> List[str]:
        from benchmarks.reproduction import render, report

        found = self.records()
        if not found:
            return []
        analysis = report.analyse(found, self._json("selection.json"), reps=FLAGS.reps)
        analysis["schedule"] = self._json("schedule.json")
        analysis["transfer"] = self._json("transfer.json")
        written = render.write_report(analysis, found, self.out, self.plan.dataset)
        results_md = FLAGS.results_md
        if results_md is None:
            results_md = os.path.join(ROOT, "RESULTS.md") if os.path.abspath(self.out) == DEFAULT_OUT else ""
        if results_md:
            with open(os.path.join(self.out, f"{self.plan.dataset}.md")) as f:
                block = render.results_block(self.plan.dataset, f.read())
            claims = render.claims_block(self.plan.dataset, analysis["claims"], len(found))
            # Either block may be absent: a RESULTS.md holds the ones its text places.
            if (render.replace_marked(results_md, f"claims:{self.plan.dataset}", claims)
                    | render.replace_marked(results_md, f"report:{self.plan.dataset}", block)):
                written.append(results_md)
        return written

    def describe(self, archs: List[plans.Arch], methods: List[str]) -> None:
        from benchmarks.reproduction import bound_records, model_store

        sched, sel = self._json("schedule.json"), self._json("selection.json").get("archs", {})
        found = self.records()
        done = {r["id"] for r in found}
        print(f"== {self.plan.dataset}: {len(done)} records in {self.dir}")
        for arch in archs:
            e = sched.get(arch.name, {}).get("epochs")
            print(f"  {arch.name}: schedule {'%d epochs' % e if e else 'not yet chosen'} "
                  f"(search from {arch.epochs}, cap {arch.max_epochs})")
            for m in methods:
                grid = self.plan.grid(m)
                pick = sel.get(arch.name, {}).get(m, {}).get("chosen")
                ids = [records.model_id(self.plan.dataset, arch.name, m, s, 0) for s in grid]
                print(f"    {m:17s} grid {', '.join(f'{s:g}' for s in grid)}: "
                      f"{sum(i in done for i in ids)}/{len(ids)} done; chosen "
                      f"{'-' if pick is None else f'{pick:g}'}; seeds {list(self.plan.claim_seeds)}")
        print("\n".join(bound_records.plan_lines(self.workroot, found)))
        print(self._fooling_rate_line(found))
        stored = sum(model_store.holds(self.out, r) for r in found)
        print(f"  weights stored: {stored} of {len(found)} records ({os.path.join(self.dir, 'weights')}; a missing "
              f"workdir is restored from them when a step needs it)")

    def _fooling_rate_line(self, found: List[Dict[str, Any]]) -> str:
        """``--plan``'s count of the records with, and without, the worst case chosen by fooling rate."""
        from benchmarks.reproduction import bound_records

        def status(r):
            workdir = bound_records.workdir_of_record(self.workroot, r)
            if r["test"].get("worst_case_by_fooling_rate"):
                return "recorded"
            if not os.path.isfile(os.path.join(workdir, "suite", "results.json")):
                return "not here (workdir missing)"
            return "to add" if bound_records.holds_the_record_model(workdir, r) else "not here (another model)"
        counts = [status(r) for r in found]
        kinds = ["recorded", "to add", "not here (workdir missing)", "not here (another model)"]
        return "  worst case by fooling rate (test.worst_case_by_fooling_rate): " + ", ".join(
            f"{counts.count(k)} {k}" for k in kinds if k in counts or k in kinds[:3])


def run_dataset(name: str) -> bool:
    plan = plans.quick_plan(name) if FLAGS.quick else plans.full_plan(name)
    try:
        data.load_dataset(name, FLAGS.data_dir or None, num_validation=plan.num_validation)
    except data.DataError as exc:
        print(f"{name}: skipped ({exc})", flush=True)
        return False
    archs = [a for a in plan.archs if not FLAGS.archs or a.name in FLAGS.archs]
    methods = [m for m in plan.methods if not FLAGS.methods or m in FLAGS.methods or m == "jr"]
    sweep = Sweep(plan, FLAGS.out, FLAGS.workroot, FLAGS.data_dir, FLAGS.max_models)
    if FLAGS.plan:
        sweep.describe(archs, methods)
        return True
    start = time.time()
    print(f"== {name}: {', '.join(a.name for a in archs)}; methods {', '.join(methods)}", flush=True)
    if FLAGS.store_weights:  # first, so that a run cut short before its end still stored what it found
        sweep.store_models(sweep.records())
    try:
        if FLAGS.max_models == 0:
            print(f"{name}: analysis only (--max_models=0)", flush=True)
        else:
            sweep.run(archs, methods)
            print(f"{name}: sweep complete", flush=True)
    except _Budget:
        print(f"{name}: stopped after {sweep.evaluated} new models (--max_models); rerun to continue", flush=True)
    measured = sweep.bounds()
    if measured:
        print(f"{name}: test.bound added to {len(measured)} records", flush=True)
    if FLAGS.store_weights:
        stored = sweep.store_models(sweep.records())
        if stored:
            print(f"{name}: weights stored for {len(stored)} records", flush=True)
    written = sweep.analyse()
    print(f"{name}: {sweep.evaluated} new models in {(time.time() - start) / 60:.1f} min; wrote "
          f"{', '.join(os.path.relpath(p, FLAGS.out) for p in written) or 'nothing (no records)'}", flush=True)
    return True


def main(argv):
    if len(argv) > 1:
        cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")
    with cli.user_errors():
        if FLAGS.quick and FLAGS.out is not None and os.path.abspath(FLAGS.out) == DEFAULT_OUT:
            cli.fail(f"--quick writes toy-sized records; give an --out other than {DEFAULT_OUT} (the sweep's)")
        if FLAGS.out is None:
            FLAGS.out = os.path.join(QUICK_ROOT, "results") if FLAGS.quick else DEFAULT_OUT
        if FLAGS.workroot is None:
            FLAGS.workroot = os.path.join(QUICK_ROOT, "work") if FLAGS.quick else os.path.join(ROOT, "runs", "reproduce")
        unknown = [d for d in FLAGS.datasets if d not in data.DATASETS]
        if unknown:
            cli.fail(f"unknown dataset {', '.join(unknown)}; choose from {', '.join(data.DATASETS)}")
        unknown = [m for m in FLAGS.methods or [] if m not in plans.METHODS]
        if unknown:
            cli.fail(f"unknown method {', '.join(unknown)}; choose from {', '.join(plans.METHODS)}")
        if FLAGS.max_models is not None and FLAGS.max_models < 0:
            cli.fail(f"--max_models must be >= 0, got {FLAGS.max_models}")
        done = [run_dataset(d) for d in FLAGS.datasets]
    if not any(done):
        cli.fail("no dataset could be loaded", code=1)


if __name__ == "__main__":
    sys.exit(cli.run(main))
