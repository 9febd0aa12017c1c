"""Attacks a trained workdir with universal (and per-input) perturbations.

    python attack.py --workdir=runs/fmnist --attack=sgd_uap,sv_uap,deepfool_uap \
        --norm=linf --eps=0.05,0.1,0.2 --out=runs/fmnist/attack

Crafts each UAP on the training split (``--craft_split``) and evaluates it on
the test split; writes one ``.npy`` and one ``rows/*.json`` per finished
(attack, eps) as it goes, ``out/uaps.png``, and ``out/results.json`` last.
Rerunning the same command resumes (finished rows are reused); another
request in the same ``--out`` needs ``--overwrite``.  Exit codes: 0 done,
1 the output folder cannot be written (full, read-only), 2 a user mistake.
"""

from absl import flags

from jacuap import attack_run, attacks, cli

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A train.py workdir (its config and newest checkpoint).")
flags.DEFINE_list("attack", ["sgd_uap", "sv_uap"], f"Comma list of {', '.join(attacks.ATTACKS)}.")
flags.DEFINE_string("norm", "linf", f"{' or '.join(attacks.NORMS)}.")
flags.DEFINE_list("eps", ["0.1"], "Comma list of budgets in pixel units.")
flags.DEFINE_integer("num_craft", 5000, "Inputs the UAPs are crafted on.")
flags.DEFINE_integer("num_eval", 10000, "Test inputs the attacks are evaluated on.")
flags.DEFINE_enum("craft_split", "train", ["train", "test"],
                  "Split to craft on; 'test' uses test inputs disjoint from the evaluation ones.")
flags.DEFINE_integer("num_metrics", 500, "Test inputs for the Jacobian metrics (0 = skip).")
flags.DEFINE_integer("sgd_epochs", 5, "SGD-UAP epochs over the crafting set.")
flags.DEFINE_integer("deepfool_passes", 5, "DeepFool-UAP maximum passes.")
flags.DEFINE_integer("seed", 0, "Seed of the crafting subset, shuffles and random starts.")
flags.DEFINE_string("out", None, "Output folder (default: WORKDIR/attack).")
flags.DEFINE_bool("overwrite", False, "Replace the outputs of another request in --out (only files jacuap wrote); "
                  "the same request resumes either way.")
flags.DEFINE_bool("progress", True, "Show progress bars.")
flags.mark_flags_as_required(["workdir"])


def main(argv):
    del argv  # cli.run refuses positional arguments
    with cli.user_errors():
        request = attack_run.AttackRequest.from_flags(FLAGS)
        try:
            results = attack_run.run_attacks(request)
        except OSError as exc:
            message = attack_run.output_failure(exc, request.out)
            if message is None:
                raise
            cli.fail(message, code=cli.EXIT_FAILED)
    attack_run.print_results(results)
    print(f"outputs in {request.out}: {', '.join(attack_run.output_files(results))}")


if __name__ == "__main__":
    cli.run(main)
