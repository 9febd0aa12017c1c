"""Tests for jacuap.data: digits, IDX, CIFAR-10 binary, tfds data_source, errors.

Everything runs offline on small files written to tmp_path; tfds is served by
``tfds.testing.mock_data`` (which works for ``tfds.data_source`` without
TensorFlow).  The real Fashion-MNIST test runs only where Debian's
``dataset-fashion-mnist`` package is installed.
"""

import functools
import gzip
import os

import numpy as np
import pytest

from jacuap import data
from jacuap.data import DataError


def _assert_one_line(err, *needles):
    msg = str(err)
    assert "\n" not in msg and "\r" not in msg, msg
    for needle in needles:
        assert needle in msg, (needle, msg)


def _write_mnist_like(directory, n_train=20, n_test=10, gz=True, seed=0):
    """Writes the four IDX files of a tiny 28x28 dataset; returns the arrays."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, (n_train,), dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, (n_test,), dtype=np.uint8),
    }
    os.makedirs(directory, exist_ok=True)
    for stem, array in arrays.items():
        data.write_idx(os.path.join(directory, stem + (".gz" if gz else "")), array)
    return arrays


# --------------------------------------------------------------------------
# digits
# --------------------------------------------------------------------------


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


def test_dataset_repr_is_short(digits):
    assert len(repr(digits)) < 300


# --------------------------------------------------------------------------
# IDX
# --------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize(
    "array",
    [
        np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4),
        np.array([0, 255, 7], dtype=np.uint8),
        np.array([[-1, 2], [30000, -30000]], dtype=np.int16),
        np.array([1.5, -2.25], dtype=np.float32),
        np.array([[[1]], [[-(2**31)]]], dtype=np.int32),
    ],
)
def test_idx_round_trip(tmp_path, array, suffix):
    path = tmp_path / ("a.idx" + suffix)
    data.write_idx(path, array)
    if suffix:
        with open(path, "rb") as f:
            assert f.read(2) == b"\x1f\x8b"
    back = data.read_idx(path)
    assert back.dtype == array.dtype and back.shape == array.shape
    np.testing.assert_array_equal(back, array)
    back[...] = 0  # writable


def test_idx_header_layout(tmp_path):
    path = tmp_path / "x"
    data.write_idx(path, np.zeros((2, 3), np.uint8))
    raw = path.read_bytes()
    assert raw[:4] == bytes([0, 0, 0x08, 2])
    assert raw[4:12] == (2).to_bytes(4, "big") + (3).to_bytes(4, "big")
    assert len(raw) == 12 + 6


def test_idx_truncated_raises(tmp_path):
    good = tmp_path / "good"
    data.write_idx(good, np.ones((5, 28, 28), np.uint8))
    raw = good.read_bytes()
    cut = tmp_path / "cut"
    cut.write_bytes(raw[:-100])
    with pytest.raises(DataError) as e:
        data.read_idx(cut)
    _assert_one_line(e.value, "cut", "truncated")
    # A truncated gzip stream is caught too.
    cut_gz = tmp_path / "cut.gz"
    cut_gz.write_bytes(gzip.compress(raw)[:-30])
    with pytest.raises(DataError) as e:
        data.read_idx(cut_gz)
    _assert_one_line(e.value, "cut.gz")
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
    _assert_one_line(e.value, "not an IDX file")
    bad_type = tmp_path / "bad_type"
    bad_type.write_bytes(bytes([0, 0, 0x42, 1, 0, 0, 0, 1, 7]))
    with pytest.raises(DataError):
        data.read_idx(bad_type)
    with pytest.raises(DataError):
        data.read_idx(tmp_path / "does-not-exist")


def test_write_idx_rejects_unsupported_dtype(tmp_path):
    with pytest.raises(ValueError):
        data.write_idx(tmp_path / "x", np.zeros(3, np.int64))


# --------------------------------------------------------------------------
# MNIST / Fashion-MNIST from IDX files in data_dir
# --------------------------------------------------------------------------


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
    arrays = _write_mnist_like(directory, gz=gz)
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
    np.testing.assert_array_equal(ds.train_labels, arrays["train-labels-idx1-ubyte"])
    np.testing.assert_array_equal(ds.test_labels, arrays["t10k-labels-idx1-ubyte"])
    assert ds.train_images.min() >= 0 and ds.train_images.max() <= 1
    assert ds.source == f"IDX files in {directory}"


def test_data_dir_takes_precedence_over_debian(tmp_path, monkeypatch):
    debian = tmp_path / "debian"
    _write_mnist_like(debian, n_train=4, n_test=2)
    mine = tmp_path / "mine"
    _write_mnist_like(mine, n_train=6, n_test=3)
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST_DIR", str(debian))
    assert data.load_dataset("fashion_mnist", data_dir=mine).train_images.shape[0] == 6
    ds = data.load_dataset("fashion_mnist", data_dir=tmp_path / "mine" / "..")
    assert ds.train_images.shape[0] == 4 and str(debian) in ds.source
    # The Debian folder is for Fashion-MNIST only.
    monkeypatch.setattr(data, "load_tfds", functools.partial(data.load_tfds, download=False))
    with pytest.raises(DataError):
        data.load_dataset("mnist", data_dir=tmp_path)


def test_corrupt_local_copy_is_an_error_not_a_fallback(tmp_path):
    _write_mnist_like(tmp_path, gz=False)
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(DataError) as e:
        data.load_dataset("mnist", data_dir=tmp_path)
    _assert_one_line(e.value, "t10k-images-idx3-ubyte")


# --------------------------------------------------------------------------
# CIFAR-10 binary
# --------------------------------------------------------------------------


def _write_cifar(directory, per_batch=3, n_test=4):
    """Writes six fake CIFAR-10 .bin files; returns (train_hwc, train_y, test_hwc, test_y).

    Pixel (h, w, c) of image i holds (i + 3*h + 5*w + 101*c) % 256, so a wrong
    CHW -> HWC transpose cannot go unnoticed.
    """
    os.makedirs(directory, exist_ok=True)
    h, w, c = np.meshgrid(np.arange(32), np.arange(32), np.arange(3), indexing="ij")

    def batch(offset, n, path):
        images = np.stack([(i + 3 * h + 5 * w + 101 * c) % 256 for i in range(offset, offset + n)])
        images = images.astype(np.uint8)
        labels = (np.arange(offset, offset + n) % 10).astype(np.uint8)
        chw = images.transpose(0, 3, 1, 2).reshape(n, -1)
        records = np.concatenate([labels[:, None], chw], axis=1)
        records.tofile(path)
        return images, labels

    train = [
        batch(b * per_batch, per_batch, os.path.join(directory, f"data_batch_{b + 1}.bin"))
        for b in range(5)
    ]
    test = batch(1000, n_test, os.path.join(directory, "test_batch.bin"))
    return (
        np.concatenate([x for x, _ in train]),
        np.concatenate([y for _, y in train]),
        test[0],
        test[1],
    )


@pytest.mark.parametrize("subdir", ["", "cifar-10-batches-bin", "cifar10", "cifar10/cifar-10-batches-bin"])
def test_cifar10_binary(tmp_path, subdir):
    want = _write_cifar(tmp_path / subdir if subdir else tmp_path)
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


def test_read_cifar10_binary_raw(tmp_path):
    want = _write_cifar(tmp_path / "cifar-10-batches-bin")
    got = data.read_cifar10_binary(tmp_path)
    assert got[0].dtype == np.uint8 and got[1].dtype == np.int32
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


def test_cifar10_bad_file(tmp_path):
    _write_cifar(tmp_path)
    with open(tmp_path / "data_batch_3.bin", "ab") as f:
        f.write(b"\x00" * 10)
    with pytest.raises(DataError) as e:
        data.read_cifar10_binary(tmp_path)
    _assert_one_line(e.value, "data_batch_3.bin")
    with pytest.raises(DataError):
        data.read_cifar10_binary(tmp_path / "nowhere")


# --------------------------------------------------------------------------
# tfds data_source, offline
# --------------------------------------------------------------------------

tfds = pytest.importorskip("tensorflow_datasets")


@pytest.mark.parametrize("name, shape", [("mnist", (28, 28, 1)), ("cifar10", (32, 32, 3))])
def test_load_tfds_mocked(tmp_path, name, shape):
    # mock_data patches DatasetBuilder.as_data_source and ArrayRecord reads;
    # no TensorFlow and no network are involved.
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
        train_x, train_y, test_x, test_y = data.load_tfds("mnist", data_dir=str(tmp_path))
    assert sources["train"].batch_calls == 3  # 2500 records in batches of 1024
    assert train_x.shape == (2500, 28, 28, 1) and test_x.shape == (30, 28, 28, 1)
    np.testing.assert_array_equal(train_x[:, 0, 0, 0], np.arange(2500) % 256)
    np.testing.assert_array_equal(test_x[:, 5, 5, 0], np.arange(100, 130))
    np.testing.assert_array_equal(train_y, np.arange(2500) % 10)
    np.testing.assert_array_equal(test_y, np.arange(30) % 10)


def test_read_data_source_without_getitems():
    records = [{"image": np.full((4, 4), i, np.uint8), "label": i % 3} for i in range(5)]
    images, labels = data._read_data_source(records, batch_size=2)
    assert images.shape == (5, 4, 4, 1) and labels.dtype == np.int32
    np.testing.assert_array_equal(images[:, 1, 2, 0], np.arange(5))
    np.testing.assert_array_equal(labels, np.arange(5) % 3)


def test_load_tfds_errors_are_one_line(tmp_path):
    # Not prepared and no download: tfds raises a multi-line error.
    with pytest.raises(DataError) as e:
        data.load_tfds("mnist", data_dir=str(tmp_path), download=False)
    _assert_one_line(e.value, "tfds.data_source('mnist'")
    with pytest.raises(DataError) as e:
        data.load_tfds("no_such_dataset_xyz", data_dir=str(tmp_path), download=False)
    _assert_one_line(e.value, "no_such_dataset_xyz")


# --------------------------------------------------------------------------
# errors from load_dataset
# --------------------------------------------------------------------------


def test_unknown_name():
    with pytest.raises(DataError) as e:
        data.load_dataset("imagenet")
    _assert_one_line(e.value, "imagenet", *data.DATASETS)
    assert isinstance(e.value, ValueError)


def test_name_spellings_are_normalised():
    assert data.load_dataset("Digits").name == "digits"


def test_missing_data_dir(tmp_path):
    with pytest.raises(DataError) as e:
        data.load_dataset("mnist", data_dir=tmp_path / "nope")
    _assert_one_line(e.value, "nope", "data_dir")
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(DataError):
        data.load_dataset("fashion_mnist", data_dir=a_file)


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10"])
def test_nothing_found_lists_what_was_tried(tmp_path, monkeypatch, name):
    # Keep the test hermetic: no download attempt, and no real Debian copy.
    monkeypatch.setattr(data, "load_tfds", functools.partial(data.load_tfds, download=False))
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST_DIR", str(tmp_path / "no-debian"))
    (tmp_path / "data").mkdir()
    with pytest.raises(DataError) as e:
        data.load_dataset(name, data_dir=tmp_path / "data")
    msg = str(e.value)
    _assert_one_line(e.value, name, str(tmp_path / "data"), "tfds.data_source", "--config.data_dir")
    if name == "fashion_mnist":
        _assert_one_line(e.value, "no-debian", "apt-get install dataset-fashion-mnist", "fashion-mnist")
    elif name == "cifar10":
        _assert_one_line(e.value, "cifar-10-batches-bin", "data_batch_1.bin")
    else:
        _assert_one_line(e.value, "train-images-idx3-ubyte")
        assert "apt-get" not in msg


def test_partial_idx_set_is_reported(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "load_tfds", functools.partial(data.load_tfds, download=False))
    _write_mnist_like(tmp_path)
    os.remove(tmp_path / "t10k-labels-idx1-ubyte.gz")
    with pytest.raises(DataError) as e:
        data.load_dataset("mnist", data_dir=tmp_path)
    _assert_one_line(e.value, "missing t10k-labels-idx1-ubyte[.gz]")


# --------------------------------------------------------------------------
# the real Fashion-MNIST from Debian's dataset-fashion-mnist package
# --------------------------------------------------------------------------


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
