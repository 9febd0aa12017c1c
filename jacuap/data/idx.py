"""IDX files, the format of MNIST and Fashion-MNIST: reading one, and finding
and reading the four files of a dataset in a folder.

The header is two zero bytes, a type code (see :data:`IDX_DTYPES`), the
number of dimensions ``d``, then ``d`` big-endian ``uint32`` sizes; the data
follow in C order, big-endian (http://yann.lecun.com/exdb/mnist/, "THE IDX
FILE FORMAT").  Files may be gzipped, with or without a ``.gz`` name.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from typing import Dict, Optional, Tuple

import numpy as np

from jacuap.data.dataset import PathLike, Splits
from jacuap.errors import DataError

__all__ = ["IDX_DTYPES", "IDX_STEMS", "find_idx_files", "read_idx", "read_idx_splits"]

#: IDX type code -> the big-endian dtype stored; :func:`read_idx` returns the
#: native-order equivalent.
IDX_DTYPES: Dict[int, np.dtype] = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

#: File stems of the MNIST-family IDX files, per ``(split, part)``.  The
#: official names use dashes; some mirrors (e.g. Kaggle) use a dot before "idx".
IDX_STEMS: Dict[Tuple[str, str], Tuple[str, ...]] = {
    ("train", "images"): ("train-images-idx3-ubyte", "train-images.idx3-ubyte"),
    ("train", "labels"): ("train-labels-idx1-ubyte", "train-labels.idx1-ubyte"),
    ("test", "images"): ("t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"),
    ("test", "labels"): ("t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"),
}


def _read_bytes(path: PathLike) -> bytes:
    """Returns the contents of ``path``, gunzipped if it is a gzip file.

    Compression is detected from the gzip magic bytes rather than the file
    name, so a gzipped file without ``.gz`` (or the reverse) still reads.
    """
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise DataError(f"cannot read {os.fspath(path)}: {e.strerror or e}") from e
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(
                f"{os.fspath(path)}: corrupt or truncated gzip file ({e}); "
                "download it again"
            ) from e
    return raw


def read_idx(path: PathLike) -> np.ndarray:
    """Reads an IDX file (the format of MNIST and Fashion-MNIST).

    The header is two zero bytes, a type code (``0x08`` uint8, ``0x09`` int8,
    ``0x0B`` int16, ``0x0C`` int32, ``0x0D`` float32, ``0x0E`` float64), the
    number of dimensions ``d``, then ``d`` big-endian ``uint32`` sizes
    ``n_1 .. n_d``; then ``n_1 * ... * n_d`` values in C order, big-endian.

    Args:
      path: an IDX file, plain or gzipped (detected from its content).

    Returns:
      A writable array of shape ``(n_1, ..., n_d)``, in native byte order,
      with dtype ``uint8``, ``int8``, ``int16``, ``int32``, ``float32`` or
      ``float64``.

    Raises:
      DataError: the file cannot be read, its magic number is not IDX, or its
        size does not match its header (truncated or corrupt).

    >>> import os, tempfile
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = os.path.join(folder, "labels-idx1-ubyte")
    ...     with open(path, "wb") as f:  # uint8, 1 dimension of size 3, then data
    ...         _ = f.write(bytes([0, 0, 0x08, 1, 0, 0, 0, 3, 7, 8, 9]))
    ...     labels = read_idx(path)
    >>> labels
    array([7, 8, 9], dtype=uint8)
    """
    name = os.fspath(path)
    raw = _read_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES:
        raise DataError(
            f"{name}: not an IDX file (magic bytes {raw[:4].hex() or 'missing'};"
            " expected 0000 then a type code and a rank)"
        )
    dtype = IDX_DTYPES[raw[2]]
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{name}: truncated IDX header ({len(raw)} bytes)")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    count = math.prod(shape)
    if len(raw) - header != count * dtype.itemsize:
        raise DataError(
            f"{name}: truncated or corrupt IDX file: header says shape "
            f"{shape} ({count * dtype.itemsize} data bytes) but it holds "
            f"{len(raw) - header}; download it again"
        )
    data = np.frombuffer(raw, dtype=dtype, count=count, offset=header)
    # np.array copies: frombuffer over `bytes` is read-only, and the copy also
    # swaps multi-byte types to native order.
    return np.array(data.reshape(shape), dtype=dtype.newbyteorder("="))


def find_idx_files(
    directory: PathLike,
) -> Tuple[Optional[Dict[Tuple[str, str], str]], str]:
    """Locates the four MNIST-style IDX files in ``directory``.

    Each file is looked for under every name in :data:`IDX_STEMS`, gzipped
    (``.gz``) first, then plain.

    Returns:
      ``(files, why)``: ``files`` maps ``(split, part)`` (``split`` in
      ``"train"``, ``"test"``; ``part`` in ``"images"``, ``"labels"``) to a
      path and ``why`` is ``""``; or ``files`` is None and ``why`` says what
      is missing.

    >>> find_idx_files("/no/such/dir")
    (None, 'no such directory')
    """
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        return None, "no such directory"
    files, missing = {}, []
    for key, stems in IDX_STEMS.items():
        candidates = [os.path.join(directory, s + ext) for s in stems for ext in (".gz", "")]
        found = next((c for c in candidates if os.path.isfile(c)), None)
        if found is None:
            missing.append(stems[0] + "[.gz]")
        else:
            files[key] = found
    if missing:
        return None, "missing " + ", ".join(missing)
    return files, ""


def read_idx_splits(name: str, files: Dict[Tuple[str, str], str]) -> Splits:
    """Reads and cross-checks the four IDX files of an MNIST-family dataset.

    Args:
      name: the dataset's name, for error messages.
      files: ``(split, part) -> path``, as :func:`find_idx_files` returns.

    Returns:
      :class:`Splits` with images ``uint8[N, H, W, 1]`` (IDX stores
      ``(N, H, W)``; the channel axis is added) and labels ``int32[N]``.

    Raises:
      DataError: a file cannot be read, or images and labels do not match.
    """
    out = []
    for split in ("train", "test"):
        images = read_idx(files[split, "images"])
        labels = read_idx(files[split, "labels"])
        if images.ndim == 3:
            images = images[..., None]
        if images.ndim != 4 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(
                f"{name}: {split} IDX files do not match: images "
                f"{images.shape} from {files[split, 'images']}, labels "
                f"{labels.shape} from {files[split, 'labels']}"
            )
        out += [images, labels.astype(np.int32)]
    return Splits(*out)
