"""Tests for jacuap.data.digits and load_dataset("digits"): sklearn's 8x8 digits, seeded split."""

import numpy as np
import pytest

from jacuap import data
from jacuap.data.digits import load_digits


@pytest.fixture(scope="module")
def digits():
    return data.load_dataset("digits")


def test_digits_shapes_dtypes_range(digits):
    assert digits.name == "digits"
    assert digits.num_classes == 10
    assert digits.train_images.shape == (1437, 8, 8, 1)
    assert digits.test_images.shape == (360, 8, 8, 1)
    assert digits.train_labels.shape == (1437,) and digits.test_labels.shape == (360,)
    assert digits.train_images.dtype == np.float32 and digits.test_images.dtype == np.float32
    assert digits.train_labels.dtype == np.int32 and digits.test_labels.dtype == np.int32
    for x in (digits.train_images, digits.test_images):
        assert x.min() >= 0.0 and x.max() <= 1.0
    assert digits.train_images.max() == 1.0  # 16/16 occurs
    assert set(np.unique(digits.train_labels)) == set(range(10))
    assert digits.image_shape == (8, 8, 1)
    assert len(digits.mean) == 1 and len(digits.std) == 1
    np.testing.assert_allclose(digits.mean[0], digits.train_images.mean(), rtol=1e-5)
    np.testing.assert_allclose(digits.std[0], digits.train_images.std(), rtol=1e-4)
    assert "sklearn digits" in digits.source
    assert digits.class_names == tuple("0123456789")


def test_digits_split_is_seeded(digits):
    same = data.load_dataset("digits", seed=0)
    np.testing.assert_array_equal(same.train_images, digits.train_images)
    np.testing.assert_array_equal(same.test_labels, digits.test_labels)
    other = data.load_dataset("digits", seed=1)
    assert other.train_images.shape == digits.train_images.shape
    assert not np.array_equal(other.test_images, digits.test_images)
    # Same 1797 images either way: the split only reorders them.
    all0 = np.concatenate([digits.train_images, digits.test_images]).reshape(1797, -1)
    all1 = np.concatenate([other.train_images, other.test_images]).reshape(1797, -1)
    np.testing.assert_array_equal(np.unique(all0, axis=0), np.unique(all1, axis=0))


def test_digits_split_is_the_documented_permutation(digits):
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    perm = np.random.default_rng(0).permutation(1797)
    np.testing.assert_array_equal(digits.test_labels, bunch.target[perm[:360]])
    np.testing.assert_array_equal(digits.train_images[..., 0], bunch.images[perm[360:]] / 16)
    raw = load_digits(seed=0)
    np.testing.assert_array_equal(raw.train_images, digits.train_images)  # bitwise
    np.testing.assert_array_equal(raw.test_labels, digits.test_labels)


def test_dataset_repr_is_short(digits):
    assert len(repr(digits)) < 300


def test_data_dir_is_ignored_by_digits(tmp_path, digits):
    ds = data.load_dataset("digits", data_dir=tmp_path)
    np.testing.assert_array_equal(ds.train_images, digits.train_images)


def test_digits_read_from_sklearns_file_equal_sklearns_loader(monkeypatch):
    from sklearn.datasets import load_digits as sklearn_digits

    from jacuap.data import digits as digits_module

    bunch = sklearn_digits()
    pixels, labels = digits_module._sklearn_digits_table()  # the CSV file, without importing sklearn
    np.testing.assert_array_equal(pixels, bunch.data)
    np.testing.assert_array_equal(labels, bunch.target)
    monkeypatch.setattr(digits_module.importlib.util, "find_spec", lambda name: None)  # another layout
    pixels, labels = digits_module._sklearn_digits_table()
    np.testing.assert_array_equal(pixels, bunch.data)
    np.testing.assert_array_equal(labels, bunch.target)
