"""What train.py and attack.py share: flag parsing, one-line errors, exit codes, tables.

A user mistake (a bad flag, an unknown config field, a dataset that cannot
be found, a missing checkpoint: any :class:`jacuap.errors.UserError`) ends
the program with ``<prog>: error: <one line>`` on stderr, never a
traceback.  Exit codes:

* 0: done, or preempted (SIGTERM/SIGINT) after saving a checkpoint; ``--help``;
* 1: the run failed, or its environment did (the loss diverged, the disk is
  full, a folder cannot be written);
* 2: a user mistake.

``--config=configs/NAME.py`` (the path the README used before the configs
moved into the package) names the packaged ``jacuap/configs/NAME.py`` when
no such file exists from the current folder.

This module imports no JAX: :mod:`jacuap.train` and its checkpoints are
imported by the functions that need them, so a flag or config mistake is
reported in about a second.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import sys
from typing import Any, Callable, Dict, Iterator, List, NoReturn, Optional

from absl import app, flags, logging

from jacuap import configs, errors, io
from jacuap.configs import reference

__all__ = [
    "EXIT_FAILED",
    "EXIT_USER_ERROR",
    "CONFIG_HELP",
    "fail",
    "flag_errors",
    "user_errors",
    "check_workdir",
    "resolve_config_file",
    "run",
    "print_table",
]

EXIT_FAILED = 1
EXIT_USER_ERROR = 2
# Long enough for a whole config dict in "workdir holds a run with another config {...}".
_MESSAGE_LIMIT = 2000
_HELP_FLAGS = ("--help", "-help", "-?", "--helpshort", "--helpfull", "--helpxml")
# Out of space: the run failed, free space and rerun (exit 1).
_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
# The folder cannot be written at all: choose another (exit 2).
_UNWRITABLE_ERRNOS = (errno.EROFS, errno.EACCES, errno.EPERM)
# A file where a folder should be.
_NOT_A_FOLDER_ERRNOS = (errno.EEXIST, errno.ENOTDIR)

#: The help of ``--config`` (train.py): the config fields, and where their defaults and meanings are.
CONFIG_HELP = (
    "Training configuration: a file with get_config(); configs/NAME.py names the packaged one. "
    "Set a field with --config.FIELD=VALUE; the fields: " + ", ".join(reference.DESCRIPTIONS)
    + f". Defaults and meanings: README 'Config fields' or `{reference.COMMAND}`.")


def _prog() -> str:
    return os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "jacuap"


def fail(message: Any, code: int = EXIT_USER_ERROR) -> NoReturn:
    """Prints ``prog: error: <message as one line>`` on stderr and exits with ``code``."""
    print(f"{_prog()}: error: {errors.one_line(message, limit=_MESSAGE_LIMIT)}", file=sys.stderr, flush=True)
    sys.exit(code)


def _latest_checkpoint(workdir: str) -> Optional[int]:
    from jacuap.train import checkpoints  # JAX, orbax: only once there is something to report

    return checkpoints.latest_step(workdir)


def _os_errno(exc: BaseException) -> Optional[int]:
    """The errno of ``exc`` that the user can act on, else None.

    Orbax reports disk errors as ``ValueError``s naming the errno; they are
    looked for only when :mod:`jacuap.train.checkpoints` is loaded (else no
    checkpoint was written).
    """
    if isinstance(exc, OSError) and exc.errno in _FULL_ERRNOS + _UNWRITABLE_ERRNOS + _NOT_A_FOLDER_ERRNOS:
        return exc.errno
    checkpoints = sys.modules.get("jacuap.train.checkpoints")
    return None if checkpoints is None else checkpoints.disk_errno(exc)


def _disk_message(exc: BaseException, code: int, workdir: Optional[str]) -> str:
    """One line for an OS error on a folder the program writes: what happened and what to do."""
    strerror = getattr(exc, "strerror", None) or os.strerror(code)
    filename = getattr(exc, "filename", None)
    where = f" ({filename})" if filename else ""
    last = _latest_checkpoint(workdir) if workdir else None
    kept = f"checkpoint {last} is intact; " if last is not None else ""
    if code in _NOT_A_FOLDER_ERRNOS:
        return (f"cannot create the folder {filename or workdir!r}: {os.strerror(code)}; a file is in the way; "
                f"choose another folder")
    if code in _UNWRITABLE_ERRNOS:
        folder = workdir or (os.path.dirname(filename) if filename else "the output folder")
        return f"{folder} is not writable ({strerror}{where}); {kept}choose a writable folder"
    if workdir is None:
        return f"{strerror}{where}; free space and rerun the same command"
    kept = kept or "no checkpoint was written; "
    return f"{strerror}{where}; {kept}free space and rerun the same command to resume"


def _user_exit(exc: BaseException, workdir: Optional[str]) -> None:
    """Exits for ``exc`` if the user can act on it; returns (a bug) otherwise."""
    if isinstance(exc, errors.UserError):
        fail(exc, code=exc.exit_code)
    train = sys.modules.get("jacuap.train")  # its exceptions exist only once it is loaded
    if train is not None and isinstance(exc, train.TrainingDiverged):
        fail(exc, code=EXIT_FAILED)
    if train is not None and isinstance(exc, train.Preempted):
        print(f"{_prog()}: {errors.one_line(exc, limit=_MESSAGE_LIMIT)}", file=sys.stderr, flush=True)
        sys.exit(0)
    code = _os_errno(exc)
    if code is not None:
        fail(_disk_message(exc, code, workdir),
             code=EXIT_FAILED if code in _FULL_ERRNOS + _UNWRITABLE_ERRNOS else EXIT_USER_ERROR)


@contextlib.contextmanager
def user_errors(workdir: Optional[str] = None) -> Iterator[None]:
    """Ends the program with one line and its exit code on what the user can act on.

    ``UserError`` exits with its ``exit_code`` (2, or 1 for
    ``UnwritableError``); a diverged run, a full disk (``ENOSPC``, ``EDQUOT``,
    ``EFBIG``) or a folder that cannot be written (``EROFS``, ``EACCES``,
    ``EPERM``) exits 1, naming the checkpoint of ``workdir`` that is intact;
    a file where a folder should be (``EEXIST``, ``ENOTDIR``) exits 2; a
    preempted run exits 0.  Anything else is a bug: its traceback
    shows.
    """
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - re-raised unless the user can act on it
        _user_exit(exc, workdir)
        raise


def check_workdir(workdir: Optional[str], flag: str = "--workdir") -> None:
    """Raises ConfigError (UnwritableError if not writable), before anything is written, if ``workdir`` cannot be a folder this program writes.

    It must be non-empty and an existing writable folder, or creatable: its
    nearest existing ancestor a writable folder.  (As root, permissions
    rarely stop a write; a read-only file system still does.)
    """
    if not workdir:
        raise errors.ConfigError(f"{flag} must name a folder, got {workdir!r}")
    path = os.path.abspath(os.path.expanduser(workdir))
    existing = io.existing_ancestor(path)
    if not os.path.isdir(existing):
        kind = "a broken symbolic link" if os.path.islink(existing) else "a file"
        what = f"is {kind}" if existing == path else f"cannot be created: {existing} is {kind}"
        raise errors.ConfigError(f"{flag} {workdir!r} {what}, not a folder; choose another {flag}")
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "" if existing == path else f" cannot be created: {existing}"
        raise errors.UnwritableError(f"{flag} {workdir!r}{what} is not writable (permissions or a read-only "
                                 f"file system); choose a writable folder")


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
        fail(_with_field_advice(exc))
    except (flags.Error, AttributeError, KeyError, TypeError) as exc:
        sub_field = _sub_field_error(sys.argv)  # at DEFINE time, the overrides come from sys.argv
        if sub_field is not None:
            fail(sub_field)
        config_error = configs.as_config_error(exc)
        if config_error is not None:
            fail(_with_field_advice(config_error))
        if isinstance(exc, flags.Error):
            fail(exc)
        if isinstance(exc, AttributeError) and "'get_config'" in str(exc):
            fail("bad --config: the file defines no get_config(); a config file returns its "
                 "ml_collections.ConfigDict from get_config() (see jacuap/configs/default.py)")
        fail(f"bad --config: {errors.one_line(exc, limit=_MESSAGE_LIMIT)}")
    except (ValueError, OSError, SyntaxError) as exc:
        # A config file that cannot be read or whose get_config() fails.
        fail(f"bad --config: {errors.one_line(exc, limit=_MESSAGE_LIMIT)}")


_UNKNOWN_FIELD = re.compile(r"^unknown config field '([^']+)' \(did you mean '[^']+'\?\)$")


def _with_field_advice(exc: errors.UserError) -> Any:
    """An unknown-field error whose guess is not close becomes one naming every field."""
    match = _UNKNOWN_FIELD.match(str(exc))
    return reference.unknown_field_message(match.group(1)) if match else exc


def _sub_field_error(argv: List[str]) -> Optional[errors.ConfigError]:
    """``--config.dataset.x=1``: a dotted override below a field that is no group (absl says less)."""
    for arg in argv[1:]:
        if arg == "--":
            break
        name = arg.lstrip("-").partition("=")[0]
        parts = name.split(".")
        if len(parts) > 2 and parts[0] == "config" and parts[1] in configs.FIELDS:
            return errors.ConfigError(f"--{name}: config field {parts[1]!r} has no sub-fields; "
                                      f"use --config.{parts[1]}=VALUE")
    return None


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
                sub_field = _sub_field_error(argv)
                if sub_field is not None:
                    raise sub_field
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


def run(main: Callable[[List[str]], Any], program: Optional[str] = None) -> NoReturn:
    """``absl.app.run(main)`` with flag errors as one line and exit code 2, ``--help`` exit 0.

    ``program``: the module defining the program's flags (``__name__`` of
    :mod:`jacuap.programs.train`, say).  absl's ``--help`` lists the key flags
    of the script that was started (``sys.argv[0]``: ``train.py`` or the
    console script ``jacuap-train``), so the program's flags are made its key
    flags too, and its docstring the usage text.
    """
    if "" not in sys.path and os.getcwd() not in sys.path:
        # A model given by import path (--config.model=my_nets:Net) imports from the current
        # folder, as under `python -m`, whether train.py or the console script jacuap-train runs.
        sys.path.insert(1 if sys.path else 0, os.getcwd())
    if program is not None:
        for flag in flags.FLAGS.get_key_flags_for_module(program):
            flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
        main_module = sys.modules.get("__main__")
        if main_module is not None and sys.modules[program].__doc__:
            main_module.__doc__ = sys.modules[program].__doc__  # --help's usage text
    try:
        app.run(main, flags_parser=_parse_flags)
    except KeyboardInterrupt:  # outside the stretches that turn SIGINT into a clean stop (training)
        print(f"{_prog()}: interrupted; what was finished is kept: rerun the same command to resume",
              file=sys.stderr, flush=True)
        sys.exit(130)


def summary_notes(summary: Dict[str, Any]) -> Dict[str, str]:
    """What each of ``summary.json``'s numbers was measured on (split, set size), for printing beside it.

    >>> summary_notes({"test_accuracy": 0.9, "num_test": 360, "jacobian_num_inputs": 100})["stacked_spectral_norm"]
    "sigma_max of the first 100 test inputs' Jacobians stacked"
    """
    n, test, val = summary.get("jacobian_num_inputs"), summary.get("num_test"), summary.get("num_validation")
    notes = {
        "test_accuracy": f"{test} test inputs" if test else None,
        "validation_accuracy": f"{val} validation inputs" if val else None,
        "train_accuracy_last_epoch": "running mean over the last epoch's batches",
        "mean_jacobian_frobenius_sq": f"mean ||J(x)||_F^2 over the first {n} test inputs" if n else None,
        "stacked_spectral_norm": f"sigma_max of the first {n} test inputs' Jacobians stacked" if n else None,
        "train_seconds": "compilation and checkpoints included",
    }
    return {k: v for k, v in notes.items() if v}


def print_table(title: str, values: Dict[str, Any], notes: Optional[Dict[str, str]] = None) -> None:
    """A two-column table of a flat dict, floats with 4 decimals, and each key's note (if any) in parentheses.

    >>> print_table("summary", {"test_accuracy": 0.91234, "epochs": 3}, {"test_accuracy": "360 test inputs"})
    == summary ==
      test_accuracy  0.9123  (360 test inputs)
      epochs         3
    """
    notes = notes or {}
    width = max(len(k) for k in values)
    texts = {k: f"{v:.4f}" if isinstance(v, float) else str(v) for k, v in values.items()}
    value_width = max((len(t) for k, t in texts.items() if notes.get(k)), default=0)
    print(f"== {title} ==")
    for key, text in texts.items():
        note = f"  ({notes[key]})" if notes.get(key) else ""
        print(f"  {key:<{width}}  {text:<{value_width if note else 0}}{note}".rstrip())
