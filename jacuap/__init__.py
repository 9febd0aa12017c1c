"""jacuap: Jacobian regularization against universal adversarial perturbations.

Co, Martinez-Rego & Lupu, "Jacobian Regularization for Mitigating Universal
Adversarial Perturbations" (ICANN 2021), as a JAX/Flax library.  Data flows
one way: ``data -> models -> jacobian -> (training | attacks | metrics)``.
"""

from jacuap import checkpoints, data, jacobian, models, training
from jacuap.checkpoints import CheckpointError
from jacuap.data import DATASETS, Dataset, DataError, load_dataset
from jacuap.jacobian import (
    frobenius_sq,
    input_jacobian,
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
