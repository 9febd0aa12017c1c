"""``npz:PATH``: a NumPy ``.npz`` archive of images and labels (:func:`read_npz`).

Two layouts: arrays ``x`` (images) and ``y`` (labels), split 80/20 by the
seed (:func:`jacuap.data.own.split_indices`); or ``x_train``, ``y_train``,
``x_test``, ``y_test``, a split that is kept.  An optional ``class_names``
(strings, one per class) names the labels.  Other arrays are ignored.  The
archive is read with ``allow_pickle=False``: an array of Python objects is
refused, never unpickled.

>>> import os, tempfile
>>> path = os.path.join(tempfile.mkdtemp(), "toy.npz")
>>> np.savez(path, x=np.zeros((10, 4, 4), np.uint8), y=np.arange(10) % 2, class_names=np.array(["cat", "dog"]))
>>> read = read_npz(path)
>>> sorted(read.arrays), read.class_names
(['x', 'y'], ('cat', 'dog'))
"""

from __future__ import annotations

import hashlib
import zipfile

import numpy as np

from jacuap.data.own import Read
from jacuap.errors import DataError

__all__ = ["SPLIT_ARRAYS", "read_npz"]

#: The arrays of the layout that carries its own split.
SPLIT_ARRAYS = ("x_train", "y_train", "x_test", "y_test")


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _array(archive, key: str, path: str) -> np.ndarray:
    try:
        return archive[key]
    except ValueError as exc:  # allow_pickle=False: an object array
        if "pickle" in str(exc).lower():
            raise DataError(f"npz {path}: array {key!r} holds Python objects (dtype object), which are never "
                            f"unpickled; save it as a numeric (or, for class_names, string) array") from None
        raise DataError(f"npz {path}: array {key!r} cannot be read ({exc})") from None
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"npz {path}: array {key!r} cannot be read ({type(exc).__name__}: {exc}); "
                        "the file is damaged") from None


def _class_names(names: np.ndarray, path: str):
    if names.ndim != 1 or names.dtype.kind not in "US":
        raise DataError(f"npz {path}: class_names must be a 1-D array of strings, got "
                        f"{names.dtype}{list(names.shape)}")
    return tuple(n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n) for n in names.tolist())


def read_npz(path: str) -> Read:
    """The arrays of the ``.npz`` file ``path`` (see the module docstring), unchecked beyond the layout.

    Raises:
      DataError: not a readable ``.npz`` archive, neither layout (the message
        lists the arrays found), both layouts, an object array.
    """
    try:
        digest = _sha256(path)
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"npz {path} is not a readable .npz archive ({reason}); "
                        "save one with np.savez(PATH, x=images, y=labels)") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError(f"npz {path} is a single .npy array, not a .npz archive; "
                        "save one with np.savez(PATH, x=images, y=labels)")
    with archive:
        found = set(archive.files)
        split = [k for k in SPLIT_ARRAYS if k in found]
        if split:
            missing = [k for k in SPLIT_ARRAYS if k not in found]
            if missing:
                raise DataError(f"npz {path} has {', '.join(split)} but not {', '.join(missing)}; "
                                f"a split needs all of {', '.join(SPLIT_ARRAYS)}")
            if "x" in found or "y" in found:
                raise DataError(f"npz {path} has both x/y and {', '.join(SPLIT_ARRAYS)}; keep one layout")
            keys = SPLIT_ARRAYS
        elif "x" in found and "y" in found:
            keys = ("x", "y")
        else:
            listed = ", ".join(sorted(found)) or "none"
            raise DataError(f"npz {path} needs arrays x and y (or {', '.join(SPLIT_ARRAYS)}); "
                            f"it has: {listed}")
        arrays = {k: _array(archive, k, path) for k in keys}
        names = _class_names(_array(archive, "class_names", path), path) if "class_names" in found else None
    return Read(arrays, {k: f"array {k!r}" for k in keys}, names, digest)
