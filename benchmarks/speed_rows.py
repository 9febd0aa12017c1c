"""The rows of ``speed.py``, in its table's order (a module of its own so that ``speed_ab.py`` reads them without JAX)."""

ROWS = (
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
