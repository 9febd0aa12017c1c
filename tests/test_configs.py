"""The packaged configs: every one validates, unknown fields are rejected naming the closest one."""

import json
import os

import ml_collections
import pytest

from jacuap import configs
from jacuap.configs import default
from jacuap.errors import ConfigError


@pytest.mark.parametrize("name", sorted(configs.CONFIGS))
def test_every_packaged_config_validates_and_has_its_file(name):
    config = configs.get_config(name)
    configs.validate(config)
    assert tuple(config.keys()) == configs.FIELDS
    path = configs.config_path(name)
    assert os.path.isfile(path) and os.path.dirname(path) == os.path.dirname(configs.__file__)


def test_dataset_configs_differ_from_the_default_where_they_say():
    assert (configs.get_config("digits").dataset, configs.get_config("digits").model) == ("digits", "mlp")
    assert configs.get_config("cifar10").model == "resnet"
    assert configs.get_config().to_dict() == default.get_config().to_dict()


def test_unknown_config_name_names_the_closest():
    with pytest.raises(ConfigError, match="unknown config 'mnsit' .*'mnist'"):
        configs.config_path("mnsit")
    with pytest.raises(ConfigError, match="'cifar10'"):
        configs.get_config("cifar")


def test_unknown_field_is_rejected_naming_the_closest():
    config = configs.get_config()
    # A locked ConfigDict refuses new keys, by attribute and by update.
    with pytest.raises(AttributeError) as info:
        config.jr_lamda = 0.3
    assert str(configs.as_config_error(info.value)) == "unknown config field 'jr_lamda' (did you mean 'jr_lambda'?)"
    with pytest.raises(KeyError) as info:
        config.update(batchsize=3)
    assert str(configs.as_config_error(info.value)) == "unknown config field 'batchsize' (did you mean 'batch_size'?)"
    assert configs.as_config_error(ValueError("other")) is None
    with pytest.raises(ConfigError, match=r"^unknown config field 'num_epoch' \(did you mean 'num_epochs'\?\)$"):
        configs.override(config, num_epoch=3)
    assert "jr_lamda" not in config and "batchsize" not in config
    assert configs.override(config, num_epochs=3).num_epochs == 3


ONE_LINE = r"^unknown config field 'num_epoch' \(did you mean 'num_epochs'\?\)$"


@pytest.mark.parametrize("name", sorted(configs.CONFIGS))
def test_typo_in_update_set_or_read_is_one_line_naming_the_closest(name):
    config = configs.get_config(name)
    before = config.to_dict()

    def update():
        config.update(seed=7, num_epoch=3)  # the good key is not applied either

    def set_attr():
        config.num_epoch = 3

    def set_item():
        config["num_epoch"] = 3

    def read_attr():
        return config.num_epoch

    def read_item():
        return config["num_epoch"]

    for action in (update, set_attr, set_item, read_attr, read_item):
        with pytest.raises(ConfigError, match=ONE_LINE) as info:
            action()
        # ...and still the KeyError/AttributeError ml_collections and absl catch.
        assert isinstance(info.value, KeyError) and isinstance(info.value, AttributeError), action.__name__
        assert "\n" not in str(info.value) and "Other fields" not in str(info.value)
    assert config.to_dict() == before
    assert not hasattr(config, "num_epoch") and config.get("num_epoch", "absent") == "absent"
    assert "num_epoch" not in config.__dict__


def test_locked_config_keeps_configdict_behaviour():
    config = configs.override(configs.get_config("digits"), num_epochs=3)
    copy = config.copy_and_resolve_references()
    assert isinstance(copy, configs.LockedConfigDict) and copy.is_locked and copy.num_epochs == 3
    plain = ml_collections.ConfigDict(config.to_dict()).lock()
    assert config == plain and plain == config and config != configs.get_config("digits")
    assert json.loads(config.to_json())["num_epochs"] == 3 and json.loads(json.dumps(config.to_dict())) == plain.to_dict()
    with config.unlocked():
        config.extra = 1  # unlocked, a new field is allowed, as in ConfigDict
    assert config.extra == 1
    config.model_kwargs = {"width": 8}  # a nested group hints from its own fields
    with pytest.raises(AttributeError, match=r"^unknown config field 'widht' \(did you mean 'width'\?\)$"):
        config.model_kwargs.widht


def _parse_config_flag(argv):
    """``--config`` as train.py defines it (absl reads the overrides from ``argv``)."""
    from absl import flags
    from ml_collections import config_flags

    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", configs.config_path("digits"), "config", flag_values=values,
                                    lock_config=True, sys_argv=argv)
    values(argv)
    return values.config


def test_command_line_override_of_an_unknown_field_is_one_line():
    config = _parse_config_flag(["prog", "--config.num_epochs=3"])
    assert config.num_epochs == 3 and config.dataset == "digits"
    assert isinstance(config, configs.LockedConfigDict) and config.is_locked
    with pytest.raises(ConfigError, match=r"^unknown config field 'num_epoch' "):
        config.update(num_epoch=4)
    with pytest.raises(Exception) as info:
        _parse_config_flag(["prog", "--config.learning_rte=0.1"])
    error = configs.as_config_error(info.value)
    assert str(error) == "unknown config field 'learning_rte' (did you mean 'learning_rate'?)"


def test_plain_dict_missing_or_extra_field_is_a_config_error():
    with pytest.raises(ConfigError, match="ConfigDict .* got dict"):
        configs.validate(default.get_config().to_dict())
    missing = ml_collections.ConfigDict({k: v for k, v in default.get_config().items() if k != "seed"})
    with pytest.raises(ConfigError, match="no field 'seed'"):
        configs.validate(missing)
    extra = ml_collections.ConfigDict(default.get_config().to_dict())
    extra.jr_lamda = 0.2
    with pytest.raises(ConfigError, match="'jr_lamda' .*'jr_lambda'"):
        configs.validate(extra)


BAD_VALUES = [
    (dict(dataset="imagenet"), "unknown dataset"),
    (dict(model="vit"), "unknown model"),
    (dict(jr_lambda=-0.1), "jr_lambda"),
    (dict(jr_lambda=float("inf")), "jr_lambda"),
    (dict(num_epochs=0), "num_epochs"),
    (dict(batch_size=0), "batch_size"),
    (dict(jr_num_proj=0), "jr_num_proj"),
    (dict(jr_num_proj=1.5), "jr_num_proj"),
    (dict(learning_rate=0.0), "learning_rate"),
    (dict(optimizer="lbfgs"), "optimizer"),
    (dict(lr_schedule="step"), "lr_schedule"),
    (dict(data_dir="/nonexistent/dir"), "data_dir"),
    (dict(adv_training="mart"), "adv_training"),
    (dict(adv_eps=1.5), "adv_eps"),
    (dict(adv_steps=0), "adv_steps"),
    (dict(adv_step_size=-1.0), "adv_step_size"),
    (dict(jr_space="logits"), "jr_space"),
    (dict(checkpoint_every_steps=-1), "checkpoint_every_steps"),
    (dict(max_to_keep=0), "max_to_keep"),
    (dict(eval_num_inputs=0), "eval_num_inputs"),
    (dict(seed=-1), "seed"),
    (dict(momentum=-0.5), "momentum"),
]


@pytest.mark.parametrize("overrides,message", BAD_VALUES)
def test_bad_value_is_a_one_line_config_error_naming_the_field(overrides, message):
    config = configs.get_config("digits")
    with config.unlocked(), config.ignore_type():
        config.update(overrides)
    with pytest.raises(ConfigError, match=message) as info:
        configs.validate(config)
    assert "\n" not in str(info.value)


def test_none_values_where_allowed():
    configs.validate(configs.override(configs.get_config("digits"), jr_num_proj=None, max_to_keep=None))
