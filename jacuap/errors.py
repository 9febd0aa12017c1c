"""User errors: one exception family, one one-line formatter.

Every mistake a user can make (a bad config value, a missing dataset, an
unknown model, a damaged checkpoint, an impossible attack request, a batch
that does not split over the devices) raises a :class:`UserError` subclass
whose message is a single line naming the argument and what to do.  The
programs print it as ``prog: error: <line>`` and exit 2 (see
:mod:`jacuap.cli`); library users catch ``UserError`` or ``ValueError``.
"""

from __future__ import annotations

import re
from typing import Union

__all__ = [
    "UserError",
    "ConfigError",
    "DataError",
    "ModelError",
    "CheckpointError",
    "AttackError",
    "ParallelError",
    "BusyError",
    "UnwritableError",
    "one_line",
]


def one_line(what: Union[BaseException, str], limit: int = 300) -> str:
    """``what`` as one line of at most ``limit`` characters.

    An exception whose message is empty becomes its type name; newlines and
    runs of spaces fold into one space; a longer text ends in ``...``.

    >>> one_line(ValueError("bad\\n   value"))
    'bad value'
    >>> one_line(KeyError())
    'KeyError'
    >>> one_line("x" * 10, limit=8)
    'xxxxx...'
    """
    text = what if isinstance(what, str) else str(what)
    if isinstance(what, KeyError) and what.args:
        text = str(what.args[0])  # KeyError's str() wraps the key in quotes
    text = " ".join(re.split(r"\s+", text.strip()))
    if not text and isinstance(what, BaseException):
        text = type(what).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


class UserError(ValueError):
    """A user mistake; the message is always one line (newlines are folded).

    ``exit_code`` is what the programs exit with: 2 for a mistake in the
    request, 1 for a fault of the environment the user must fix outside it.
    """

    exit_code = 2

    def __init__(self, message: object = ""):
        super().__init__(one_line(str(message), limit=2000))


class ConfigError(UserError):
    """An invalid training or attack configuration."""


class DataError(UserError):
    """A dataset that cannot be found or read (the message names what was tried)."""


class ModelError(UserError):
    """An unknown model name or a model that does not fit the data."""


class CheckpointError(UserError):
    """A workdir without a checkpoint, or a checkpoint that cannot be restored."""


class AttackError(UserError):
    """An attack request that cannot be carried out."""


class ParallelError(UserError):
    """A batch that cannot be split over the devices, or a failed multi-host start."""


class BusyError(UserError):
    """A workdir or output folder another live process holds (see :func:`jacuap.io.exclusive_lock`)."""


class UnwritableError(UserError):
    """A folder the program must write that the file system refuses (permissions, read-only): exit 1."""

    exit_code = 1
