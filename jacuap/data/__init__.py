"""Datasets as in-memory NumPy arrays: digits, MNIST, Fashion-MNIST, CIFAR-10, and your own.

:func:`load_dataset` returns a :class:`Dataset` whose images are ``float32``
in ``[0, 1]`` with layout NHWC and whose labels are ``int32``.  The datasets
are small enough (at most 50,000 x 32 x 32 x 3 floats, about 600 MiB) to
hold in host memory, which keeps the training loop free of input pipelines.

Sources, in the order :func:`load_dataset` tries them:

* ``digits``: scikit-learn's bundled 8x8 digits (always offline), split into
  1437 train / 360 test images by a permutation seeded with ``seed``
  (:mod:`jacuap.data.digits`).
* ``fashion_mnist``: IDX files (:mod:`jacuap.data.idx`) in ``data_dir`` (or
  ``data_dir/fashion_mnist``, ``data_dir/fashion-mnist``); then Debian's
  ``dataset-fashion-mnist`` package at :data:`DEBIAN_FASHION_MNIST_DIR`; then
  ``tfds.data_source`` (:mod:`jacuap.data.tfds`).
* ``mnist``: IDX files in ``data_dir`` (or ``data_dir/mnist``); then tfds.
* ``cifar10``: the CIFAR-10 *binary* version (:mod:`jacuap.data.cifar10`) in
  ``data_dir`` (or ``data_dir/cifar-10-batches-bin``, ``data_dir/cifar10``);
  then tfds.  The pickled "python version" is never read.
* ``npz:PATH`` (arrays ``x``, ``y`` or ``x_train`` ... ``y_test``, optional
  ``class_names``) and ``folder:PATH[@HxW]`` (one sub-folder per class): your
  own data, split 80/20 by ``seed`` unless it carries a train/test split
  (:mod:`jacuap.data.own`, :mod:`jacuap.data.npz`, :mod:`jacuap.data.folder`).

tfds, the last source, is used only when it can answer at once: the dataset
is already prepared in the tfds data directory (``data_dir``, else
``$TFDS_DATA_DIR``, else ``~/tensorflow_datasets``), or its download host
accepts a TCP connection within 2 seconds (never with ``JACUAP_OFFLINE=1``).
Otherwise :func:`load_dataset` fails at once with one line and writes
nothing (:func:`jacuap.data.tfds.load_tfds`).

The real datasets keep their canonical train/test split.  Nothing is cached
at module level: each call reads the files again (a Fashion-MNIST load from
the gzipped IDX files takes well under a second).
"""

from __future__ import annotations

import os
from typing import List, Optional

import numpy as np

from jacuap.data.cifar10 import find_cifar10_dir, read_cifar10_binary
from jacuap.data.dataset import DATASETS, Dataset, DatasetInfo, PathLike, Splits, hold_out_validation
from jacuap.data.digits import load_digits
from jacuap.data.idx import find_idx_files, read_idx, read_idx_splits
from jacuap.data.own import OWN_FORMS, canonical_name, is_own, load_own, own_problem
from jacuap.data.tfds import load_tfds
from jacuap.errors import DataError

__all__ = [
    "DATASETS",
    "DEBIAN_FASHION_MNIST_DIR",
    "DataError",
    "Dataset",
    "DatasetInfo",
    "OWN_FORMS",
    "Splits",
    "canonical_name",
    "hold_out_validation",
    "is_own",
    "load_dataset",
    "load_tfds",
    "own_problem",
    "read_cifar10_binary",
    "read_idx",
]

#: Where Debian's ``dataset-fashion-mnist`` package installs the four IDX files.
DEBIAN_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"


def _to_float(images: np.ndarray) -> np.ndarray:
    """``uint8`` pixels ``p`` -> ``float32`` ``p / 255``, in one allocation.

    Divides rather than multiplies by ``1/255`` so that 255 maps to exactly 1.
    """
    out = images.astype(np.float32)
    np.divide(out, np.float32(255), out=out)
    return out


def _local_candidates(name: str, data_dir: Optional[str]) -> List[str]:
    """Folders searched for local files of ``name``, in order."""
    dirs = []
    if data_dir is not None:
        dirs.append(data_dir)
        dirs += [os.path.join(data_dir, s) for s in DATASETS[name].subdirs]
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


def _validated(name: str, splits: Splits, source: str) -> Dataset:
    """Checks shapes and label ranges, converts pixels, builds the Dataset."""
    info = DATASETS[name]
    want, k = info.image_shape, info.num_classes
    train_x, train_y, test_x, test_y = splits
    for split, x, y in (("train", train_x, train_y), ("test", test_x, test_y)):
        if len(x) == 0:
            # Training divides by the number of examples: an empty split is no dataset.
            raise DataError(
                f"{name} from {source}: the {split} split holds 0 images; "
                "the files are empty or truncated, download them again"
            )
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


def load_dataset(name: str, data_dir: Optional[PathLike] = None, seed: int = 0, num_validation: int = 0) -> Dataset:
    """Loads a dataset into memory, trying local files first, then tfds.

    Pixels ``p`` become ``x = p / 255`` (``p / 16`` for ``digits``), so every
    image is ``float32`` in ``[0, 1]``.

    Args:
      name: one of :data:`DATASETS` (``"fashion-mnist"`` spellings with a dash
        and any case are accepted), or your own data: ``"npz:PATH"`` or
        ``"folder:PATH"`` / ``"folder:PATH@HxW"`` (:mod:`jacuap.data.own`; a
        relative PATH is taken from the current folder).
      data_dir: optional folder with local copies (IDX files for MNIST and
        Fashion-MNIST, the binary version for CIFAR-10, directly or in a
        sub-folder named after the dataset), also passed to tfds as its data
        directory.  Ignored by ``digits``.
      seed: a non-negative integer; seeds the train/test split of ``digits``
        and of your own data without a split; the other datasets keep their
        canonical split and ignore it.
      num_validation: when positive, that many training inputs are held out
        as the ``validation`` split (:func:`hold_out_validation`: the same
        inputs whatever ``seed``, for the same training split).

    Returns:
      A :class:`Dataset` (images ``float32[N, H, W, C]`` in ``[0, 1]``,
      labels ``int32[N]``) whose ``source`` says where it came from.

    Raises:
      DataError: unknown ``name``; ``seed`` is not a non-negative integer;
        ``data_dir`` is not a readable directory;
        a local copy is corrupt; no source has the data (the message lists
        every place tried and how to get the data); ``num_validation`` is not
        an integer in ``[0, N)``.

    >>> ds = load_dataset("digits", seed=0)
    >>> ds
    Dataset(name='digits', train=(1437, 8, 8, 1), test=(360, 8, 8, 1), num_classes=10, source='sklearn digits (split seed 0)')
    >>> ds.train_labels[:5].tolist(), ds.class_names[:3]
    ([4, 9, 5, 8, 5], ('0', '1', '2'))
    >>> load_dataset("digits", seed=-1)
    Traceback (most recent call last):
    jacuap.errors.DataError: seed must be a non-negative integer, got -1
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DataError(f"seed must be a non-negative integer, got {seed!r}")
    if num_validation == 0 and not isinstance(num_validation, bool):
        return _load(name, data_dir, seed)
    return hold_out_validation(_load(name, data_dir, seed), num_validation)


def _read_idx(name: str, directory: str):
    files, why = find_idx_files(directory)
    if files is None:
        return None, f"IDX files in {directory} ({why})"
    return read_idx_splits(name, files), f"IDX files in {directory}"


def _read_cifar10(name: str, directory: str):
    found, why = find_cifar10_dir(directory)
    if found is None:
        return None, f"CIFAR-10 binary files in {directory} ({why})"
    return read_cifar10_binary(found), f"CIFAR-10 binary files in {found}"


def _digits(seed: int) -> Dataset:
    return Dataset("digits", *load_digits(seed), num_classes=DATASETS["digits"].num_classes,
                   source=f"sklearn digits (split seed {seed})")


#: ``DatasetInfo.local_format -> (name, folder) -> (Splits or None, where it was read / why not)``.
LOCAL_READERS = {"idx": _read_idx, "cifar10_binary": _read_cifar10}
#: The datasets that ship with a package: ``name -> (seed) -> Dataset``.
BUILTIN_LOADERS = {"digits": _digits}


def _load(name: str, data_dir: Optional[PathLike], seed: int) -> Dataset:
    if is_own(name):
        return load_own(name, int(seed))
    key = str(name).strip().lower().replace("-", "_")
    if key not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}, "
                        f"or your own: {', '.join(OWN_FORMS.values())}")
    if data_dir is not None:
        data_dir = os.path.expanduser(os.fspath(data_dir))
        if not os.path.isdir(data_dir):
            raise DataError(f"data_dir {data_dir!r} is not an existing directory")
        if not os.access(data_dir, os.R_OK | os.X_OK):
            raise DataError(f"data_dir {data_dir!r} is not readable")
    info = DATASETS[key]
    if info.local_format == "builtin":
        return BUILTIN_LOADERS[key](seed)

    read = LOCAL_READERS[info.local_format]
    tried = [] if data_dir is not None else ["local files (no data_dir given)"]
    for directory in _local_candidates(key, data_dir):
        # Errors reading files that are present propagate: silently falling
        # back to another copy would hide a corrupt download.
        splits, where = read(key, directory)
        if splits is not None:
            return _validated(key, splits, where)
        tried.append(where)

    try:
        splits = load_tfds(key, data_dir)
    except DataError as e:
        tried.append(str(e))
    else:
        where = "" if data_dir is None else f" in {data_dir}"
        return _validated(key, splits, f"tfds data_source{where}")

    raise DataError(f"{key} not found; tried: {'; '.join(tried)}. {_how_to_get(key)}")
