"""The default training configuration: a small CNN with Jacobian regularization on Fashion-MNIST.

Every other packaged config starts from this one, and its fields are the
only ones a config may have: ``get_config`` returns a locked ConfigDict, so
setting an unknown field (a typo) raises instead of being ignored.
"""

import ml_collections

from jacuap.configs.locked import LockedConfigDict


def get_config() -> ml_collections.ConfigDict:
    config = LockedConfigDict()  # a ConfigDict whose unknown-field errors are one line
    # Data: digits | mnist | fashion_mnist | cifar10, or your own npz:PATH | folder:PATH[@HxW] (see jacuap.data).
    config.dataset = "fashion_mnist"
    config.data_dir = ""  # local IDX / CIFAR binary files; "" = the usual places
    # Training inputs held out as a validation split (the same inputs for every
    # seed; jacuap.data.hold_out_validation): choose strengths there, not on test.
    config.num_validation = 0
    # Model: mlp | cnn | resnet | resnet_tiny (see jacuap.models), or your own
    # Linen or NNX class by import path, "my_package.nets:WideResNet", built
    # with num_classes=K and model_kwargs (--config.model_kwargs="{'width': 8}").
    config.model = "cnn"
    config.model_kwargs = ml_collections.ConfigDict()
    # Loss = CE + jr_lambda * (1/2) * mean ||J||_F^2, Hoffman et al.'s convention;
    # J w.r.t. the normalised input (jr_space="normalized") or pixels ("pixels").
    config.jr_lambda = 0.1
    config.jr_space = "normalized"
    # Random projections for the penalty; None = exact (K VJPs).
    config.jr_num_proj = ml_collections.config_dict.placeholder(object)
    config.jr_num_proj = 1
    # Which penalty jr_lambda weighs: frobenius (the above) | stacked_spectral
    # (sigma_max(J_B)^2 / |B| by jr_power_iters warm-started power iterations
    # per step) | alignment (mean squared cosine of pairs' Jacobians).
    config.jr_mode = "frobenius"
    config.jr_power_iters = 2

    # Adversarial-training defences (the paper compares against none):
    # none | pgd (Madry et al. PGD adversarial training) | uat (Shafahi et al.
    # universal adversarial training) | trades (Zhang et al.) | sat (Mummadi
    # et al. shared adversarial training) | cw_uat (Benz et al. class-wise
    # UAT); l_inf budget, steps, step (0 = default); TRADES' KL weight; SAT's
    # inputs per shared perturbation.
    config.adv_training = "none"
    config.adv_eps = 0.1
    config.adv_steps = 7
    config.adv_step_size = 0.0
    config.trades_beta = 6.0
    config.adv_heap_size = 16
    # Optimisation.
    config.optimizer = "adam"  # adam | sgd (Nesterov momentum)
    config.learning_rate = 1e-3
    config.lr_schedule = "cosine"  # cosine | constant
    config.momentum = 0.9
    config.batch_size = 128
    config.num_epochs = 5
    config.seed = 0
    # Checkpoints: every epoch, plus every N steps when N > 0.
    config.checkpoint_every_steps = 0
    config.max_to_keep = 2
    # Summary: Jacobian bounds on the first N test inputs.
    config.eval_num_inputs = 1000
    config.progress = True
    config.lock()
    return config
