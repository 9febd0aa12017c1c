"""What a dataset is: the :class:`Dataset` in memory, its raw :class:`Splits`,
and the registry :data:`DATASETS` of the datasets jacuap knows.

The readers (:mod:`jacuap.data.idx`, :mod:`jacuap.data.cifar10`,
:mod:`jacuap.data.tfds`, :mod:`jacuap.data.digits`) return :class:`Splits`;
:func:`jacuap.data.load_dataset` turns them into a validated :class:`Dataset`.

>>> list(DATASETS)
['digits', 'mnist', 'fashion_mnist', 'cifar10']
>>> info = DATASETS["fashion_mnist"]
>>> info.image_shape, info.num_classes, info.class_names[0]
((28, 28, 1), 10, 'T-shirt/top')
"""

from __future__ import annotations

import dataclasses
import functools
import os
import types
from typing import Mapping, NamedTuple, Optional, Tuple, Union

import numpy as np

from jacuap.errors import DataError

__all__ = ["DATASETS", "Dataset", "DatasetInfo", "PathLike", "Splits"]

PathLike = Union[str, os.PathLike]


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What is fixed about a dataset, whatever copy of it is read.

    Attributes:
      name: the registry key, e.g. ``"fashion_mnist"``.
      image_shape: ``(H, W, C)`` of one image.
      class_names: the name of each label ``0 .. K-1``.
      subdirs: sub-folders of a ``data_dir`` searched for local files besides
        ``data_dir`` itself (the names archives and other tools unpack to).
      local_format: how a local copy is read, a key of
        :data:`jacuap.data.LOCAL_READERS` (``"idx"``, ``"cifar10_binary"``),
        or ``"builtin"`` for a dataset that ships with a package (digits).
    """

    name: str
    image_shape: Tuple[int, int, int]
    class_names: Tuple[str, ...]
    subdirs: Tuple[str, ...] = ()
    local_format: str = "idx"

    @property
    def num_classes(self) -> int:
        """Number of classes ``K = len(class_names)``."""
        return len(self.class_names)


_DIGIT_NAMES = tuple(str(k) for k in range(10))

# The datasets load_dataset can load, by name (read-only).  Iterating it gives
# the names, so `", ".join(DATASETS)` and `name in DATASETS` read naturally.
DATASETS: Mapping[str, DatasetInfo] = types.MappingProxyType(
    {
        info.name: info
        for info in (
            DatasetInfo("digits", (8, 8, 1), _DIGIT_NAMES, local_format="builtin"),
            DatasetInfo("mnist", (28, 28, 1), _DIGIT_NAMES, ("mnist",)),
            DatasetInfo(
                "fashion_mnist",
                (28, 28, 1),
                ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                 "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
                ("fashion_mnist", "fashion-mnist"),
            ),
            DatasetInfo(
                "cifar10",
                (32, 32, 3),
                ("airplane", "automobile", "bird", "cat", "deer",
                 "dog", "frog", "horse", "ship", "truck"),
                ("cifar-10-batches-bin", "cifar10"),
                local_format="cifar10_binary",
            ),
        )
    }
)


class Splits(NamedTuple):
    """The train and test split of a dataset as read from its files.

    Readers of pixel files give ``uint8[N, H, W, C]`` images (HWC) and
    ``int32[N]`` labels; :func:`jacuap.data.load_dataset` converts and checks
    them.  A plain tuple otherwise:
    ``train_x, train_y, test_x, test_y = splits``.
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class Dataset:
    """An image-classification dataset held in host memory.

    Images are pixels scaled to ``[0, 1]``: ``x = p / 255`` for ``uint8``
    pixels ``p`` (``x = p / 16`` for the 0..16 counts of ``digits``).

    Attributes:
      name: usually one of :data:`DATASETS`.
      train_images: ``float32[N, H, W, C]`` in ``[0, 1]``.
      train_labels: ``int32[N]`` in ``[0, num_classes)``.
      test_images: ``float32[M, H, W, C]`` in ``[0, 1]``.
      test_labels: ``int32[M]`` in ``[0, num_classes)``.
      num_classes: number of classes ``K``.
      source: human-readable origin, e.g. ``"sklearn digits"`` or
        ``"IDX files in /usr/share/datasets/fashion-mnist"``.
      validation_images, validation_labels: a split held out of the
        training set (:func:`hold_out_validation`), or None.
      label_names: the name of each class ``0 .. K-1`` (your own data: its
        ``class_names`` or folder names), or None: see :attr:`class_names`.

    Raises:
      DataError: the arrays do not have these dtypes and shapes.

    >>> x, y = np.zeros((2, 4, 4, 1), np.float32), np.zeros((2,), np.int32)
    >>> ds = Dataset("toy", x, y, x[:1], y[:1], num_classes=3, source="zeros")
    >>> ds
    Dataset(name='toy', train=(2, 4, 4, 1), test=(1, 4, 4, 1), num_classes=3, source='zeros')
    >>> ds.image_shape, ds.mean, ds.class_names
    ((4, 4, 1), (0.0,), ('0', '1', '2'))
    """

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    num_classes: int
    source: str
    validation_images: Optional[np.ndarray] = None
    validation_labels: Optional[np.ndarray] = None
    label_names: Optional[Tuple[str, ...]] = None

    def __post_init__(self):
        # Validate once here so that every consumer can rely on the layout.
        if (self.validation_images is None) != (self.validation_labels is None):
            raise DataError(f"{self.name}: give both validation_images and validation_labels, or neither")
        if self.label_names is not None and len(self.label_names) != self.num_classes:
            raise DataError(f"{self.name}: label_names names {len(self.label_names)} classes, "
                            f"num_classes is {self.num_classes}")
        splits = ("train", "test") + (("validation",) if self.validation_images is not None else ())
        for split in splits:
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
        if self.validation_images is not None and self.validation_images.shape[1:] != self.test_images.shape[1:]:
            raise DataError(f"{self.name}: validation and test image shapes differ: "
                            f"{self.validation_images.shape[1:]} vs {self.test_images.shape[1:]}")

    @property
    def image_shape(self) -> Tuple[int, int, int]:
        """``(H, W, C)`` of one image."""
        return tuple(int(d) for d in self.train_images.shape[1:])

    @property
    def class_names(self) -> Tuple[str, ...]:
        """The name of each label: ``label_names``, else the registry's, else ``"0" .. "K-1"``."""
        if self.label_names is not None:
            return tuple(self.label_names)
        info = DATASETS.get(self.name)
        if info is not None and info.num_classes == self.num_classes:
            return info.class_names
        return tuple(str(k) for k in range(self.num_classes))

    # cached_property writes to the instance __dict__ directly, which a frozen
    # dataclass allows; the statistics cost a pass over the training set.
    @functools.cached_property
    def mean(self) -> Tuple[float, ...]:
        """Per-channel mean ``mean_c = sum_{n,h,w} x[n,h,w,c] / (N H W)`` of
        ``train_images`` (length ``C``), in pixel units."""
        # float64 accumulation: summing ~47M float32 values loses digits.
        m = self.train_images.mean(axis=(0, 1, 2), dtype=np.float64)
        return tuple(float(v) for v in m)

    @functools.cached_property
    def std(self) -> Tuple[float, ...]:
        """Per-channel standard deviation
        ``sqrt(sum_{n,h,w} (x[n,h,w,c] - mean_c)^2 / (N H W))`` of
        ``train_images`` (length ``C``)."""
        s = self.train_images.std(axis=(0, 1, 2), dtype=np.float64)
        return tuple(float(v) for v in s)

    def __repr__(self) -> str:
        # The default dataclass repr would print every pixel.
        validation = "" if self.validation_images is None else f", validation={self.validation_images.shape}"
        return (
            f"Dataset(name={self.name!r}, train={self.train_images.shape}{validation}, "
            f"test={self.test_images.shape}, num_classes={self.num_classes}, "
            f"source={self.source!r})"
        )


# The held-out validation inputs do not depend on the model's seed: every model
# of a sweep is chosen on the same inputs (and never trained on them).
VALIDATION_SPLIT_SEED = 20210914


def hold_out_validation(dataset: Dataset, num_validation: int) -> Dataset:
    """``dataset`` with ``num_validation`` training inputs moved to a validation split.

    The held-out inputs are a fixed random subset of the training split (drawn
    with :data:`VALIDATION_SPLIT_SEED`, the same for every model); the
    remaining training inputs keep their order, so training sees a subset of
    the same sequence.  Use the validation split for every choice (a
    defence's strength, a schedule), the test split only to report.

    >>> x, y = np.zeros((10, 2, 2, 1), np.float32), np.arange(10, dtype=np.int32) % 3
    >>> hold_out_validation(Dataset("toy", x, y, x[:2], y[:2], num_classes=3, source="zeros"), 4)
    Dataset(name='toy', train=(6, 2, 2, 1), validation=(4, 2, 2, 1), test=(2, 2, 2, 1), num_classes=3, source='zeros')
    """
    n = len(dataset.train_images)
    if isinstance(num_validation, bool) or not isinstance(num_validation, (int, np.integer)) \
            or not 0 < num_validation < n:
        raise DataError(f"num_validation must be an integer in [1, {n - 1}] (the {dataset.name} training split "
                        f"has {n} inputs), got {num_validation!r}")
    if dataset.validation_images is not None:
        raise DataError(f"{dataset.name} already has a validation split")
    held = np.zeros(n, bool)
    held[np.random.default_rng(VALIDATION_SPLIT_SEED).permutation(n)[:num_validation]] = True
    return dataclasses.replace(dataset, train_images=dataset.train_images[~held],
                               train_labels=dataset.train_labels[~held],
                               validation_images=dataset.train_images[held],
                               validation_labels=dataset.train_labels[held])
