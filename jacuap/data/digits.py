"""scikit-learn's bundled 8x8 handwritten digits (always offline), split into
train and test by a seeded permutation."""

from __future__ import annotations

import gzip
import importlib.util
import os

import numpy as np

from jacuap.data.dataset import Splits

__all__ = ["NUM_TEST", "load_digits"]

#: Test images in the split: 1797 = 1437 train + 360 test.
NUM_TEST = 360


def load_digits(seed: int = 0) -> Splits:
    """The 1797 digits of ``sklearn.datasets.load_digits``, split 1437/360.

    Each pixel is a count ``p`` in ``0..16`` (of a 4x4 block of a 32x32
    bitmap) and becomes ``x = p / 16`` in ``float32``.  With
    ``perm = np.random.default_rng(seed).permutation(1797)``, the test split
    is ``perm[:360]`` and the training split ``perm[360:]``.

    Args:
      seed: seeds the permutation; the same seed gives the same split.

    Returns:
      :class:`Splits`: images ``float32[N, 8, 8, 1]`` in ``[0, 1]``, labels
      ``int32[N]``.

    >>> train_x, train_y, test_x, test_y = load_digits(seed=0)
    >>> train_x.shape, test_x.shape, train_x.dtype, float(train_x.max())
    ((1437, 8, 8, 1), (360, 8, 8, 1), dtype('float32'), 1.0)
    """
    pixels, labels = _sklearn_digits_table()
    images = (pixels.astype(np.float32) / np.float32(16)).reshape(-1, 8, 8, 1)
    labels = labels.astype(np.int32)
    perm = np.random.default_rng(seed).permutation(len(labels))
    test, train = perm[:NUM_TEST], perm[NUM_TEST:]
    return Splits(images[train], labels[train], images[test], labels[test])


def _sklearn_digits_table():
    """``(pixels float64[1797, 64], labels float64[1797])``: the table ``sklearn.datasets.load_digits`` reads.

    Read straight from the CSV file scikit-learn ships (``datasets/data/digits.csv.gz``,
    64 pixel columns then the label) when it is where scikit-learn keeps it: importing
    ``sklearn.datasets`` costs every program that uses the digits about 0.9 s of start-up.
    Otherwise (another layout) from ``load_digits`` itself.  A test checks both agree.
    """
    spec = importlib.util.find_spec("sklearn")  # finds the package without importing it
    roots = list(spec.submodule_search_locations or []) if spec is not None else []
    for root in roots:
        path = os.path.join(root, "datasets", "data", "digits.csv.gz")
        if os.path.isfile(path):
            with gzip.open(path, "rt") as f:
                table = np.loadtxt(f, delimiter=",")
            if table.shape == (1797, 65):
                return table[:, :64], table[:, 64]
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    return bunch.data, bunch.target
