"""Tests for jacuap.data.load_dataset: the search order of sources and its errors."""

import functools
import os

import numpy as np
import pytest

from datafiles import assert_one_line, write_idx, write_mnist_like
from jacuap import data
from jacuap.data import DataError


@pytest.fixture
def offline(monkeypatch):
    """No tfds download attempt: keeps the tests hermetic."""
    monkeypatch.setattr(data, "load_tfds", functools.partial(data.load_tfds, download=False))


def test_data_dir_takes_precedence_over_debian(tmp_path, monkeypatch):
    debian = tmp_path / "debian"
    write_mnist_like(debian, n_train=4, n_test=2)
    mine = tmp_path / "mine"
    write_mnist_like(mine, n_train=6, n_test=3)
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST_DIR", str(debian))
    assert data.load_dataset("fashion_mnist", data_dir=mine).train_images.shape[0] == 6
    ds = data.load_dataset("fashion_mnist", data_dir=tmp_path / "mine" / "..")
    assert ds.train_images.shape[0] == 4 and str(debian) in ds.source
    # The Debian folder is for Fashion-MNIST only.
    monkeypatch.setattr(data, "load_tfds", functools.partial(data.load_tfds, download=False))
    with pytest.raises(DataError):
        data.load_dataset("mnist", data_dir=tmp_path)


def test_unknown_name():
    with pytest.raises(DataError) as e:
        data.load_dataset("imagenet")
    assert_one_line(e.value, "imagenet", *data.DATASETS)
    assert isinstance(e.value, ValueError)


def test_name_spellings_are_normalised(tmp_path):
    assert data.load_dataset("Digits").name == "digits"
    write_mnist_like(tmp_path / "fashion-mnist")
    assert data.load_dataset(" Fashion-MNIST", data_dir=tmp_path).name == "fashion_mnist"


def test_missing_data_dir(tmp_path):
    with pytest.raises(DataError) as e:
        data.load_dataset("mnist", data_dir=tmp_path / "nope")
    assert_one_line(e.value, "nope", "data_dir")
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(DataError):
        data.load_dataset("fashion_mnist", data_dir=a_file)


def test_data_dir_expands_user(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    write_mnist_like(tmp_path / "mnist")
    ds = data.load_dataset("mnist", data_dir="~")
    assert ds.source == f"IDX files in {tmp_path / 'mnist'}"


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10"])
def test_nothing_found_lists_what_was_tried(tmp_path, monkeypatch, offline, name):
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST_DIR", str(tmp_path / "no-debian"))
    (tmp_path / "data").mkdir()
    with pytest.raises(DataError) as e:
        data.load_dataset(name, data_dir=tmp_path / "data")
    msg = str(e.value)
    assert_one_line(e.value, name, str(tmp_path / "data"), "tfds.data_source", "--config.data_dir")
    if name == "fashion_mnist":
        assert_one_line(e.value, "no-debian", "apt-get install dataset-fashion-mnist", "fashion-mnist")
    elif name == "cifar10":
        assert_one_line(e.value, "cifar-10-batches-bin", "data_batch_1.bin")
    else:
        assert_one_line(e.value, "train-images-idx3-ubyte")
        assert "apt-get" not in msg
    assert msg.endswith(".") and "..." not in msg[-20:]  # not cut short


def test_nothing_found_without_data_dir_says_so(monkeypatch):
    calls = []

    def no_tfds(name, data_dir=None):
        calls.append((name, data_dir))
        raise DataError(f"tfds stub has no {name}")

    monkeypatch.setattr(data, "load_tfds", no_tfds)
    with pytest.raises(DataError) as e:
        data.load_dataset("mnist")
    assert calls == [("mnist", None)]
    assert_one_line(e.value, "tried: local files (no data_dir given); tfds stub has no mnist. To fix:")


def test_partial_idx_set_is_reported(tmp_path, offline):
    write_mnist_like(tmp_path)
    os.remove(tmp_path / "t10k-labels-idx1-ubyte.gz")
    with pytest.raises(DataError) as e:
        data.load_dataset("mnist", data_dir=tmp_path)
    assert_one_line(e.value, "missing t10k-labels-idx1-ubyte[.gz]")


def test_labels_out_of_range_are_rejected(tmp_path):
    write_mnist_like(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.full(20, 10, np.uint8))
    with pytest.raises(DataError) as e:
        data.load_dataset("mnist", data_dir=tmp_path)
    assert_one_line(e.value, "train labels span 10..10, expected 0..9")


def test_real_debian_fashion_mnist():
    if not os.path.isdir(data.DEBIAN_FASHION_MNIST_DIR):
        pytest.skip(f"{data.DEBIAN_FASHION_MNIST_DIR} absent (apt-get install dataset-fashion-mnist)")
    ds = data.load_dataset("fashion_mnist")
    assert ds.train_images.shape == (60000, 28, 28, 1)
    assert ds.test_images.shape == (10000, 28, 28, 1)
    assert ds.train_images.dtype == np.float32 and ds.train_labels.dtype == np.int32
    assert ds.train_images.min() == 0.0 and ds.train_images.max() == 1.0
    np.testing.assert_array_equal(np.bincount(ds.train_labels), [6000] * 10)
    np.testing.assert_array_equal(np.bincount(ds.test_labels), [1000] * 10)
    # Published statistics of Fashion-MNIST's training set.
    np.testing.assert_allclose(ds.mean, (0.2860,), atol=1e-3)
    np.testing.assert_allclose(ds.std, (0.3530,), atol=1e-3)
    assert ds.source == f"IDX files in {data.DEBIAN_FASHION_MNIST_DIR}"
