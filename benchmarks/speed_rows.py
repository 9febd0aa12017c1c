"""The rows of ``speed.py``, in its table's order (a module of its own so that ``speed_ab.py`` reads them without JAX)."""

#: The Fashion-MNIST CNN rows (batch 128, 28x28x1).
CNN_ROWS = (
    "train_plain",
    "train_jr1",
    "train_jr_exact",
    "train_jr_exact_vmap_jacrev",
    "input_jacobian",
    "stacked_spectral_norm",
    "stacked_spectral_norm_power50",
    "sgd_uap_epoch",
    "deepfool_uap_pass",
)

#: CIFAR-size (ResNet-20, 32x32x3, batch 128) and ImageNet-size (3x224x224) rows: benchmarks/speed_cifar.py.
CIFAR_ROWS = (
    "cifar_train_plain",
    "cifar_train_jr1",
    "cifar_input_jacobian",
    "cifar_sgd_uap_step",
    "cifar_deepfool_uap_pass",
    "imagenet224_jvp",
    "imagenet224_lobpcg",
)

ROWS = CNN_ROWS + CIFAR_ROWS
