"""jacuap: Jacobian regularization against universal adversarial perturbations.

Co, Martinez-Rego & Lupu, "Jacobian Regularization for Mitigating Universal
Adversarial Perturbations" (ICANN 2021), as a JAX/Flax library.  Data flows
one way: ``data -> models -> jacobian -> (training | attacks | metrics)``.
"""

from jacuap import attacks, checkpoints, data, evaluation, jacobian, metrics, models, training
from jacuap.attacks import deepfool_uap, fgsm, pgd, sgd_uap, singular_vector_uap
from jacuap.checkpoints import CheckpointError
from jacuap.metrics import (
    accuracy,
    fooling_rate,
    gram_cosine,
    jacobian_cosine,
    jacobian_metrics,
    shared_perturbation_strength,
    universal_evasion_rate,
    universality_ratio,
)
from jacuap.data import DATASETS, Dataset, DataError, load_dataset
from jacuap.jacobian import (
    frobenius_sq,
    input_jacobian,
    logits_and_input_jacobian,
    jacobian_penalty,
    logits_and_frobenius_sq,
    spectral_norm,
    stacked_gram,
    stacked_spectral_norm,
)
from jacuap.models import MODELS, ModelError, create_model, init_params, make_apply_fn
from jacuap.training import (
    ConfigError,
    TrainingDiverged,
    restore_model,
    train_and_evaluate,
    train_step,
    eval_step,
    evaluate,
)

__version__ = "0.1.0"
