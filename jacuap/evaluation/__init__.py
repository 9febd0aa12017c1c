"""The evaluation job of ``attack.py``: a request, its perturbations, the store that resumes it, the suites.

One module per idea:

* :mod:`.request`: :class:`AttackRequest`, what is asked (validated on
  construction), and the attack names it may use;
* :mod:`.restore`: the model of a workdir; :mod:`.sets`: the disjoint
  crafting and evaluation sets;
* :mod:`.craft`: one perturbation, by registry lookup
  (:data:`jacuap.attacks.ATTACKS`), or one the user brings;
* :mod:`.suite`: the fixed ensembles and their worst case (by UER and by
  fooling rate); :mod:`.targeted`: the K x K targeted matrix;
* :mod:`.store`: the output folder's layout, rows written as they finish,
  the resume rule; :mod:`.outputs`: what the user reads (table, figure);
* :mod:`.run`: :func:`run_attacks`, the job itself.
"""

from jacuap.evaluation import outputs, store, suite, targeted
from jacuap.evaluation.craft import craft, load_uap_file, per_input_predictions
from jacuap.evaluation.outputs import output_failure, output_files, plot_uaps, print_extras, print_results
from jacuap.evaluation.request import AttackRequest, attack_names, import_attack_modules
from jacuap.evaluation.restore import restore
from jacuap.evaluation.run import run_attacks
from jacuap.evaluation.sets import craft_and_eval_sets
from jacuap.evaluation.suite import SUITES, WORST_CASE_BY, Member, Suite, suite_record, suite_tasks, worst_case

__all__ = [
    "AttackRequest", "attack_names", "import_attack_modules", "run_attacks", "restore", "craft_and_eval_sets",
    "craft", "per_input_predictions", "load_uap_file", "SUITES", "WORST_CASE_BY", "Member", "Suite", "suite_tasks",
    "suite_record", "worst_case", "output_failure", "output_files", "plot_uaps", "print_results", "print_extras",
    "outputs", "store", "suite", "targeted",
]
