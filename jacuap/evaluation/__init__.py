"""The evaluation job of ``attack.py``: a request, its perturbations, the store that resumes it, the suites.

One module per idea:

* :mod:`.request`: :class:`AttackRequest`, what is asked (validated on
  construction), and the attack names it may use;
* :mod:`.restoring`: the model of a workdir; :mod:`.sets`: the disjoint
  crafting and evaluation sets;
* :mod:`.crafting`: one perturbation, by registry lookup
  (:data:`jacuap.attacks.ATTACKS`), or one the user brings;
* :mod:`.suite`: the fixed ensembles and their worst case (by UER and by
  fooling rate); :mod:`.targeted`: the K x K targeted matrix;
* :mod:`.store`: the output folder's layout, rows written as they finish,
  the resume rule; :mod:`.outputs`: what the user reads (table, figure);
* :mod:`.run`: :func:`run_attacks`, the job itself.

Every name below loads on first use, so that :mod:`.request` (and
:mod:`.catalog`, :mod:`.suite`) can be read without JAX: ``attack.py``
checks its flags before the attacks load.
"""

from __future__ import annotations

import importlib as _importlib

# name -> the module that defines it.
_NAMES = {
    "AttackRequest": "request", "attack_names": "request", "import_attack_modules": "request",
    "run_attacks": "run", "restore": "restoring", "craft_and_eval_sets": "sets",
    "craft": "crafting", "per_input_predictions": "crafting", "load_uap_file": "crafting",
    "SUITES": "suite", "WORST_CASE_BY": "suite", "Member": "suite", "Suite": "suite", "suite_tasks": "suite",
    "suite_record": "suite", "worst_case": "suite",
    "output_failure": "outputs", "output_files": "outputs", "plot_uaps": "outputs", "print_results": "outputs",
    "print_extras": "outputs",
}
_SUBMODULES = ("catalog", "crafting", "outputs", "request", "restoring", "run", "sets", "store", "suite", "targeted")

__all__ = sorted(_NAMES) + ["outputs", "store", "suite", "targeted"]


def __getattr__(name: str):
    if name in _NAMES:
        value = getattr(_importlib.import_module(f"jacuap.evaluation.{_NAMES[name]}"), name)
    elif name in _SUBMODULES:
        value = _importlib.import_module(f"jacuap.evaluation.{name}")
    else:
        raise AttributeError(f"module 'jacuap.evaluation' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(__all__) | set(_SUBMODULES))
