"""Trains a classifier with Jacobian regularization.

    python train.py --workdir=runs/fmnist --config=configs/default.py \
        --config.jr_lambda=0.05 --config.num_epochs=5

Rerunning the same command resumes from the newest checkpoint in --workdir.
"""

import sys

from absl import app, flags
from ml_collections import config_flags

import jacuap
from jacuap import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics.jsonl and summary.json.")
config_flags.DEFINE_config_file("config", "configs/default.py", "Training configuration.", lock_config=True)
flags.mark_flags_as_required(["workdir"])


def main(argv):
    if len(argv) > 1:
        cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")
    with cli.user_errors():
        summary = jacuap.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    cli.print_table("summary", summary)
    print(f"outputs in {FLAGS.workdir}: summary.json, metrics.jsonl, checkpoints/")


if __name__ == "__main__":
    sys.exit(cli.run(main))
