"""What train.py and attack.py share: flag parsing and one-line user errors.

User mistakes (bad flags, unknown dataset, missing checkpoint...) end the
program with ``<prog>: error: <one line>`` on stderr and exit code 2, never
a traceback; a diverged run exits 1; a preempted run exits 0 after saving.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any, Callable, Dict, NoReturn

from absl import app, flags, logging

from jacuap import checkpoints, data, evaluation, models, training

USER_ERRORS = (
    training.ConfigError,
    evaluation.AttackError,
    data.DataError,
    models.ModelError,
    checkpoints.CheckpointError,
)

EXIT_USAGE = 2


class UsageError(ValueError):
    """A program-level user mistake (bad flag value)."""


def _prog() -> str:
    return os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "jacuap"


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    """Prints ``prog: error: message`` (one line) and exits."""
    print(f"{_prog()}: error: {' '.join(str(message).split())}", file=sys.stderr, flush=True)
    sys.exit(code)


@contextlib.contextmanager
def user_errors():
    """Turns jacuap's user-error exceptions into a one-line message and exit code."""
    try:
        yield
    except (UsageError,) + USER_ERRORS as exc:
        fail(str(exc))
    except training.TrainingDiverged as exc:
        fail(str(exc), code=1)
    except training.Preempted as exc:
        print(f"{_prog()}: {exc}", file=sys.stderr, flush=True)
        sys.exit(0)


def _parse_flags(argv):
    try:
        rest = flags.FLAGS(argv)
        if not flags.FLAGS["verbosity"].present:
            # orbax logs every save at INFO; keep the programs' output readable.
            logging.set_verbosity(logging.WARNING)
        return rest
    except flags.Error as exc:
        fail(str(exc).splitlines()[0] if str(exc) else "bad flags")
    except (ValueError, KeyError, AttributeError, TypeError, OSError, SyntaxError) as exc:
        # ml_collections config overrides and config files raise these.
        fail(f"bad --config: {exc}")


def run(main: Callable) -> int:
    """``absl.app.run`` with flag errors reported as one line and exit code 2."""
    app.run(main, flags_parser=_parse_flags)
    return 0


def print_table(title: str, values: Dict[str, Any]) -> None:
    """A two-column table of a flat dict, floats with 4 decimals."""
    width = max(len(k) for k in values)
    print(f"== {title} ==")
    for key, value in values.items():
        text = f"{value:.4f}" if isinstance(value, float) else str(value)
        print(f"  {key:<{width}}  {text}")
