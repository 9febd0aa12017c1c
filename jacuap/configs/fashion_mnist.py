"""Fashion-MNIST (28x28x1): the small CNN, as in the paper's benchmark."""

import ml_collections

from jacuap.configs import default


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.dataset = "fashion_mnist"
    config.model = "cnn"
    config.num_epochs = 10
    return config
