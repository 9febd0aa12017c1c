"""CIFAR-10 (32x32x3): a pre-activation ResNet-18 with GroupNorm."""

import ml_collections

from jacuap.configs import default


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.dataset = "cifar10"
    config.model = "resnet"
    config.optimizer = "sgd"
    config.learning_rate = 0.1
    config.num_epochs = 30
    return config
