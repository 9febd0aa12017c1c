"""What train.py and attack.py share: flag parsing, one-line errors, exit codes, tables.

A user mistake (a bad flag, an unknown config field, a dataset that cannot
be found, a missing checkpoint: any :class:`jacuap.errors.UserError`) ends
the program with ``<prog>: error: <one line>`` on stderr, never a
traceback.  Exit codes:

* 0: done, or preempted (SIGTERM/SIGINT) after saving a checkpoint; ``--help``;
* 1: the run failed (the loss diverged, the disk is full);
* 2: a user mistake.

``--config=configs/NAME.py`` (the path the README used before the configs
moved into the package) names the packaged ``jacuap/configs/NAME.py`` when
no such file exists from the current folder.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any, Callable, Dict, Iterator, List, NoReturn, Optional

from absl import app, flags, logging

from jacuap import configs, errors, train
from jacuap.train import checkpoints

__all__ = [
    "EXIT_FAILED",
    "EXIT_USER_ERROR",
    "fail",
    "flag_errors",
    "user_errors",
    "resolve_config_file",
    "run",
    "print_table",
]

EXIT_FAILED = 1
EXIT_USER_ERROR = 2
# Long enough for a whole config dict in "workdir holds a run with another config {...}".
_MESSAGE_LIMIT = 2000
_HELP_FLAGS = ("--help", "-help", "-?", "--helpshort", "--helpfull", "--helpxml")


def _prog() -> str:
    return os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "jacuap"


def fail(message: Any, code: int = EXIT_USER_ERROR) -> NoReturn:
    """Prints ``prog: error: <message as one line>`` on stderr and exits with ``code``."""
    print(f"{_prog()}: error: {errors.one_line(message, limit=_MESSAGE_LIMIT)}", file=sys.stderr, flush=True)
    sys.exit(code)


def _disk_full_message(exc: OSError, workdir: Optional[str]) -> str:
    where = f" ({exc.filename})" if exc.filename else ""
    if workdir is None:
        return f"{exc.strerror}{where}; free space and rerun the same command"
    last = checkpoints.latest_step(workdir)
    kept = f"checkpoint {last} is intact" if last is not None else "no checkpoint was written"
    return f"{exc.strerror}{where}; {kept}; free space and rerun the same command to resume"


@contextlib.contextmanager
def user_errors(workdir: Optional[str] = None) -> Iterator[None]:
    """Ends the program with one line and its exit code on what the user can act on.

    ``UserError`` exits 2; a diverged run or a full disk (``ENOSPC``,
    ``EDQUOT``, ...) exits 1, naming the checkpoint of ``workdir`` that is
    intact; a preempted run exits 0.  Anything else is a bug: its traceback
    shows.
    """
    try:
        yield
    except errors.UserError as exc:
        fail(exc)
    except train.TrainingDiverged as exc:
        fail(exc, code=EXIT_FAILED)
    except train.Preempted as exc:
        print(f"{_prog()}: {errors.one_line(exc, limit=_MESSAGE_LIMIT)}", file=sys.stderr, flush=True)
        sys.exit(0)
    except OSError as exc:
        if checkpoints.disk_errno(exc) is None:
            raise
        fail(_disk_full_message(exc, workdir), code=EXIT_FAILED)


@contextlib.contextmanager
def flag_errors() -> Iterator[None]:
    """Turns a bad flag or ``--config`` (file, field or value) into one line and exit 2.

    Wraps ``config_flags.DEFINE_config_file`` as well as the parsing: with no
    ``--config`` on the command line, the default file is loaded, with the
    ``--config.<field>`` overrides of ``sys.argv``, when the flag is defined.
    An unknown field is named with the closest known one.
    """
    try:
        yield
    except errors.UserError as exc:
        fail(exc)
    except (flags.Error, AttributeError, KeyError) as exc:
        config_error = configs.as_config_error(exc)
        if config_error is not None:
            fail(config_error)
        if isinstance(exc, flags.Error):
            fail(exc)
        fail(f"bad --config: {errors.one_line(exc, limit=_MESSAGE_LIMIT)}")
    except (ValueError, TypeError, OSError, SyntaxError) as exc:
        # A config file that cannot be read or whose get_config() fails.
        fail(f"bad --config: {errors.one_line(exc, limit=_MESSAGE_LIMIT)}")


def resolve_config_file(value: str) -> str:
    """``value`` of ``--config``, with ``configs/NAME.py`` mapped to the packaged config if it is no file here.

    A ``:argument`` suffix (passed to ``get_config``) is kept.  Raises
    ConfigError, one line naming the packaged configs, when the file is
    neither here nor packaged.

    >>> resolve_config_file("configs/digits.py").endswith(os.path.join("jacuap", "configs", "digits.py"))
    True
    """
    path, colon, argument = value.partition(":")
    if os.path.exists(path):
        return value
    name, ext = os.path.splitext(os.path.basename(path))
    if os.path.basename(os.path.dirname(path)) == "configs" and ext == ".py" and name in configs.CONFIGS:
        return configs.config_path(name) + colon + argument
    raise errors.ConfigError(
        f"--config: no file {path!r}; the packaged configs are "
        f"{', '.join(os.path.join('configs', n + '.py') for n in configs.CONFIGS)} "
        f"(in {os.path.dirname(configs.config_path())})")


def _with_config_file_resolved(argv: List[str]) -> List[str]:
    argv = list(argv)
    for i, arg in enumerate(argv):
        if arg == "--":
            break
        if arg.startswith(("--config=", "-config=")):
            flag, _, value = arg.partition("=")
            argv[i] = f"{flag}={resolve_config_file(value)}"
        elif arg in ("--config", "-config") and i + 1 < len(argv):
            argv[i + 1] = resolve_config_file(argv[i + 1])
    return argv


def _parse_flags(argv: List[str]) -> List[str]:
    try:
        with flag_errors():
            if "config" in flags.FLAGS:
                argv = _with_config_file_resolved(argv)
            rest = flags.FLAGS(argv)
    except SystemExit as exc:
        # absl ends --help with exit code 1; asking for help is no failure.
        if exc.code == 1 and any(a in _HELP_FLAGS for a in argv[1:]):
            sys.exit(0)
        raise
    if len(rest) > 1:
        fail(f"unexpected arguments: {' '.join(rest[1:])}")
    if not flags.FLAGS["verbosity"].present:
        # orbax logs every save at INFO; keep the programs' output readable.
        logging.set_verbosity(logging.WARNING)
    return rest


def run(main: Callable[[List[str]], Any]) -> NoReturn:
    """``absl.app.run(main)`` with flag errors as one line and exit code 2, ``--help`` exit 0."""
    app.run(main, flags_parser=_parse_flags)


def print_table(title: str, values: Dict[str, Any]) -> None:
    """A two-column table of a flat dict, floats with 4 decimals.

    >>> print_table("summary", {"test_accuracy": 0.91234, "epochs": 3})
    == summary ==
      test_accuracy  0.9123
      epochs         3
    """
    width = max(len(k) for k in values)
    print(f"== {title} ==")
    for key, value in values.items():
        text = f"{value:.4f}" if isinstance(value, float) else str(value)
        print(f"  {key:<{width}}  {text}")
