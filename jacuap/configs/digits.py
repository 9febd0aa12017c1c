"""scikit-learn's 8x8 digits: always offline, trains an MLP in seconds."""

import ml_collections

from jacuap.configs import default


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.dataset = "digits"
    config.model = "mlp"
    config.jr_lambda = 0.5
    config.num_epochs = 30
    config.batch_size = 128
    return config
