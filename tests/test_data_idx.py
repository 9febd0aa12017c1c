"""Tests for jacuap.data.idx: reading IDX files, finding the four MNIST files, and
loading MNIST / Fashion-MNIST from IDX files in a data_dir."""

import gzip

import numpy as np
import pytest

from datafiles import assert_one_line, write_idx, write_mnist_like
from jacuap import data
from jacuap.data import DataError
from jacuap.data.idx import find_idx_files


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize(
    "array",
    [
        np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4),
        np.array([0, 255, 7], dtype=np.uint8),
        np.array([[-1, 2], [30000, -30000]], dtype=np.int16),
        np.array([1.5, -2.25], dtype=np.float32),
        np.array([[[1]], [[-(2**31)]]], dtype=np.int32),
        np.array([-3, 4], dtype=np.int8),
        np.array([1e300, -0.5], dtype=np.float64),
    ],
)
def test_idx_round_trip(tmp_path, array, suffix):
    path = tmp_path / ("a.idx" + suffix)
    write_idx(path, array)
    if suffix:
        with open(path, "rb") as f:
            assert f.read(2) == b"\x1f\x8b"
    back = data.read_idx(path)
    assert back.dtype == array.dtype and back.shape == array.shape
    np.testing.assert_array_equal(back, array)
    back[...] = 0  # writable


def test_idx_header_layout(tmp_path):
    path = tmp_path / "x"
    write_idx(path, np.zeros((2, 3), np.uint8))
    raw = path.read_bytes()
    assert raw[:4] == bytes([0, 0, 0x08, 2])
    assert raw[4:12] == (2).to_bytes(4, "big") + (3).to_bytes(4, "big")
    assert len(raw) == 12 + 6


def test_read_idx_big_endian_by_hand(tmp_path):
    path = tmp_path / "i2"
    path.write_bytes(bytes([0, 0, 0x0B, 1, 0, 0, 0, 2, 0x01, 0x02, 0xFF, 0xFE]))
    back = data.read_idx(path)
    assert back.dtype == np.dtype("int16") and back.dtype.isnative
    assert back.tolist() == [0x0102, -2]


def test_idx_truncated_raises(tmp_path):
    good = tmp_path / "good"
    write_idx(good, np.ones((5, 28, 28), np.uint8))
    raw = good.read_bytes()
    cut = tmp_path / "cut"
    cut.write_bytes(raw[:-100])
    with pytest.raises(DataError) as e:
        data.read_idx(cut)
    assert_one_line(e.value, "cut", "truncated")
    # A truncated gzip stream is caught too.
    cut_gz = tmp_path / "cut.gz"
    cut_gz.write_bytes(gzip.compress(raw)[:-30])
    with pytest.raises(DataError) as e:
        data.read_idx(cut_gz)
    assert_one_line(e.value, "cut.gz")
    # And a header that promises more dimensions than the file holds.
    short = tmp_path / "short"
    short.write_bytes(bytes([0, 0, 8, 3, 0, 0]))
    with pytest.raises(DataError):
        data.read_idx(short)


def test_idx_bad_magic_raises(tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x12\x34\x08\x01" + b"\x00" * 10)
    with pytest.raises(DataError) as e:
        data.read_idx(bad)
    assert_one_line(e.value, "not an IDX file")
    bad_type = tmp_path / "bad_type"
    bad_type.write_bytes(bytes([0, 0, 0x42, 1, 0, 0, 0, 1, 7]))
    with pytest.raises(DataError):
        data.read_idx(bad_type)
    with pytest.raises(DataError):
        data.read_idx(tmp_path / "does-not-exist")


def test_write_idx_rejects_unsupported_dtype(tmp_path):
    with pytest.raises(ValueError):
        write_idx(tmp_path / "x", np.zeros(3, np.int64))


def test_find_idx_files_accepts_mirror_names_and_reports_missing(tmp_path):
    assert find_idx_files(tmp_path / "nope") == (None, "no such directory")
    write_mnist_like(tmp_path, gz=False)
    (tmp_path / "train-images-idx3-ubyte").rename(tmp_path / "train-images.idx3-ubyte")
    files, why = find_idx_files(tmp_path)
    assert why == "" and files["train", "images"] == str(tmp_path / "train-images.idx3-ubyte")
    assert files["test", "labels"] == str(tmp_path / "t10k-labels-idx1-ubyte")
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    assert find_idx_files(tmp_path) == (None, "missing t10k-labels-idx1-ubyte[.gz]")


@pytest.mark.parametrize(
    "name, subdir, gz",
    [
        ("fashion_mnist", "", True),
        ("fashion_mnist", "fashion-mnist", False),
        ("fashion_mnist", "fashion_mnist", True),
        ("mnist", "", False),
        ("mnist", "mnist", True),
    ],
)
def test_idx_dataset_from_data_dir(tmp_path, name, subdir, gz):
    directory = tmp_path / subdir if subdir else tmp_path
    arrays = write_mnist_like(directory, gz=gz)
    ds = data.load_dataset(name, data_dir=str(tmp_path))
    assert ds.name == name and ds.num_classes == 10
    assert ds.train_images.shape == (20, 28, 28, 1)
    assert ds.test_images.shape == (10, 28, 28, 1)
    assert ds.train_images.dtype == np.float32 and ds.train_labels.dtype == np.int32
    np.testing.assert_allclose(
        ds.train_images[..., 0], arrays["train-images-idx3-ubyte"] / 255.0, rtol=1e-6
    )
    np.testing.assert_allclose(
        ds.test_images[..., 0], arrays["t10k-images-idx3-ubyte"] / 255.0, rtol=1e-6
    )
    # Bitwise: p / 255 in float32, so 255 maps to exactly 1.
    np.testing.assert_array_equal(
        ds.train_images[..., 0],
        arrays["train-images-idx3-ubyte"].astype(np.float32) / np.float32(255),
    )
    np.testing.assert_array_equal(ds.train_labels, arrays["train-labels-idx1-ubyte"])
    np.testing.assert_array_equal(ds.test_labels, arrays["t10k-labels-idx1-ubyte"])
    assert ds.train_images.min() >= 0 and ds.train_images.max() <= 1
    assert ds.source == f"IDX files in {directory}"


def test_idx_images_and_labels_must_match(tmp_path):
    write_mnist_like(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(3, np.uint8))
    with pytest.raises(DataError) as e:
        data.load_dataset("mnist", data_dir=tmp_path)
    assert_one_line(e.value, "test IDX files do not match", "(10, 28, 28, 1)", "(3,)")


def test_idx_of_the_wrong_image_shape_is_rejected(tmp_path):
    write_mnist_like(tmp_path)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.zeros((10, 8, 8), np.uint8))
    with pytest.raises(DataError) as e:
        data.load_dataset("fashion_mnist", data_dir=tmp_path)
    assert_one_line(e.value, "test images have shape (8, 8, 1), expected (28, 28, 1)")


def test_corrupt_local_copy_is_an_error_not_a_fallback(tmp_path):
    write_mnist_like(tmp_path, gz=False)
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(DataError) as e:
        data.load_dataset("mnist", data_dir=tmp_path)
    assert_one_line(e.value, "t10k-images-idx3-ubyte")
