"""Tests for jacuap.data.tfds: tfds.data_source, offline.

tfds is served by ``tfds.testing.mock_data``, which works for
``tfds.data_source`` without TensorFlow and without network.
"""

import numpy as np
import pytest

from datafiles import assert_one_line
from jacuap import data
from jacuap.data import DataError
from jacuap.data.tfds import read_data_source

tfds = pytest.importorskip("tensorflow_datasets")


@pytest.mark.parametrize("name, shape", [("mnist", (28, 28, 1)), ("cifar10", (32, 32, 3))])
def test_load_tfds_mocked(tmp_path, name, shape):
    # mock_data patches DatasetBuilder.as_data_source and ArrayRecord reads.
    with tfds.testing.mock_data(num_examples=7):
        train_x, train_y, test_x, test_y = data.load_tfds(name, data_dir=str(tmp_path))
    assert train_x.shape == (7,) + shape and test_x.shape == (7,) + shape
    assert train_x.dtype == np.uint8 and test_x.dtype == np.uint8
    assert train_y.shape == (7,) and train_y.dtype == np.int32 and test_y.dtype == np.int32
    assert train_y.min() >= 0 and train_y.max() < 10


def test_load_dataset_falls_back_to_tfds(tmp_path):
    with tfds.testing.mock_data(num_examples=5):
        ds = data.load_dataset("mnist", data_dir=tmp_path)
    assert ds.train_images.shape == (5, 28, 28, 1) and ds.test_images.shape == (5, 28, 28, 1)
    assert ds.train_images.dtype == np.float32 and ds.train_labels.dtype == np.int32
    assert 0 <= ds.train_images.min() and ds.train_images.max() <= 1
    assert ds.source.startswith("tfds data_source")


class _Source:
    """A data source with a working batched ``__getitems__`` (like ArrayRecord)."""

    def __init__(self, n, offset):
        self.n, self.offset, self.batch_calls = n, offset, 0

    def __len__(self):
        return self.n

    def _record(self, i):
        value = (i + self.offset) % 256
        return {"image": np.full((28, 28, 1), value, np.uint8), "label": np.int64(i % 10)}

    def __getitem__(self, i):
        return self._record(i)

    def __getitems__(self, keys):
        self.batch_calls += 1
        return [self._record(i) for i in keys]


def test_load_tfds_known_values_via_as_data_source_fn(tmp_path):
    sources = {"train": _Source(2500, 0), "test": _Source(30, 100)}

    def as_data_source_fn(self, split, **kwargs):
        del self, kwargs
        return [sources[s] for s in split]

    with tfds.testing.mock_data(as_data_source_fn=as_data_source_fn):
        splits = data.load_tfds("mnist", data_dir=str(tmp_path))
    train_x, train_y, test_x, test_y = splits
    assert sources["train"].batch_calls == 3  # 2500 records in batches of 1024
    assert train_x.shape == (2500, 28, 28, 1) and test_x.shape == (30, 28, 28, 1)
    np.testing.assert_array_equal(train_x[:, 0, 0, 0], np.arange(2500) % 256)
    np.testing.assert_array_equal(test_x[:, 5, 5, 0], np.arange(100, 130))
    np.testing.assert_array_equal(train_y, np.arange(2500) % 10)
    np.testing.assert_array_equal(test_y, np.arange(30) % 10)
    assert splits.test_labels is test_y


def test_read_data_source_without_getitems():
    records = [{"image": np.full((4, 4), i, np.uint8), "label": i % 3} for i in range(5)]
    images, labels = read_data_source(records, batch_size=2)
    assert images.shape == (5, 4, 4, 1) and labels.dtype == np.int32
    np.testing.assert_array_equal(images[:, 1, 2, 0], np.arange(5))
    np.testing.assert_array_equal(labels, np.arange(5) % 3)


def test_read_data_source_empty_is_an_error():
    with pytest.raises(DataError) as e:
        read_data_source([])
    assert_one_line(e.value, "empty")


def test_load_tfds_errors_are_one_line(tmp_path):
    # Not prepared and no download: tfds raises a multi-line error.
    with pytest.raises(DataError) as e:
        data.load_tfds("mnist", data_dir=str(tmp_path), download=False)
    assert_one_line(e.value, "tfds.data_source('mnist'", "failed: ")
    with pytest.raises(DataError) as e:
        data.load_tfds("no_such_dataset_xyz", data_dir=str(tmp_path), download=False)
    assert_one_line(e.value, "no_such_dataset_xyz")


def test_load_tfds_without_tfds_says_how_to_install(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import raises ImportError
    with pytest.raises(DataError) as e:
        data.load_tfds("mnist", data_dir=str(tmp_path))
    assert_one_line(e.value, "unavailable", "ModuleNotFoundError", "pip install tensorflow-datasets")
