"""The packaged training configurations and their validation.

Each module (``default``, ``digits``, ``mnist``, ``fashion_mnist``,
``cifar10``) has a ``get_config()`` returning a locked
``ml_collections.ConfigDict`` (a :class:`~jacuap.configs.locked.LockedConfigDict`):
its fields are those of ``default`` and no others, so a typo such as
``config.jr_lamda = 0.1``, ``config.update(jr_lamda=0.1)`` or
``--config.jr_lamda=0.1`` raises, in one line naming the closest field,
instead of being silently ignored.

>>> from jacuap import configs
>>> config = configs.get_config("digits")
>>> config.dataset, config.model
('digits', 'mlp')
>>> configs.validate(config)
>>> os.path.basename(configs.config_path("digits"))
'digits.py'
>>> configs.override(config, jr_lamda=0.1)
Traceback (most recent call last):
jacuap.configs.locked.UnknownFieldError: unknown config field 'jr_lamda' (did you mean 'jr_lambda'?)
>>> config.update(num_epoch=3)
Traceback (most recent call last):
jacuap.configs.locked.UnknownFieldError: unknown config field 'num_epoch' (did you mean 'num_epochs'?)
"""

from __future__ import annotations

import difflib
import math
import os
import re
from typing import Any, Optional

import ml_collections
import numpy as np

from jacuap.budgets import budget_problem
from jacuap.configs import cifar10, default, digits, fashion_mnist, mnist
from jacuap.configs.locked import LockedConfigDict, UnknownFieldError, unknown_field
from jacuap.errors import ConfigError

__all__ = [
    "CONFIGS",
    "FIELDS",
    "OPTIMIZERS",
    "JR_SPACES",
    "JR_MODES",
    "ADV_TRAINING",
    "LR_SCHEDULES",
    "get_config",
    "config_path",
    "validate",
    "override",
    "closest_field",
    "unknown_field_error",
    "as_config_error",
    "LockedConfigDict",
    "UnknownFieldError",
]

CONFIGS = {
    "default": default,
    "digits": digits,
    "mnist": mnist,
    "fashion_mnist": fashion_mnist,
    "cifar10": cifar10,
}

#: The fields every training config has (and the only ones it may have).
FIELDS = tuple(default.get_config().keys())

OPTIMIZERS = ("adam", "sgd")
JR_SPACES = ("normalized", "pixels")
JR_MODES = ("frobenius", "stacked_spectral", "alignment")  # jacuap.train.regularizers.JR_MODES
ADV_TRAINING = ("none", "pgd", "uat", "trades", "sat", "cw_uat")
LR_SCHEDULES = ("constant", "cosine")


def _closest(name: str, choices) -> str:
    # cutoff=0: always name a candidate, even for a name like nothing known.
    return difflib.get_close_matches(str(name), list(choices), n=1, cutoff=0.0)[0]


def _check_name(name: str) -> None:
    if name not in CONFIGS:
        raise ConfigError(f"unknown config {name!r} (did you mean {_closest(name, CONFIGS)!r}?); "
                          f"choose one of {', '.join(CONFIGS)}")


def get_config(name: str = "default") -> ml_collections.ConfigDict:
    """A fresh, locked copy of the packaged config ``name`` (a key of ``CONFIGS``).

    >>> get_config().dataset
    'fashion_mnist'
    """
    _check_name(name)
    return CONFIGS[name].get_config()


def config_path(name: str = "default") -> str:
    """The file of the packaged config ``name``, e.g. for absl's ``config_flags.DEFINE_config_file``.

    >>> config_path("mnist").endswith(os.path.join("jacuap", "configs", "mnist.py"))
    True
    """
    _check_name(name)
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{name}.py")


def closest_field(name: str) -> str:
    """The config field whose name is closest to ``name`` (difflib's ratio).

    >>> closest_field("batchsize")
    'batch_size'
    """
    return _closest(name, FIELDS)


def unknown_field_error(name: str) -> ConfigError:
    """The one-line error for a field ``name`` that configs do not have (an :class:`UnknownFieldError`).

    >>> print(unknown_field_error("seeed"))
    unknown config field 'seeed' (did you mean 'seed'?)
    """
    return unknown_field(name, FIELDS)


_LOCKED_KEY = re.compile(r"""Key ["']([^"']+)["'] does not exist""")
_MISSING_ATTR = re.compile(r"""^[\\"']+([A-Za-z_]\w*)[\\"']""")  # "'name'", escaped or not
_UNKNOWN_FLAG = re.compile(r"""Unknown command line flag '[^'.]+\.([^']+)'""")


def as_config_error(exc: BaseException) -> Optional[ConfigError]:
    """The ConfigError for an unknown config field named in ``exc``, else None.

    ``exc`` is the ``AttributeError``/``KeyError`` of an attribute set or
    ``update`` on a locked config (or of reading a field it lacks), or absl's
    ``UnrecognizedFlagError`` for ``--config.<field>=...``; its (multi-line)
    text becomes one line naming the closest field.  A packaged config's own
    :class:`UnknownFieldError` (already that line) is returned as it is.

    >>> config = get_config()
    >>> try:
    ...     config.learning_rte = 0.1
    ... except AttributeError as exc:
    ...     print(as_config_error(exc))
    unknown config field 'learning_rte' (did you mean 'learning_rate'?)
    """
    if isinstance(exc, UnknownFieldError):
        return exc
    text = str(exc.args[0]) if exc.args else ""
    if isinstance(exc, (AttributeError, KeyError)):
        match = _LOCKED_KEY.search(text) or _MISSING_ATTR.match(text)
    else:
        match = _UNKNOWN_FLAG.search(text)
    if match is None or match.group(1) in FIELDS:
        return None
    return unknown_field_error(match.group(1))


def override(config: ml_collections.ConfigDict, **fields: Any) -> ml_collections.ConfigDict:
    """Sets ``fields`` on ``config`` (in place) and returns it; an unknown field raises ConfigError.

    >>> override(get_config("digits"), num_epochs=1).num_epochs
    1
    """
    for name in fields:
        if name not in FIELDS:
            raise unknown_field_error(name)
    config.update(fields)
    return config


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError on any value a training run cannot use; touches nothing on disk.

    ``config`` must be a ConfigDict with exactly the fields of
    ``default.get_config()``: a plain dict, a missing field or an unknown one
    (named with the closest known field) is a ConfigError too.

    >>> validate(override(get_config(), batch_size=0))
    Traceback (most recent call last):
    jacuap.errors.ConfigError: batch_size must be a positive integer, got 0
    """
    from jacuap import data, models  # heavy (JAX); configs alone stay light

    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"config must be an ml_collections.ConfigDict (see jacuap.configs.get_config), "
                          f"got {type(config).__name__}")
    missing = [name for name in FIELDS if name not in config]
    if missing:
        raise ConfigError(f"config has no field {missing[0]!r}; start from jacuap.configs.get_config()")
    unknown = [name for name in config.keys() if name not in FIELDS]
    if unknown:
        raise unknown_field_error(unknown[0])

    def need(ok: bool, message: str) -> None:
        if not ok:
            raise ConfigError(message)

    def one_of(name: str, choices) -> None:
        need(isinstance(config[name], str) and config[name] in choices,
             f"unknown {name} {config[name]!r}; choose one of {', '.join(choices)}")

    if data.is_own(config.dataset):  # npz:PATH, folder:PATH[@HxW]: the path must be there
        own_problem = data.own_problem(config.dataset)
        need(own_problem is None, str(own_problem))
    else:
        need(isinstance(config.dataset, str) and config.dataset in data.DATASETS,
             f"unknown dataset {config.dataset!r}; choose one of {', '.join(data.DATASETS)}, "
             f"or your own: {', '.join(data.OWN_FORMS.values())}")
    if not models.is_import_path(config.model):  # "pkg.mod:Class" is checked when imported
        one_of("model", sorted(models.MODELS))
    kwargs = config.model_kwargs
    need(isinstance(kwargs, (dict, ml_collections.ConfigDict)) and all(isinstance(k, str) for k in kwargs),
         f"model_kwargs must be a dict of keyword arguments, e.g. \"{{'width': 8}}\", got {kwargs!r}")
    need(isinstance(config.data_dir, str),
         f"data_dir must be a string (\"\" = the usual places), got {config.data_dir!r}")
    need(_is_finite(config.jr_lambda) and config.jr_lambda >= 0,
         f"jr_lambda must be a finite number >= 0, got {config.jr_lambda!r}")
    need(config.jr_num_proj is None or (_is_int(config.jr_num_proj) and config.jr_num_proj >= 1),
         f"jr_num_proj must be None (exact) or an integer >= 1, got {config.jr_num_proj!r}")
    one_of("jr_space", JR_SPACES)
    one_of("jr_mode", JR_MODES)
    need(_is_int(config.jr_power_iters) and config.jr_power_iters >= 1,
         f"jr_power_iters must be an integer >= 1, got {config.jr_power_iters!r}")
    need(_is_int(config.num_epochs) and config.num_epochs > 0,
         f"num_epochs must be a positive integer, got {config.num_epochs!r}")
    need(_is_int(config.batch_size) and config.batch_size > 0,
         f"batch_size must be a positive integer, got {config.batch_size!r}")
    need(_is_finite(config.learning_rate) and config.learning_rate > 0,
         f"learning_rate must be a finite number > 0, got {config.learning_rate!r}")
    need(_is_finite(config.momentum) and 0 <= config.momentum < 1,
         f"momentum must be a number in [0, 1), got {config.momentum!r}")
    one_of("optimizer", OPTIMIZERS)
    one_of("lr_schedule", LR_SCHEDULES)
    one_of("adv_training", ADV_TRAINING)
    problem = budget_problem(config.adv_eps, "linf", "adv_eps")  # the rule every budget shares
    need(problem is None, f"{problem} (pixel units)")
    need(_is_int(config.adv_steps) and config.adv_steps >= 1,
         f"adv_steps must be a positive integer, got {config.adv_steps!r}")
    need(_is_finite(config.adv_step_size) and config.adv_step_size >= 0,
         f"adv_step_size must be a finite number >= 0 (0 = default), got {config.adv_step_size!r}")
    need(_is_int(config.adv_heap_size) and config.adv_heap_size >= 1,
         f"adv_heap_size must be a positive integer, got {config.adv_heap_size!r}")
    need(_is_finite(config.trades_beta) and config.trades_beta >= 0,
         f"trades_beta must be a finite number >= 0, got {config.trades_beta!r}")
    # PRNGKey(seed) keeps 32 bits (without x64): seeds 2**32 apart would be the same run.
    need(_is_int(config.seed) and 0 <= config.seed < 2**32,
         f"seed must be an integer in [0, 2**32), got {config.seed!r}")
    need(_is_int(config.checkpoint_every_steps) and config.checkpoint_every_steps >= 0,
         f"checkpoint_every_steps must be an integer >= 0, got {config.checkpoint_every_steps!r}")
    need(config.max_to_keep is None or (_is_int(config.max_to_keep) and config.max_to_keep >= 1),
         f"max_to_keep must be an integer >= 1 (or None: keep all), got {config.max_to_keep!r}")
    need(_is_int(config.num_validation) and config.num_validation >= 0,
         f"num_validation must be a non-negative integer, got {config.num_validation!r}")
    need(_is_int(config.eval_num_inputs) and config.eval_num_inputs >= 1,
         f"eval_num_inputs must be a positive integer, got {config.eval_num_inputs!r}")
    need(isinstance(config.progress, (bool, np.bool_)), f"progress must be True or False, got {config.progress!r}")
    if config.data_dir:
        need(os.path.isdir(config.data_dir) and os.access(config.data_dir, os.R_OK | os.X_OK),
             f"data_dir {config.data_dir!r} is not a readable directory")


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def _is_finite(v) -> bool:
    """A number, neither NaN nor infinite."""
    return _is_number(v) and math.isfinite(v)
