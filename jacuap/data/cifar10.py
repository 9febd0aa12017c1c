"""The CIFAR-10 binary version (``cifar-10-binary.tar.gz``): finding and
reading its six batch files.

Each file is a sequence of 3073-byte records: one label byte (0..9), then the
32x32 image as 1024 red, 1024 green and 1024 blue bytes (CHW, rows in order).
The pickled "python version" is never read: unpickling a downloaded file can
execute arbitrary code.
"""

from __future__ import annotations

import os
from typing import Optional, Tuple

import numpy as np

from jacuap.data.dataset import PathLike, Splits
from jacuap.errors import DataError

__all__ = ["CIFAR10_FILES", "find_cifar10_dir", "read_cifar10_binary"]

_TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
_TEST_FILE = "test_batch.bin"
#: The six files of the binary version: five training batches, then the test batch.
CIFAR10_FILES: Tuple[str, ...] = _TRAIN_FILES + (_TEST_FILE,)
_RECORD_BYTES = 1 + 3 * 32 * 32  # one label byte, then CHW uint8 pixels
_ARCHIVE_DIR = "cifar-10-batches-bin"  # what the archive unpacks to


def find_cifar10_dir(directory: PathLike) -> Tuple[Optional[str], str]:
    """Finds the folder holding the six CIFAR-10 ``.bin`` files.

    Looks in ``directory``, then in its ``cifar-10-batches-bin`` child.

    Returns:
      ``(folder, "")``, or ``(None, why)`` where ``why`` names what is missing.

    >>> find_cifar10_dir("/no/such/dir")
    (None, 'no such directory')
    """
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        return None, "no such directory"
    why = ""
    for d in (directory, os.path.join(directory, _ARCHIVE_DIR)):
        missing = [n for n in CIFAR10_FILES if not os.path.isfile(os.path.join(d, n))]
        if not missing:
            return d, ""
        why = why or "missing " + ", ".join(missing)
    return None, why


def _read_batch(path: str) -> Tuple[np.ndarray, np.ndarray]:
    """Reads one CIFAR-10 binary batch into ``(uint8[N, 32, 32, 3], int32[N])``."""
    try:
        raw = np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from e
    if raw.size == 0 or raw.size % _RECORD_BYTES:
        raise DataError(
            f"{path}: {raw.size} bytes is not a whole number of "
            f"{_RECORD_BYTES}-byte CIFAR-10 records; download it again"
        )
    records = raw.reshape(-1, _RECORD_BYTES)
    labels = records[:, 0].astype(np.int32)
    if labels.max() >= 10:
        raise DataError(
            f"{path}: label {labels.max()} out of range 0..9; is this the "
            "CIFAR-100 binary version?"
        )
    # Stored channel-major (all R, then G, then B); models want HWC.
    images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return images, labels


def read_cifar10_binary(directory: PathLike) -> Splits:
    """Reads the CIFAR-10 binary version (``cifar-10-binary.tar.gz``).

    Record ``r`` of a file is ``[label, R(32x32), G(32x32), B(32x32)]``;
    image pixel ``(h, w, c)`` is byte ``1 + 1024 c + 32 h + w`` of it.

    Args:
      directory: a folder holding ``data_batch_1.bin`` ... ``data_batch_5.bin``
        and ``test_batch.bin``, or holding a ``cifar-10-batches-bin`` folder
        that does (what the archive unpacks to).

    Returns:
      :class:`Splits`: images ``uint8[N, 32, 32, 3]`` (HWC; the files store
      CHW), labels ``int32[N]``; 50000 train and 10000 test records for the
      real dataset.

    Raises:
      DataError: a file is missing, unreadable or of the wrong size.

    >>> import os, tempfile
    >>> record = bytes([3]) + bytes(k % 251 for k in range(3072))  # label 3
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     for name in CIFAR10_FILES:  # one record per file
    ...         with open(os.path.join(folder, name), "wb") as f:
    ...             _ = f.write(record)
    ...     train_x, train_y, test_x, test_y = read_cifar10_binary(folder)
    >>> train_x.shape, train_y.tolist(), test_x.shape
    ((5, 32, 32, 3), [3, 3, 3, 3, 3], (1, 32, 32, 3))
    >>> test_x[0, 0, 1].tolist()  # (h=0, w=1): image bytes 1, 1025, 2049
    [1, 21, 41]
    """
    directory = os.fspath(directory)
    found, why = find_cifar10_dir(directory)
    if found is None:
        raise DataError(f"no CIFAR-10 binary files in {directory}: {why}")
    train = [_read_batch(os.path.join(found, n)) for n in _TRAIN_FILES]
    test_x, test_y = _read_batch(os.path.join(found, _TEST_FILE))
    train_x = np.concatenate([x for x, _ in train])
    train_y = np.concatenate([y for _, y in train])
    return Splits(train_x, train_y, np.ascontiguousarray(test_x), test_y)
