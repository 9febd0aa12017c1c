"""Fashion-MNIST (28x28x1): the small CNN, as in the paper's benchmark."""

from configs import default


def get_config():
    config = default.get_config()
    config.dataset = "fashion_mnist"
    config.model = "cnn"
    config.num_epochs = 10
    return config
