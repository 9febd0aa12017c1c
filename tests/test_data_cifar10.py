"""Tests for jacuap.data.cifar10: the CIFAR-10 binary version, read directly and via load_dataset."""

import numpy as np
import pytest

from datafiles import assert_one_line, write_cifar10
from jacuap import data
from jacuap.data import DataError
from jacuap.data.cifar10 import find_cifar10_dir


@pytest.mark.parametrize("subdir", ["", "cifar-10-batches-bin", "cifar10", "cifar10/cifar-10-batches-bin"])
def test_cifar10_binary(tmp_path, subdir):
    want = write_cifar10(tmp_path / subdir if subdir else tmp_path)
    ds = data.load_dataset("cifar10", data_dir=tmp_path)
    assert ds.train_images.shape == (15, 32, 32, 3) and ds.test_images.shape == (4, 32, 32, 3)
    assert ds.train_images.dtype == np.float32 and ds.test_labels.dtype == np.int32
    assert ds.image_shape == (32, 32, 3) and ds.num_classes == 10
    np.testing.assert_allclose(ds.train_images, want[0] / 255.0, rtol=1e-6)
    np.testing.assert_allclose(ds.test_images, want[2] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(ds.train_labels, want[1])
    np.testing.assert_array_equal(ds.test_labels, want[3])
    # Spot check one pixel by hand: image 7, h=2, w=5, channel 2.
    assert ds.train_images[7, 2, 5, 2] == np.float32(((7 + 6 + 25 + 202) % 256) / 255)
    assert "CIFAR-10 binary files" in ds.source
    assert len(ds.mean) == 3 and len(ds.std) == 3
    assert ds.class_names[3] == "cat"


def test_read_cifar10_binary_raw(tmp_path):
    want = write_cifar10(tmp_path / "cifar-10-batches-bin")
    got = data.read_cifar10_binary(tmp_path)
    assert got[0].dtype == np.uint8 and got[1].dtype == np.int32
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    assert got.test_images is got[2]  # a Splits


def test_find_cifar10_dir(tmp_path):
    assert find_cifar10_dir(tmp_path / "nope") == (None, "no such directory")
    write_cifar10(tmp_path / "cifar-10-batches-bin")
    assert find_cifar10_dir(tmp_path) == (str(tmp_path / "cifar-10-batches-bin"), "")
    (tmp_path / "cifar-10-batches-bin" / "test_batch.bin").unlink()
    found, why = find_cifar10_dir(tmp_path)
    assert found is None and "data_batch_1.bin" in why  # what `directory` itself lacks


def test_cifar10_bad_file(tmp_path):
    write_cifar10(tmp_path)
    with open(tmp_path / "data_batch_3.bin", "ab") as f:
        f.write(b"\x00" * 10)
    with pytest.raises(DataError) as e:
        data.read_cifar10_binary(tmp_path)
    assert_one_line(e.value, "data_batch_3.bin")
    with pytest.raises(DataError):
        data.read_cifar10_binary(tmp_path / "nowhere")


def test_cifar100_labels_are_rejected(tmp_path):
    write_cifar10(tmp_path)
    path = tmp_path / "test_batch.bin"
    raw = bytearray(path.read_bytes())
    raw[0] = 57
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError) as e:
        data.read_cifar10_binary(tmp_path)
    assert_one_line(e.value, "test_batch.bin", "label 57", "CIFAR-100")
