"""jacuap.errors: one family of user errors, each message one line."""

import pytest

from jacuap import errors


@pytest.mark.parametrize("kind", [errors.ConfigError, errors.DataError, errors.ModelError,
                                  errors.CheckpointError, errors.AttackError, errors.ParallelError])
def test_every_kind_is_a_one_line_value_error(kind):
    exc = kind("first line\n  second   line")
    assert isinstance(exc, errors.UserError) and isinstance(exc, ValueError)
    assert str(exc) == "first line second line"


def test_one_line_shortens_and_names_empty_exceptions():
    assert errors.one_line(RuntimeError()) == "RuntimeError"
    assert errors.one_line(KeyError("missing")) == "missing"
    assert errors.one_line("a" * 20, limit=10) == "aaaaaaa..."
