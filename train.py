"""Trains a classifier with Jacobian regularization.

    python train.py --workdir=runs/fmnist --config=configs/default.py \
        --config.jr_lambda=0.05 --config.num_epochs=5

Rerunning the same command resumes from the newest checkpoint in --workdir.
Training uses every local device (the batch is split over them); with
--multihost, run the same command on every host of a TPU pod slice or a GPU
cluster and they train as one (see README, "Scale and resilience").
"""

import sys

from absl import app, flags
from ml_collections import config_flags

import jacuap
from jacuap import checkpoints, cli, parallel

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics.jsonl and summary.json.")
config_flags.DEFINE_config_file("config", "configs/default.py", "Training configuration.", lock_config=True)
flags.DEFINE_bool("multihost", False,
                  "Join a multi-host job with jax.distributed.initialize() (auto-detected on TPU pods, SLURM, "
                  "Open MPI; else set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID).")
flags.mark_flags_as_required(["workdir"])


def main(argv):
    if len(argv) > 1:
        cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")
    if FLAGS.multihost:
        try:
            parallel.initialize_multihost()
        except parallel.ParallelError as exc:
            cli.fail(str(exc))
    try:
        with cli.user_errors():
            summary = jacuap.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except OSError as exc:
        if checkpoints.disk_errno(exc) is None:
            raise
        # Disk full / over quota / read-only: what is on disk is complete, say so and how to go on.
        last = checkpoints.latest_step(FLAGS.workdir)
        kept = f"checkpoint {last} is intact" if last is not None else "no checkpoint was written"
        where = f" ({exc.filename})" if exc.filename else ""
        cli.fail(f"{exc.strerror}{where}; {kept}; free space and rerun the same command to resume", code=1)
    if parallel.is_primary():
        cli.print_table("summary", summary)
        print(f"outputs in {FLAGS.workdir}: summary.json, metrics.jsonl, checkpoints/")


if __name__ == "__main__":
    sys.exit(cli.run(main))
