"""Datasets from tensorflow-datasets (tfds), read without TensorFlow.

Only ``tfds.data_source`` is used (random access to prepared ArrayRecord
files, NumPy out), which works without TensorFlow; ``tfds.load`` would need
it.  tfds is imported on first use: it is optional for local copies and
slow-ish to import.
"""

from __future__ import annotations

import os
from typing import Any, Optional, Sequence, Tuple

import numpy as np

from jacuap.data.dataset import PathLike, Splits
from jacuap.errors import DataError, one_line

__all__ = ["load_tfds", "read_data_source"]


def _describe(e: BaseException) -> str:
    """``"Type: message"`` on one line, for embedding in a DataError."""
    return f"{type(e).__name__}: {one_line(e)}"


def read_data_source(source: Any, batch_size: int = 1024) -> Tuple[np.ndarray, np.ndarray]:
    """Reads every record of a tfds data source into ``(uint8 NHWC, int32)``.

    Records are dicts with ``'image'`` (``uint8[H, W, C]`` or ``[H, W]``) and
    ``'label'``.  They are fetched ``batch_size`` at a time with
    ``__getitems__`` (one batched ArrayRecord read instead of one read per
    record), falling back to indexing one by one for sources without a
    working ``__getitems__``; the ``tfds.testing.mock_data`` source of tfds
    4.9 is one such: it installs ``__getitems__`` as an unbound function and
    calling it raises TypeError.

    Args:
      source: a sequence of records (``len`` and ``[]``).
      batch_size: records per ``__getitems__`` call.

    Returns:
      ``(images, labels)``: ``uint8[N, H, W, C]`` (a channel axis is added to
      ``[H, W]`` images) and ``int32[N]``.

    Raises:
      DataError: ``source`` is empty.

    >>> records = [{"image": np.full((2, 2), k, np.uint8), "label": k} for k in range(3)]
    >>> images, labels = read_data_source(records)
    >>> images.shape, labels.tolist()
    ((3, 2, 2, 1), [0, 1, 2])
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
) -> Splits:
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
      :class:`Splits`: images ``uint8[N, H, W, C]``, labels ``int32[N]``.

    Raises:
      DataError: tfds is not installed, or any tfds error (not prepared,
        offline, ...), reported on one line.

    >>> import tensorflow_datasets as tfds
    >>> with tfds.testing.mock_data(num_examples=3):  # random records, offline
    ...     train_x, train_y, test_x, test_y = load_tfds("mnist")
    >>> train_x.shape, train_x.dtype, test_y.shape
    ((3, 28, 28, 1), dtype('uint8'), (3,))
    """
    where = "" if data_dir is None else f", data_dir={os.fspath(data_dir)!r}"
    call = f"tfds.data_source({name!r}{where})"
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise DataError(
            f"{call} unavailable: {_describe(e)}; pip install tensorflow-datasets"
        ) from e
    try:
        train, test = tfds.data_source(
            name,
            split=["train", "test"],
            data_dir=None if data_dir is None else os.fspath(data_dir),
            download=download,
            builder_kwargs={"file_format": "array_record"},
        )
        return Splits(*read_data_source(train), *read_data_source(test))
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - tfds raises many unrelated types.
        raise DataError(f"{call} failed: {_describe(e)}") from e
