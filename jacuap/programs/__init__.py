"""The two programs, as importable modules: :mod:`.train` (``jacuap-train``) and
:mod:`.attack` (``jacuap-attack``); ``train.py`` and ``attack.py`` at the
repository root run the same code.  Importing one defines its absl flags.

:func:`train_main` and :func:`attack_main` are the entry points.  They load
the program under :func:`interrupt_exits`, so that Ctrl-C while the
libraries load (seconds: JAX) ends in one line and exit status 130, as it
does later (``jacuap.cli.run``).
"""

import contextlib
import importlib
import os
import signal
import sys
from typing import Iterator, Optional

__all__ = ["train_main", "attack_main", "interrupt_exits"]


@contextlib.contextmanager
def interrupt_exits(program: Optional[str] = None) -> Iterator[None]:
    """Within: SIGINT is held, then prints one line and ends the process with status 130 where the stretch ends.

    ``program``: the name the line starts with (default: the script's).

    For stretches that write nothing and must not see ``KeyboardInterrupt``
    raised inside them: imports, where numpy and jaxlib turn it into an
    ``ImportError`` with two tracebacks, and JAX's garbage-collection
    callback drops it (the run then goes on).  A SIGINT that the parent set
    to be ignored (a job started in the background) stays ignored.
    """
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return

    program = program or os.path.basename(sys.argv[0])

    def _exit(signum, frame):
        os.write(2, f"{program}: interrupted while starting; nothing was written\n".encode())
        os._exit(130)

    signal.signal(signal.SIGINT, _exit)
    # Blocked, too, until the stretch ends: a Python handler still runs between two bytecodes of an
    # extension module's initialisation, and exiting there crashed jaxlib's (a segfault, 1 start in 48).
    # A SIGINT that arrived meanwhile is pending: it ends the process here.
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        if signal.SIGINT in signal.sigpending():
            _exit(signal.SIGINT, None)
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _start(module: str) -> None:
    with interrupt_exits():
        program = importlib.import_module(module)
    program.run()


def train_main() -> None:
    """``jacuap-train`` and ``train.py``."""
    _start("jacuap.programs.train")


def attack_main() -> None:
    """``jacuap-attack`` and ``attack.py``."""
    _start("jacuap.programs.attack")
