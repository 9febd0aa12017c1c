"""Attacks a trained workdir with universal (and per-input) perturbations.

    python attack.py --workdir=runs/fmnist --attack=sgd_uap,sv_uap,deepfool_uap \
        --norm=linf --eps=0.05,0.1,0.2 --out=runs/fmnist/attack

    python attack.py --workdir=W --suite=standard --eps=0.05,0.1   # the ensemble, its worst case, targeted matrices
    python attack.py --workdir=W --source_workdir=W2 --suite=quick   # transfer: craft on W2, evaluate on W
    python attack.py --workdir=W --uap_file=F.npy --eps=0.1           # evaluate a given perturbation
    python attack.py --workdir=W --attack=layer_max --layer=dense0    # layer maximisation

Crafts each UAP on the training split (``--craft_split``) and evaluates it on
the test split; writes one ``.npy`` and one ``rows/*.json`` per finished
(attack, eps) as it goes, ``out/uaps.png``, and ``out/results.json`` last.
Rerunning the same command resumes (finished rows are reused).  One
``--out`` holds many requests: the first writes into it, each other one into
its own sub-folder named by the request (``OUT/quick_suite_linf_eps0.1_25e37f``);
``--overwrite`` replaces only the outputs of the request given, when they
came from another checkpoint.  Exit codes: 0 done,
1 the output folder cannot be written (full, read-only), 2 a user mistake.
"""

import dataclasses

from absl import flags

from jacuap import budgets, cli, io, programs
from jacuap.evaluation import request as requests, suite  # JAX-free: flags are checked before the attacks load

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A train.py workdir (its config and newest checkpoint); or --torch_model.")
flags.DEFINE_list("attack", ["sgd_uap", "sv_uap"], f"Comma list of {', '.join(requests.attack_names())} "
                  "(README, 'The attack zoo'), or of attacks that --attack_modules register.")
flags.DEFINE_list("attack_modules", [], "Modules to import before the attacks are looked up: each registers its own "
                  "attacks (jacuap.attacks.register); e.g. mypkg.my_attack.")
flags.DEFINE_enum("suite", "", ["", *suite.SUITES], "Run a fixed ensemble (jacuap.evaluation.SUITES) instead of --attack, "
                  "and report the worst case per budget.")
flags.DEFINE_bool("targeted", False, "Also the K x K targeted UAP matrix per budget (the standard suite has it).")
flags.DEFINE_string("layer", "", "The hidden layer(s) the layer attacks read (layer_max, fg_uap: one name; "
                    "gd_uap: a comma list), e.g. dense0; default: the layer before the classifier (gd_uap: "
                    "every hidden layer with parameters).")
flags.DEFINE_enum("loss", "", ["", "ce", "margin"], "The loss of sgd_uap, sga_uap and sgd_uap_restarts: ce "
                  "(clipped cross-entropy, the default) or margin (the Carlini-Wagner logit margin).")
flags.DEFINE_enum("prior", "", ["", "data", "range", "none"], "What cosine_uap and gd_uap craft on: data (the "
                  "crafting set), or data-free range (random images in the pixel range) or none (the grey image); "
                  "default: cosine_uap data, gd_uap none.")
flags.DEFINE_string("source_workdir", "", "Craft on this workdir's model and data, evaluate on --workdir's (transfer).")
flags.DEFINE_string("uap_file", "", "Evaluate this .npy perturbation (checked against --eps and the input shape).")
flags.DEFINE_string("norm", "linf", f"{' or '.join(budgets.NORMS)}.")
flags.DEFINE_list("eps", ["0.1"], "Comma list of budgets in pixel units.")
flags.DEFINE_integer("num_craft", 5000, "Inputs the UAPs are crafted on.")
flags.DEFINE_integer("num_eval", 10000, "Test inputs the attacks are evaluated on.")
flags.DEFINE_enum("craft_split", "train", ["train", "test"],
                  "Split to craft on; 'test' uses test inputs disjoint from the evaluation ones.")
flags.DEFINE_enum("eval_split", "test", ["test", "validation"],
                  "Split to evaluate on; 'validation' is the split held out of training by "
                  "--config.num_validation (choose strengths there, report on test).")
flags.DEFINE_integer("num_metrics", 500, "Test inputs for the Jacobian metrics (0 = skip).")
flags.DEFINE_integer("sgd_epochs", 5, "SGD-UAP epochs over the crafting set.")
flags.DEFINE_integer("deepfool_passes", 5, "DeepFool-UAP maximum passes.")
flags.DEFINE_integer("seed", 0, "Seed of the crafting subset, shuffles and random starts.")
flags.DEFINE_string("out", None, "Output folder (default: WORKDIR/attack); a request other than the one it holds "
                    "goes to its own sub-folder, named by the request.")
flags.DEFINE_bool("overwrite", False, "Replace this request's outputs when they came from another checkpoint (only "
                  "files jacuap wrote; other requests' stay); the same request resumes either way.")
flags.DEFINE_bool("progress", True, "Show progress bars.")
# A PyTorch model in place of a workdir (jacuap.from_torch; README, "PyTorch models").
flags.DEFINE_string("torch_model", "", "A PyTorch model to attack instead of --workdir's: 'pkg.mod:factory', called "
                    "with no arguments to build the torch.nn.Module (needs --dataset and --out).")
flags.DEFINE_string("torch_weights", "", "Its state dict: a torch.save(model.state_dict()) file (read with "
                    "weights_only=True, never unpickled) or .safetensors; default: the factory's weights.")
flags.DEFINE_enum("torch_mechanism", "convert", list(requests.TORCH_MECHANISMS), "How JAX runs it: convert (traced "
                  "into a pure JAX function: every attack and kernel) or callback (torch called from JAX: VJPs only).")
flags.DEFINE_enum("torch_layout", "NCHW", ["NCHW", "NHWC"], "The layout the module takes (jacuap passes NHWC pixels "
                  "in [0, 1] and transposes).")
flags.DEFINE_list("torch_mean", [], "Per-channel mean of the module's input normalisation when it is not inside the "
                  "module, e.g. 0.4914,0.4822,0.4465 (with --torch_std); default: the module takes [0, 1] pixels.")
flags.DEFINE_list("torch_std", [], "Per-channel std of that normalisation.")
flags.DEFINE_string("dataset", "", "With --torch_model: the data it is evaluated on (digits, mnist, fashion_mnist, "
                    "cifar10, npz:PATH, folder:PATH[@HxW]); it fixes the input shape.")
flags.DEFINE_string("data_dir", "", "With --torch_model: local copies of --dataset (as train.py's --config.data_dir).")


def main(argv):
    del argv  # cli.run refuses positional arguments
    with cli.user_errors():
        requests.import_attack_modules(FLAGS.attack_modules)
        request = requests.AttackRequest.from_flags(FLAGS, attack_given=FLAGS["attack"].present)
        request = dataclasses.replace(request, out=requests.request_folder(request.out, request))
        requests.check_out_path(request.out)
        for workdir in filter(None, (request.workdir, request.source_workdir)):
            io.read_workdir_config(workdir)  # a wrong --workdir answers before JAX loads
        with programs.interrupt_exits():
            from jacuap import evaluation  # JAX, the attacks, orbax: seconds

        try:
            results = evaluation.run_attacks(request)
        except OSError as exc:
            message = evaluation.output_failure(exc, request.out)
            if message is None:
                raise
            cli.fail(message, code=cli.EXIT_FAILED)
    evaluation.print_results(results)
    evaluation.print_extras(results)
    files = evaluation.output_files(results) + [f for t in results.get("targeted") or [] for f in (t["figure"], t["file"])]
    uaps = [f for f in files if f.endswith(".npy") and not f.startswith("targeted")]
    if len(uaps) > 2:  # one line still: the UAPs counted, not listed
        files = [f for f in files if f[:-4] + ".npy" not in uaps] + [f"{len(uaps)} UAPs (<attack>_<norm>_eps<eps>_seed<seed>"
                                                                    f".npy and .png)"]
    print(f"outputs in {request.out}: {', '.join(files)}")


def run() -> None:
    """The console script ``jacuap-attack`` (and ``python attack.py``)."""
    cli.run(main, program=__name__)


if __name__ == "__main__":
    run()
