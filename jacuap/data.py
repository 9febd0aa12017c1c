"""Datasets as in-memory NumPy arrays: digits, MNIST, Fashion-MNIST, CIFAR-10.

Every loader returns a :class:`Dataset` whose images are ``float32`` in
``[0, 1]`` with layout NHWC and whose labels are ``int32``.  The datasets are
small enough (at most 50,000 x 32 x 32 x 3 floats, about 600 MiB) to hold in
host memory, which keeps the training loop free of input pipelines.

Sources, in the order :func:`load_dataset` tries them:

* ``digits``: scikit-learn's bundled 8x8 digits (always offline).  Split into
  1437 train / 360 test images by a permutation seeded with ``seed``.
* ``fashion_mnist``: IDX files in ``data_dir`` (or ``data_dir/fashion_mnist``,
  ``data_dir/fashion-mnist``); then Debian's ``dataset-fashion-mnist`` package
  at ``/usr/share/datasets/fashion-mnist``; then ``tfds.data_source``.
* ``mnist``: IDX files in ``data_dir`` (or ``data_dir/mnist``); then tfds.
* ``cifar10``: the CIFAR-10 *binary* version (``data_batch_{1..5}.bin``,
  ``test_batch.bin``) in ``data_dir`` (or ``data_dir/cifar-10-batches-bin``,
  ``data_dir/cifar10``); then tfds.  The pickled "python version" is never
  read: unpickling a downloaded file can execute arbitrary code.

tfds is used only through ``tfds.data_source`` (random access, NumPy out),
which works without TensorFlow; ``tfds.load`` would need TensorFlow.  The
real datasets keep their canonical train/test split.

Nothing is cached at module level: each call reads the files again (a
Fashion-MNIST load from the gzipped IDX files takes well under a second).
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import math
import os
import re
import struct
import zlib
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

PathLike = Union[str, "os.PathLike[str]"]
Arrays = Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]

DATASETS = ("digits", "mnist", "fashion_mnist", "cifar10")

# Number of classes and image shape (H, W, C) of each dataset.
_NUM_CLASSES = {"digits": 10, "mnist": 10, "fashion_mnist": 10, "cifar10": 10}
_IMAGE_SHAPES = {
    "digits": (8, 8, 1),
    "mnist": (28, 28, 1),
    "fashion_mnist": (28, 28, 1),
    "cifar10": (32, 32, 3),
}

# Where Debian's `dataset-fashion-mnist` package installs the four IDX files.
DEBIAN_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

# Sub-folders of `data_dir` searched for each dataset, besides `data_dir`
# itself (the names archives and other tools commonly unpack to).
_SUBDIRS = {
    "mnist": ("mnist",),
    "fashion_mnist": ("fashion_mnist", "fashion-mnist"),
    "cifar10": ("cifar-10-batches-bin", "cifar10"),
}

# IDX type codes (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT").
# Data are big-endian; multi-byte types are converted to native order on read.
_IDX_DTYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_IDX_CODES = {dtype.newbyteorder("="): code for code, dtype in _IDX_DTYPES.items()}

# File stems of the MNIST-family IDX files, per split and part.  The official
# names use dashes; some mirrors (e.g. Kaggle) use a dot before "idx".
_IDX_STEMS = {
    ("train", "images"): ("train-images-idx3-ubyte", "train-images.idx3-ubyte"),
    ("train", "labels"): ("train-labels-idx1-ubyte", "train-labels.idx1-ubyte"),
    ("test", "images"): ("t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"),
    ("test", "labels"): ("t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"),
}

_CIFAR_TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
_CIFAR_TEST_FILE = "test_batch.bin"
_CIFAR_RECORD_BYTES = 1 + 3 * 32 * 32  # one label byte, then CHW uint8 pixels

_DIGITS_NUM_TEST = 360  # 1797 = 1437 train + 360 test


class DataError(ValueError):
    """A dataset cannot be found or read.

    The message is always a single line (newlines in it are folded into
    spaces) that names the options tried and what to do, so that it reads
    well at the end of a log or in an absl flag error.
    """

    def __init__(self, message: str):
        super().__init__(re.sub(r"\s*[\r\n]+\s*", " ", str(message)).strip())


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class Dataset:
    """An image-classification dataset held in host memory.

    Attributes:
      name: one of :data:`DATASETS`.
      train_images: ``float32[N, H, W, C]`` in ``[0, 1]``.
      train_labels: ``int32[N]`` in ``[0, num_classes)``.
      test_images: ``float32[M, H, W, C]`` in ``[0, 1]``.
      test_labels: ``int32[M]`` in ``[0, num_classes)``.
      num_classes: number of classes ``K``.
      source: human-readable origin, e.g. ``"sklearn digits"`` or
        ``"IDX files in /usr/share/datasets/fashion-mnist"``.
    """

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    num_classes: int
    source: str

    def __post_init__(self):
        # Validate once here so that every consumer can rely on the layout.
        for split in ("train", "test"):
            images = getattr(self, f"{split}_images")
            labels = getattr(self, f"{split}_labels")
            if images.dtype != np.float32 or images.ndim != 4:
                raise DataError(
                    f"{self.name}: {split}_images must be float32 NHWC, got "
                    f"{images.dtype}{list(images.shape)}"
                )
            if labels.dtype != np.int32 or labels.shape != images.shape[:1]:
                raise DataError(
                    f"{self.name}: {split}_labels must be int32[{images.shape[0]}],"
                    f" got {labels.dtype}{list(labels.shape)}"
                )
        if self.train_images.shape[1:] != self.test_images.shape[1:]:
            raise DataError(
                f"{self.name}: train and test image shapes differ: "
                f"{self.train_images.shape[1:]} vs {self.test_images.shape[1:]}"
            )

    @property
    def image_shape(self) -> Tuple[int, int, int]:
        """``(H, W, C)`` of one image."""
        return tuple(int(d) for d in self.train_images.shape[1:])

    # cached_property writes to the instance __dict__ directly, which a frozen
    # dataclass allows; the statistics cost a pass over the training set.
    @functools.cached_property
    def mean(self) -> Tuple[float, ...]:
        """Per-channel mean of ``train_images`` (length ``C``), in pixel units."""
        # float64 accumulation: summing ~47M float32 values loses digits.
        m = self.train_images.mean(axis=(0, 1, 2), dtype=np.float64)
        return tuple(float(v) for v in m)

    @functools.cached_property
    def std(self) -> Tuple[float, ...]:
        """Per-channel standard deviation of ``train_images`` (length ``C``)."""
        s = self.train_images.std(axis=(0, 1, 2), dtype=np.float64)
        return tuple(float(v) for v in s)

    def __repr__(self) -> str:
        # The default dataclass repr would print every pixel.
        return (
            f"Dataset(name={self.name!r}, train={self.train_images.shape}, "
            f"test={self.test_images.shape}, num_classes={self.num_classes}, "
            f"source={self.source!r})"
        )


# ---------------------------------------------------------------------------
# IDX files
# ---------------------------------------------------------------------------


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
    number of dimensions ``d``, then ``d`` big-endian ``uint32`` sizes; the
    data follow in C order, big-endian.

    Args:
      path: an IDX file, plain or gzipped (detected from its content).

    Returns:
      A writable array of the stored shape, in native byte order, with dtype
      ``uint8``, ``int8``, ``int16``, ``int32``, ``float32`` or ``float64``.

    Raises:
      DataError: the file cannot be read, its magic number is not IDX, or its
        size does not match its header (truncated or corrupt).
    """
    name = os.fspath(path)
    raw = _read_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(
            f"{name}: not an IDX file (magic bytes {raw[:4].hex() or 'missing'};"
            " expected 0000 then a type code and a rank)"
        )
    dtype = _IDX_DTYPES[raw[2]]
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


def write_idx(path: PathLike, array: Any) -> None:
    """Writes ``array`` as an IDX file, gzipped when ``path`` ends in ``.gz``.

    The inverse of :func:`read_idx`.  Handy to build test fixtures or to
    convert other copies of (Fashion-)MNIST to the layout this module reads.

    Args:
      path: destination file.
      array: array-like of dtype uint8, int8, int16, int32, float32 or
        float64, with at most 255 dimensions each smaller than ``2**32``.

    Raises:
      ValueError: the dtype or shape cannot be represented in IDX.
    """
    array = np.asarray(array)
    code = _IDX_CODES.get(array.dtype.newbyteorder("="))
    if code is None:
        raise ValueError(
            f"IDX cannot store dtype {array.dtype}; use one of "
            f"{sorted(str(d.newbyteorder('=')) for d in _IDX_DTYPES.values())}"
        )
    if array.ndim > 255 or any(d >= 2**32 for d in array.shape):
        raise ValueError(f"IDX cannot store shape {array.shape}")
    header = bytes([0, 0, code, array.ndim]) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    payload = header + np.ascontiguousarray(array, _IDX_DTYPES[code]).tobytes()
    with open(path, "wb") as f:
        if os.fspath(path).endswith(".gz"):
            # mtime=0 makes the output byte-for-byte reproducible.
            with gzip.GzipFile(filename="", mode="wb", fileobj=f, mtime=0) as gz:
                gz.write(payload)
        else:
            f.write(payload)


def _find_idx_files(directory: str) -> Tuple[Optional[Dict[Tuple[str, str], str]], str]:
    """Locates the four MNIST-style IDX files in ``directory``.

    Returns:
      ``(files, why)``: ``files`` maps ``(split, part)`` to a path, or is None
      when some file is missing, in which case ``why`` says which.
    """
    if not os.path.isdir(directory):
        return None, "no such directory"
    files, missing = {}, []
    for key, stems in _IDX_STEMS.items():
        candidates = [os.path.join(directory, s + ext) for s in stems for ext in (".gz", "")]
        found = next((c for c in candidates if os.path.isfile(c)), None)
        if found is None:
            missing.append(stems[0] + "[.gz]")
        else:
            files[key] = found
    if missing:
        return None, "missing " + ", ".join(missing)
    return files, ""


def _read_idx_dataset(name: str, files: Dict[Tuple[str, str], str]) -> Arrays:
    """Reads and checks the four IDX files of an MNIST-family dataset.

    Returns:
      ``(train_x, train_y, test_x, test_y)``: images ``uint8[N, H, W, 1]``,
      labels ``int32[N]``.
    """
    out = []
    for split in ("train", "test"):
        images = read_idx(files[split, "images"])
        labels = read_idx(files[split, "labels"])
        if images.ndim == 3:  # IDX stores (N, H, W); add the channel axis.
            images = images[..., None]
        if images.ndim != 4 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(
                f"{name}: {split} IDX files do not match: images "
                f"{images.shape} from {files[split, 'images']}, labels "
                f"{labels.shape} from {files[split, 'labels']}"
            )
        out += [images, labels.astype(np.int32)]
    return tuple(out)


# ---------------------------------------------------------------------------
# CIFAR-10 binary files
# ---------------------------------------------------------------------------


def _find_cifar_dir(directory: str) -> Tuple[Optional[str], str]:
    """Returns ``(dir, why)``: the folder holding the six CIFAR-10 .bin files
    (``directory`` or its ``cifar-10-batches-bin`` child), else ``(None, why)``."""
    if not os.path.isdir(directory):
        return None, "no such directory"
    names = _CIFAR_TRAIN_FILES + (_CIFAR_TEST_FILE,)
    why = ""
    for d in (directory, os.path.join(directory, "cifar-10-batches-bin")):
        missing = [n for n in names if not os.path.isfile(os.path.join(d, n))]
        if not missing:
            return d, ""
        why = why or "missing " + ", ".join(missing)
    return None, why


def _read_cifar_file(path: str) -> Tuple[np.ndarray, np.ndarray]:
    """Reads one CIFAR-10 binary batch: records of 1 label byte + 3072 CHW bytes."""
    try:
        raw = np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from e
    if raw.size == 0 or raw.size % _CIFAR_RECORD_BYTES:
        raise DataError(
            f"{path}: {raw.size} bytes is not a whole number of "
            f"{_CIFAR_RECORD_BYTES}-byte CIFAR-10 records; download it again"
        )
    records = raw.reshape(-1, _CIFAR_RECORD_BYTES)
    labels = records[:, 0].astype(np.int32)
    if labels.max() >= 10:
        raise DataError(
            f"{path}: label {labels.max()} out of range 0..9; is this the "
            "CIFAR-100 binary version?"
        )
    # Stored channel-major (all R, then G, then B); models want HWC.
    images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return images, labels


def read_cifar10_binary(directory: PathLike) -> Arrays:
    """Reads the CIFAR-10 binary version (``cifar-10-binary.tar.gz``).

    Args:
      directory: a folder holding ``data_batch_1.bin`` ... ``data_batch_5.bin``
        and ``test_batch.bin``, or holding a ``cifar-10-batches-bin`` folder
        that does (what the archive unpacks to).

    Returns:
      ``(train_x, train_y, test_x, test_y)``: images ``uint8[N, 32, 32, 3]``
      (HWC; the files store CHW), labels ``int32[N]``; 50000 train and 10000
      test records for the real dataset.

    Raises:
      DataError: a file is missing, unreadable or of the wrong size.
    """
    directory = os.fspath(directory)
    found, why = _find_cifar_dir(directory)
    if found is None:
        raise DataError(f"no CIFAR-10 binary files in {directory}: {why}")
    train = [_read_cifar_file(os.path.join(found, n)) for n in _CIFAR_TRAIN_FILES]
    test_x, test_y = _read_cifar_file(os.path.join(found, _CIFAR_TEST_FILE))
    train_x = np.concatenate([x for x, _ in train])
    train_y = np.concatenate([y for _, y in train])
    return train_x, train_y, np.ascontiguousarray(test_x), test_y


# ---------------------------------------------------------------------------
# tfds
# ---------------------------------------------------------------------------


def _one_line(e: BaseException, limit: int = 300) -> str:
    """``"Type: first line of message"``, shortened, for embedding in a DataError."""
    text = str(e).strip().splitlines()
    msg = f"{type(e).__name__}: {text[0]}" if text else type(e).__name__
    return msg if len(msg) <= limit else msg[: limit - 3] + "..."


def _read_data_source(source: Any, batch_size: int = 1024) -> Tuple[np.ndarray, np.ndarray]:
    """Reads every record of a tfds data source into ``(uint8 NHWC, int32)``.

    Records are dicts with ``'image'`` (``uint8[H, W, C]``) and ``'label'``.
    They are fetched ``batch_size`` at a time with ``__getitems__`` (one
    batched ArrayRecord read instead of one read per record), falling back to
    indexing one by one for sources without a working ``__getitems__``; the
    ``tfds.testing.mock_data`` source of tfds 4.9 is one such: it installs
    ``__getitems__`` as an unbound function and calling it raises TypeError.
    """
    n = len(source)
    if n == 0:
        raise DataError(f"tfds data source {source!r} is empty")
    images: Optional[np.ndarray] = None
    labels = np.empty((n,), np.int32)
    batched = hasattr(source, "__getitems__")
    for start in range(0, n, batch_size):
        keys = list(range(start, min(start + batch_size, n)))
        records: Sequence[Any] = ()
        if batched:
            try:
                records = source.__getitems__(keys)
            except (TypeError, AttributeError, NotImplementedError):
                batched = False
        if not batched:
            records = [source[k] for k in keys]
        for k, record in zip(keys, records):
            image = np.asarray(record["image"])
            if image.ndim == 2:
                image = image[..., None]
            if images is None:  # Allocate once the image shape is known.
                images = np.empty((n,) + image.shape, np.uint8)
            images[k] = image
            labels[k] = int(record["label"])
    return images, labels


def load_tfds(
    name: str, data_dir: Optional[PathLike] = None, *, download: bool = True
) -> Arrays:
    """Loads the train and test splits of a tfds dataset, without TensorFlow.

    Uses ``tfds.data_source(name, split=["train", "test"], data_dir=...)``,
    which reads prepared ArrayRecord files and returns NumPy arrays.  The
    ArrayRecord format is requested explicitly: tfds only defaults to it when
    ``data_dir`` is None, and the other default (TFRecord) has no random
    access.

    Args:
      name: a tfds name with ``image`` and ``label`` features, e.g.
        ``"mnist"``, ``"fashion_mnist"``, ``"cifar10"``.
      data_dir: tfds data directory; None means tfds' default
        (``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).
      download: let tfds download and prepare the data when it is not in
        ``data_dir`` (needs network access).

    Returns:
      ``(train_x, train_y, test_x, test_y)``: images ``uint8[N, H, W, C]``,
      labels ``int32[N]``.

    Raises:
      DataError: tfds is not installed, or any tfds error (not prepared,
        offline, ...), reported on one line.
    """
    where = "" if data_dir is None else f", data_dir={os.fspath(data_dir)!r}"
    call = f"tfds.data_source({name!r}{where})"
    try:
        import tensorflow_datasets as tfds  # Imported lazily: it is slow-ish and optional here.
    except ImportError as e:
        raise DataError(
            f"{call} unavailable: {_one_line(e)}; pip install tensorflow-datasets"
        ) from e
    try:
        train, test = tfds.data_source(
            name,
            split=["train", "test"],
            data_dir=None if data_dir is None else os.fspath(data_dir),
            download=download,
            builder_kwargs={"file_format": "array_record"},
        )
        return _read_data_source(train) + _read_data_source(test)
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - tfds raises many unrelated types.
        raise DataError(f"{call} failed: {_one_line(e)}") from e


# ---------------------------------------------------------------------------
# load_dataset
# ---------------------------------------------------------------------------


def _to_float(images: np.ndarray) -> np.ndarray:
    """``uint8`` pixels -> ``float32`` in ``[0, 1]``, in one allocation.

    Divides rather than multiplies by ``1/255`` so that 255 maps to exactly 1.
    """
    out = images.astype(np.float32)
    np.divide(out, np.float32(255), out=out)
    return out


def _load_digits(seed: int) -> Dataset:
    """scikit-learn's 8x8 digits, split 1437/360 by a seeded permutation."""
    from sklearn.datasets import load_digits  # Lazy: only digits needs sklearn.

    bunch = load_digits()
    # Pixel values are counts 0..16 (of a 4x4 block of a 32x32 bitmap).
    images = (bunch.images.astype(np.float32) / np.float32(16))[..., None]
    labels = bunch.target.astype(np.int32)
    perm = np.random.default_rng(seed).permutation(len(labels))
    test, train = perm[:_DIGITS_NUM_TEST], perm[_DIGITS_NUM_TEST:]
    return Dataset(
        name="digits",
        train_images=images[train],
        train_labels=labels[train],
        test_images=images[test],
        test_labels=labels[test],
        num_classes=_NUM_CLASSES["digits"],
        source=f"sklearn digits (split seed {seed})",
    )


def _local_candidates(name: str, data_dir: Optional[str]) -> List[str]:
    """Folders searched for local files of ``name``, in order."""
    dirs = []
    if data_dir is not None:
        dirs.append(data_dir)
        dirs += [os.path.join(data_dir, s) for s in _SUBDIRS[name]]
    if name == "fashion_mnist":
        dirs.append(DEBIAN_FASHION_MNIST_DIR)
    return dirs


def _how_to_get(name: str) -> str:
    """One sentence on how to make ``name`` available."""
    tfds_hint = (
        f"or, while online, prepare it with tensorflow-datasets "
        f"(tfds.data_source('{name}', data_dir=DIR)) and pass --config.data_dir=DIR"
    )
    if name == "cifar10":
        return (
            "To fix: unpack cifar-10-binary.tar.gz (the binary version, not the "
            "python one) and pass --config.data_dir=DIR, " + tfds_hint + "."
        )
    idx = (
        "put the four IDX files (train-images-idx3-ubyte.gz, ...) in DIR and "
        "pass --config.data_dir=DIR, "
    )
    if name == "fashion_mnist":
        return "To fix: apt-get install dataset-fashion-mnist, or " + idx + tfds_hint + "."
    return "To fix: " + idx + tfds_hint + "."


def _validated(name: str, arrays: Arrays, source: str) -> Dataset:
    """Checks shapes and label ranges, converts pixels, builds the Dataset."""
    train_x, train_y, test_x, test_y = arrays
    want = _IMAGE_SHAPES[name]
    k = _NUM_CLASSES[name]
    for split, x, y in (("train", train_x, train_y), ("test", test_x, test_y)):
        if x.shape[1:] != want:
            raise DataError(
                f"{name} from {source}: {split} images have shape "
                f"{x.shape[1:]}, expected {want}"
            )
        if len(y) and (y.min() < 0 or y.max() >= k):
            raise DataError(
                f"{name} from {source}: {split} labels span "
                f"{y.min()}..{y.max()}, expected 0..{k - 1}"
            )
    return Dataset(
        name=name,
        train_images=_to_float(train_x),
        train_labels=train_y.astype(np.int32),
        test_images=_to_float(test_x),
        test_labels=test_y.astype(np.int32),
        num_classes=k,
        source=source,
    )


def load_dataset(name: str, data_dir: Optional[PathLike] = None, seed: int = 0) -> Dataset:
    """Loads a dataset into memory, trying local files first, then tfds.

    Args:
      name: one of :data:`DATASETS` (``"fashion-mnist"`` spellings with a dash
        and any case are accepted).
      data_dir: optional folder with local copies (IDX files for MNIST and
        Fashion-MNIST, the binary version for CIFAR-10, directly or in a
        sub-folder named after the dataset), also passed to tfds as its data
        directory.  Ignored by ``digits``.
      seed: seeds the train/test split of ``digits``; the other datasets keep
        their canonical split and ignore it.

    Returns:
      A :class:`Dataset` (images ``float32`` NHWC in ``[0, 1]``, labels
      ``int32``) whose ``source`` says where it came from.

    Raises:
      DataError: unknown ``name``; ``data_dir`` is not a readable directory;
        a local copy is corrupt; or no source has the data (the message lists
        every place tried and how to get the data).
    """
    key = str(name).strip().lower().replace("-", "_")
    if key not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if data_dir is not None:
        data_dir = os.path.expanduser(os.fspath(data_dir))
        if not os.path.isdir(data_dir):
            raise DataError(f"data_dir {data_dir!r} is not an existing directory")
        if not os.access(data_dir, os.R_OK | os.X_OK):
            raise DataError(f"data_dir {data_dir!r} is not readable")
    if key == "digits":
        return _load_digits(seed)

    tried = [] if data_dir is not None else ["local files (no data_dir given)"]
    for directory in _local_candidates(key, data_dir):
        if key == "cifar10":
            found, why = _find_cifar_dir(directory)
            if found is not None:
                # Errors reading files that are present propagate: silently
                # falling back to another copy would hide a corrupt download.
                arrays = read_cifar10_binary(found)
                return _validated(key, arrays, f"CIFAR-10 binary files in {found}")
            tried.append(f"CIFAR-10 binary files in {directory} ({why})")
        else:
            files, why = _find_idx_files(directory)
            if files is not None:
                arrays = _read_idx_dataset(key, files)
                return _validated(key, arrays, f"IDX files in {directory}")
            tried.append(f"IDX files in {directory} ({why})")

    try:
        arrays = load_tfds(key, data_dir)
    except DataError as e:
        tried.append(str(e))
    else:
        where = "" if data_dir is None else f" in {data_dir}"
        return _validated(key, arrays, f"tfds data_source{where}")

    raise DataError(f"{key} not found; tried: {'; '.join(tried)}. {_how_to_get(key)}")
