"""Writers of small dataset files for the jacuap.data tests (not part of the library).

They follow the published file formats independently of jacuap's readers.

``write_idx`` is the inverse of :func:`jacuap.data.read_idx`; the other
writers lay out tiny fake copies of MNIST and CIFAR-10 the way the real
downloads are laid out.
"""

import gzip
import os
import struct

import numpy as np

# The type codes of the IDX format (http://yann.lecun.com/exdb/mnist/), written
# out here rather than taken from jacuap.data.idx so that the tests check the
# reader against the format, not against itself.
_IDX_CODES = {
    np.dtype("u1"): 0x08,
    np.dtype("i1"): 0x09,
    np.dtype("i2"): 0x0B,
    np.dtype("i4"): 0x0C,
    np.dtype("f4"): 0x0D,
    np.dtype("f8"): 0x0E,
}


def assert_one_line(err, *needles):
    """``str(err)`` is one line and contains every needle."""
    msg = str(err)
    assert "\n" not in msg and "\r" not in msg, msg
    for needle in needles:
        assert needle in msg, (needle, msg)


def write_idx(path, array):
    """Writes ``array`` as an IDX file, gzipped when ``path`` ends in ``.gz``.

    Raises:
      ValueError: the dtype or shape cannot be represented in IDX.
    """
    array = np.asarray(array)
    code = _IDX_CODES.get(array.dtype.newbyteorder("="))
    if code is None:
        raise ValueError(
            f"IDX cannot store dtype {array.dtype}; use one of "
            f"{sorted(str(d) for d in _IDX_CODES)}"
        )
    if array.ndim > 255 or any(d >= 2**32 for d in array.shape):
        raise ValueError(f"IDX cannot store shape {array.shape}")
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    big_endian = array.dtype.newbyteorder(">")
    payload = header + np.ascontiguousarray(array, big_endian).tobytes()
    with open(path, "wb") as f:
        if os.fspath(path).endswith(".gz"):
            # mtime=0 makes the output byte-for-byte reproducible.
            with gzip.GzipFile(filename="", mode="wb", fileobj=f, mtime=0) as gz:
                gz.write(payload)
        else:
            f.write(payload)


def write_mnist_like(directory, n_train=20, n_test=10, gz=True, seed=0):
    """Writes the four IDX files of a tiny 28x28 dataset; returns the arrays by file stem."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, (n_train,), dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, (n_test,), dtype=np.uint8),
    }
    os.makedirs(directory, exist_ok=True)
    for stem, array in arrays.items():
        write_idx(os.path.join(directory, stem + (".gz" if gz else "")), array)
    return arrays


def write_cifar10(directory, per_batch=3, n_test=4):
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
        np.concatenate([labels[:, None], chw], axis=1).tofile(path)
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
