"""Trains a classifier with Jacobian regularization.

    python train.py --workdir=runs/fmnist --config.jr_lambda=0.05 --config.num_epochs=5
    python train.py --workdir=runs/digits --config=configs/digits.py

``--config`` is a file with ``get_config()``; it defaults to the packaged
``jacuap/configs/default.py``, and ``configs/NAME.py``, when there is no
such file here, names the packaged ``jacuap/configs/NAME.py``.  Rerunning
the same command resumes from the newest checkpoint in ``--workdir``.
Training uses every local device (the batch is split over them); with
``--multihost``, run the same command on every host of a TPU pod slice or a
GPU cluster and they train as one (see README, "Scale and resilience").

A mistake in the flags, the config or ``--workdir`` is reported before
JAX's training stack loads (configs.validate loads the model registry);
:mod:`jacuap.train` is imported only to train.
"""

from absl import flags
from ml_collections import config_flags

from jacuap import cli, configs, programs

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics.jsonl and summary.json.")
flags.DEFINE_bool("multihost", False,
                  "Join a multi-host job with jax.distributed.initialize() (auto-detected on TPU pods, SLURM, "
                  "Open MPI; else set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID).")
with cli.flag_errors():  # without --config, the default file and sys.argv's --config.* overrides load here
    config_flags.DEFINE_config_file("config", configs.config_path("default"), cli.CONFIG_HELP, lock_config=True)
flags.mark_flags_as_required(["workdir"])


def main(argv):
    del argv  # cli.run refuses positional arguments
    with cli.user_errors(workdir=FLAGS.workdir):
        cli.check_workdir(FLAGS.workdir)  # cheap checks first: no JAX yet
        configs.validate(FLAGS.config)
        with programs.interrupt_exits():
            from jacuap import io, parallel, train  # JAX, flax, optax, orbax: seconds

        if FLAGS.multihost:
            parallel.initialize_multihost()
        summary = train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    if io.is_primary():
        shown = {k: v for k, v in summary.items() if k not in ("num_test", "jacobian_num_inputs")}  # in the notes
        cli.print_table("summary", shown, cli.summary_notes(summary))
        print(f"outputs in {FLAGS.workdir}: summary.json, metrics.jsonl, checkpoints/")


def run() -> None:
    """The console script ``jacuap-train`` (and ``python train.py``)."""
    cli.run(main, program=__name__)


if __name__ == "__main__":
    run()
