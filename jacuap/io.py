"""Atomic, fsync'ed writes by process 0: text, JSON, ``.npy`` and figures.

Every file jacuap writes goes through here, so that a reader (or a killed
and resumed run) sees the old file or the new one, never a part:

1. write a temporary file beside the target, ``fsync`` it;
2. give it the permissions of a normally created file (``0666 & ~umask``:
   ``mkstemp`` would leave 0600, unreadable by others on a shared disk);
3. ``os.replace`` it onto the target; the temporary file is removed on any
   failure (including ``KeyboardInterrupt``).

On a multi-host job only process 0 writes; the others return at once.

:func:`exclusive_lock` keeps two processes out of one workdir or output folder.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import tempfile
from typing import Any, Callable, IO, Iterator, Optional

from jacuap.errors import BusyError, CheckpointError

__all__ = [
    "is_primary",
    "atomic_write",
    "write_text_atomic",
    "replace_between",
    "write_json_atomic",
    "save_npy_atomic",
    "save_figure_atomic",
    "to_json",
    "exclusive_lock",
    "existing_ancestor",
    "read_workdir_config",
    "LOCK_NAME",
]

LOCK_NAME = ".lock"


def is_primary() -> bool:
    """True on process 0, the one that writes files."""
    import jax  # here, so that the programs' argument checks (jacuap.cli) load no JAX

    return jax.process_index() == 0


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str, write: Callable[[IO[bytes]], None]) -> None:
    """Process 0 calls ``write(f)`` on a temporary binary file, then renames it onto ``path``."""
    if not is_primary():
        return
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def replace_between(text: str, begin: str, end: str, body: str) -> Optional[str]:
    """``text`` with what lies between the markers ``begin`` and ``end`` replaced by ``body``; None if either is missing.

    >>> replace_between("a<b>old</b>c", "<b>", "</b>", "new")
    'a<b>new</b>c'
    """
    i, j = text.find(begin), text.find(end)
    if i < 0 or j < i:
        return None
    return text[:i + len(begin)] + body + text[j:]


def write_text_atomic(path: str, text: str) -> None:
    """Process 0 writes ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def to_json(obj: Any) -> str:
    """``obj`` as indented JSON; NaN or infinity raise ``ValueError`` (they are not JSON)."""
    return json.dumps(obj, indent=2, allow_nan=False) + "\n"


def write_json_atomic(path: str, obj: Any) -> None:
    """Process 0 writes ``obj`` as JSON to ``path`` atomically (NaN/inf refused: see :func:`to_json`)."""
    write_text_atomic(path, to_json(obj))


def save_npy_atomic(path: str, array: Any) -> None:
    """Process 0 saves ``array`` in NumPy's ``.npy`` format to ``path`` atomically."""
    import numpy as np

    atomic_write(path, lambda f: np.save(f, np.asarray(array)))


def save_figure_atomic(fig: Any, path: str, **savefig_kwargs: Any) -> None:
    """Process 0 saves a matplotlib figure to ``path`` atomically; the format comes from ``path``'s suffix."""
    fmt = os.path.splitext(os.fspath(path))[1].lstrip(".") or "png"
    atomic_write(path, lambda f: fig.savefig(f, format=fmt, **savefig_kwargs))


@contextlib.contextmanager
def exclusive_lock(directory: str) -> Iterator[None]:
    """Holds ``directory/.lock`` for the ``with`` block, or raises :class:`BusyError` at once.

    The lock is the kernel's ``flock`` on that file: it dies with its process,
    so a lock left by a killed run (SIGKILL, a crash, a lost machine) is not
    stale: the next run simply takes it.  The file holds the holder's PID, which
    the error names.  Only process 0 locks (the hosts of one multi-host job
    share the workdir by design).  ``directory`` must exist.

    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> with exclusive_lock(d):
    ...     with exclusive_lock(d):
    ...         pass
    Traceback (most recent call last):
    jacuap.errors.BusyError: ... is in use by process ...
    """
    if not is_primary():
        yield
        return
    path = os.path.join(os.fspath(directory), LOCK_NAME)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
            raise BusyError(f"{directory} is in use by process {holder}; wait for it to finish "
                            f"or choose another folder") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        yield
    finally:
        os.close(fd)  # releases the flock


def existing_ancestor(path: str) -> str:
    """``path`` made absolute if something exists there, else its nearest existing ancestor.

    What decides whether a folder can be created at ``path``: the first
    existing entry on the way up must be a writable directory.

    >>> existing_ancestor("/") == "/"
    True
    """
    path = os.path.abspath(os.path.expanduser(os.fspath(path)))
    while not os.path.lexists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path


def read_workdir_config(workdir: str) -> dict:
    """The ``config.json`` of a train.py ``workdir`` as a dict (no JAX: the programs check it first).

    CheckpointError (one line) when the folder does not exist or holds no
    readable JSON object in ``config.json``.
    """
    if not os.path.isdir(workdir):
        raise CheckpointError(f"workdir {workdir!r} does not exist")
    path = os.path.join(workdir, "config.json")
    try:
        with open(path) as f:
            config = json.load(f)
    except (OSError, ValueError) as exc:
        raise CheckpointError(
            f"{path} is missing or unreadable ({type(exc).__name__}); is {workdir!r} a train.py workdir?"
        ) from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} is not a config (a JSON object); restore it from the run")
    return config
