"""scikit-learn's bundled 8x8 handwritten digits (always offline), split into
train and test by a seeded permutation."""

from __future__ import annotations

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
    from sklearn.datasets import load_digits as sklearn_digits  # Lazy: only digits needs sklearn.

    bunch = sklearn_digits()
    images = (bunch.images.astype(np.float32) / np.float32(16))[..., None]
    labels = bunch.target.astype(np.int32)
    perm = np.random.default_rng(seed).permutation(len(labels))
    test, train = perm[:NUM_TEST], perm[NUM_TEST:]
    return Splits(images[train], labels[train], images[test], labels[test])
