"""jacuap: Jacobian regularization against universal adversarial perturbations.

Co, Martinez-Rego & Lupu, "Jacobian Regularization for Mitigating Universal
Adversarial Perturbations" (ICANN 2021), as a JAX/Flax library.  Imports point
one way::

    errors, batching, io, parallel      (leaves)
      -> data, models                   (datasets; Flax models and their convolution)
      -> jacobian                       (the input-Jacobian kernels)
      -> metrics                        (rates, bounds, pairwise Jacobian metrics)
      -> attacks                        (the UAP zoo, per-input attacks, their registry)
      -> train, checkpoints             (JR training and its baselines)
      -> evaluation, cli                (the jobs behind attack.py and the programs)

Every public name below is loaded on first use, so ``import jacuap`` stays
cheap (no orbax, matplotlib or tensorflow-datasets until they are needed).

``dir(jacuap)`` lists exactly that API (``__all__``): the names below and
the submodules; ``jacuap.checkpoints`` is :mod:`jacuap.train.checkpoints`.

>>> import jacuap
>>> sorted(jacuap.DATASETS)
['cifar10', 'digits', 'fashion_mnist', 'mnist']
>>> dir(jacuap) == sorted(jacuap.__all__)
True
"""

import importlib as _importlib

__version__ = "0.1.0"

# name -> the module that defines it.
_PUBLIC = {
    # errors
    "UserError": "jacuap.errors",
    "ConfigError": "jacuap.errors",
    "DataError": "jacuap.errors",
    "ModelError": "jacuap.errors",
    "CheckpointError": "jacuap.errors",
    "AttackError": "jacuap.errors",
    # data, models
    "DATASETS": "jacuap.data",
    "Dataset": "jacuap.data",
    "load_dataset": "jacuap.data",
    "MODELS": "jacuap.models",
    "create_model": "jacuap.models",
    "init_params": "jacuap.models",
    "make_apply_fn": "jacuap.models",
    "as_apply_fn": "jacuap.models",
    "nnx_with_params": "jacuap.models",
    "from_torch": "jacuap.models",
    # kernels
    "input_jacobian": "jacuap.jacobian",
    "frobenius_sq": "jacuap.jacobian",
    "jacobian_penalty": "jacuap.jacobian",
    "spectral_norm": "jacuap.jacobian",
    "stacked_spectral_norm": "jacuap.jacobian",
    # metrics
    "accuracy": "jacuap.metrics",
    "universal_evasion_rate": "jacuap.metrics",
    "fooling_rate": "jacuap.metrics",
    "universality_ratio": "jacuap.metrics",
    "shared_perturbation_strength": "jacuap.metrics",
    "jacobian_metrics": "jacuap.metrics",
    # attacks
    "UAPResult": "jacuap.attacks",
    "sgd_uap": "jacuap.attacks",
    "singular_vector_uap": "jacuap.attacks",
    "deepfool_uap": "jacuap.attacks",
    "fgsm": "jacuap.attacks",
    "pgd": "jacuap.attacks",
    "cosine_uap": "jacuap.attacks",
    "fg_uap": "jacuap.attacks",
    "gd_uap": "jacuap.attacks",
    "gap_uap": "jacuap.attacks",
    # evaluation
    "AttackRequest": "jacuap.evaluation",
    "run_attacks": "jacuap.evaluation",
    "print_results": "jacuap.evaluation",
    # training
    "get_config": "jacuap.configs",
    "train_and_evaluate": "jacuap.train",
    "train_step": "jacuap.train",
    "restore_model": "jacuap.train.checkpoints",
    "RestoredModel": "jacuap.train.checkpoints",
}

# name -> the module it is (``jacuap.checkpoints`` lives in the train unit).
_SUBMODULES = {
    name: f"jacuap.{name}"
    for name in ("attacks", "batching", "cli", "configs", "data", "errors", "evaluation", "io", "jacobian",
                 "metrics", "models", "parallel", "train")
}
_SUBMODULES["checkpoints"] = "jacuap.train.checkpoints"

__all__ = sorted(_PUBLIC) + sorted(_SUBMODULES)


def __getattr__(name: str) -> object:
    if name in _PUBLIC:
        value = getattr(_importlib.import_module(_PUBLIC[name]), name)
    elif name in _SUBMODULES:
        value = _importlib.import_module(_SUBMODULES[name])
    else:
        raise AttributeError(f"module 'jacuap' has no attribute {name!r}")
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list:
    # The public API only: not this module's own globals, nor the submodules
    # that imports elsewhere happen to have set as attributes.
    return sorted(__all__)
