"""jacuap: Jacobian regularization against universal adversarial perturbations."""
from jacuap import jacobian, models
from jacuap.jacobian import (
    frobenius_sq,
    input_jacobian,
    jacobian_penalty,
    logits_and_frobenius_sq,
    spectral_norm,
    stacked_gram,
    stacked_spectral_norm,
)
from jacuap.models import MODELS, create_model, init_params, make_apply_fn
