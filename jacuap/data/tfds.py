"""Datasets from tensorflow-datasets (tfds), read without TensorFlow.

Only ``tfds.data_source`` is used (random access to prepared ArrayRecord
files, NumPy out), which works without TensorFlow; ``tfds.load`` would need
it.  tfds is imported on first use: it is optional for local copies and
slow-ish to import.

Offline, tfds would retry its downloads for minutes, print dozens of lines
and leave partial files behind.  So :func:`load_tfds` lets tfds download
only when the dataset's download host accepts a TCP connection within
:data:`PROBE_TIMEOUT_S` seconds (:func:`offline_reason`; ``JACUAP_OFFLINE=1``
in the environment skips the probe and counts as offline).  A dataset
already prepared in the tfds data directory (:func:`is_prepared`) needs no
network.  Otherwise it fails at once with one line, having written nothing;
a download that fails part way removes the files and folders it created.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import threading
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from jacuap.data.dataset import PathLike, Splits
from jacuap.errors import DataError, one_line

__all__ = ["PROBE_TIMEOUT_S", "DOWNLOAD_HOSTS", "tfds_data_dir", "is_prepared", "offline_reason",
           "load_tfds", "read_data_source"]

#: Seconds the download host has to accept a connection before tfds counts as offline.
PROBE_TIMEOUT_S = 2.0

#: ``(host, port)`` tfds downloads each dataset from (its ``URL``s in tfds 4.9).
DOWNLOAD_HOSTS: Dict[str, Tuple[str, int]] = {
    "mnist": ("storage.googleapis.com", 443),
    "fashion_mnist": ("fashion-mnist.s3-website.eu-central-1.amazonaws.com", 80),
    "cifar10": ("www.cs.toronto.edu", 443),
}


def _describe(e: BaseException) -> str:
    """``"Type: message"`` on one line, for embedding in a DataError."""
    return f"{type(e).__name__}: {one_line(e)}"


def read_data_source(source: Any, batch_size: int = 1024) -> Tuple[np.ndarray, np.ndarray]:
    """Reads every record of a tfds data source into ``(uint8 NHWC, int32)``.

    Records are dicts with ``'image'`` (``uint8[H, W, C]`` or ``[H, W]``) and
    ``'label'``.  They are fetched ``batch_size`` at a time with
    ``__getitems__`` (one batched ArrayRecord read instead of one read per
    record), falling back to indexing one by one for sources without a
    working ``__getitems__``; the ``tfds.testing.mock_data`` source of tfds
    4.9 is one such: it installs ``__getitems__`` as an unbound function and
    calling it raises TypeError.

    Args:
      source: a sequence of records (``len`` and ``[]``).
      batch_size: records per ``__getitems__`` call.

    Returns:
      ``(images, labels)``: ``uint8[N, H, W, C]`` (a channel axis is added to
      ``[H, W]`` images) and ``int32[N]``.

    Raises:
      DataError: ``source`` is empty.

    >>> records = [{"image": np.full((2, 2), k, np.uint8), "label": k} for k in range(3)]
    >>> images, labels = read_data_source(records)
    >>> images.shape, labels.tolist()
    ((3, 2, 2, 1), [0, 1, 2])
    """
    n = len(source)
    if n == 0:
        raise DataError(f"tfds data source {source!r} is empty")
    images: Optional[np.ndarray] = None
    labels = np.empty((n,), np.int32)
    batched = hasattr(source, "__getitems__")
    for start in range(0, n, batch_size):
        keys = list(range(start, min(start + batch_size, n)))
        records: Sequence[Any] = ()
        if batched:
            try:
                records = source.__getitems__(keys)
            except (TypeError, AttributeError, NotImplementedError):
                batched = False
        if not batched:
            records = [source[k] for k in keys]
        for k, record in zip(keys, records):
            image = np.asarray(record["image"])
            if image.ndim == 2:
                image = image[..., None]
            if images is None:  # Allocate once the image shape is known.
                images = np.empty((n,) + image.shape, np.uint8)
            images[k] = image
            labels[k] = int(record["label"])
    return images, labels


def tfds_data_dir(data_dir: Optional[PathLike] = None) -> str:
    """The folder tfds reads and prepares datasets in: ``data_dir``, ``$TFDS_DATA_DIR``, ``~/tensorflow_datasets``.

    >>> tfds_data_dir("/data")
    '/data'
    """
    if data_dir is not None:
        return os.fspath(data_dir)
    return os.path.expanduser(os.environ.get("TFDS_DATA_DIR") or os.path.join("~", "tensorflow_datasets"))


def is_prepared(name: str, data_dir: Optional[PathLike] = None) -> bool:
    """Whether some version of tfds dataset ``name`` is prepared in :func:`tfds_data_dir` (files only).

    tfds lays a prepared dataset out as ``DIR/name/[config/]version/dataset_info.json``.

    >>> is_prepared("mnist", "/no/such/dir")
    False
    """
    root = os.path.join(tfds_data_dir(data_dir), name)
    return any(glob.glob(os.path.join(glob.escape(root), *(["*"] * depth), "dataset_info.json"))
               for depth in (1, 2))


def offline_reason(name: str, timeout: float = PROBE_TIMEOUT_S) -> Optional[str]:
    """Why tfds could not download ``name`` now (a few words), or None when its host answers.

    ``JACUAP_OFFLINE=1`` answers at once without probing.  Otherwise one TCP
    connection to the host of :data:`DOWNLOAD_HOSTS`, name lookup included,
    gets ``timeout`` seconds (in a thread: ``getaddrinfo`` has no timeout of
    its own).

    >>> os.environ["JACUAP_OFFLINE"] = "1"
    >>> offline_reason("mnist")
    'JACUAP_OFFLINE is set'
    >>> del os.environ["JACUAP_OFFLINE"]
    """
    if os.environ.get("JACUAP_OFFLINE", "").strip().lower() not in ("", "0", "false", "no"):
        return "JACUAP_OFFLINE is set"
    host, port = DOWNLOAD_HOSTS.get(name, ("storage.googleapis.com", 443))
    outcome: List[str] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome.append("")
        except OSError as e:
            outcome.append(one_line(e.strerror or e or type(e).__name__, limit=80))

    probe = threading.Thread(target=connect, daemon=True)
    probe.start()
    probe.join(timeout)
    if not outcome:
        return f"no network ({host}:{port} did not answer within {timeout:g} s)"
    return f"no network ({host}:{port}: {outcome[0]})" if outcome[0] else None


def _mocked(tfds: Any) -> bool:
    """Whether ``tfds.testing.mock_data`` is active (its downloads are no-ops: no network needed)."""
    method = getattr(getattr(getattr(tfds, "core", None), "DatasetBuilder", None), "download_and_prepare", None)
    return getattr(method, "__module__", "").startswith("tensorflow_datasets.testing")


def _snapshot(root: str, name: str) -> Dict[str, Optional[set]]:
    """The entries of ``root`` and of the folders tfds writes a download into, before it runs."""
    out: Dict[str, Optional[set]] = {}
    for folder in (root, os.path.join(root, "downloads"), os.path.join(root, name)):
        out[folder] = set(os.listdir(folder)) if os.path.isdir(folder) else None
    return out


def _remove_new(before: Dict[str, Optional[set]]) -> None:
    """Removes what a failed download created since :func:`_snapshot` (partial files, empty folders)."""
    for folder, entries in before.items():
        if not os.path.isdir(folder):
            continue
        if entries is None:
            shutil.rmtree(folder, ignore_errors=True)
            continue
        for entry in set(os.listdir(folder)) - entries:
            path = os.path.join(folder, entry)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                try:
                    os.remove(path)
                except OSError:
                    pass


def load_tfds(
    name: str, data_dir: Optional[PathLike] = None, *, download: bool = True
) -> Splits:
    """Loads the train and test splits of a tfds dataset, without TensorFlow.

    Uses ``tfds.data_source(name, split=["train", "test"], data_dir=...)``,
    which reads prepared ArrayRecord files and returns NumPy arrays.  The
    ArrayRecord format is requested explicitly: tfds only defaults to it when
    ``data_dir`` is None, and the other default (TFRecord) has no random
    access.

    Args:
      name: a tfds name with ``image`` and ``label`` features, e.g.
        ``"mnist"``, ``"fashion_mnist"``, ``"cifar10"``.
      data_dir: tfds data directory; None means tfds' default
        (``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).
      download: let tfds download and prepare the data when it is not in
        ``data_dir``, if its host answers (:func:`offline_reason`).

    Returns:
      :class:`Splits`: images ``uint8[N, H, W, C]``, labels ``int32[N]``.

    Raises:
      DataError: tfds is not installed; the data is not prepared and the
        network is unreachable (raised at once, nothing written); or any tfds
        error, reported on one line (a failed download's new files removed).

    >>> import tensorflow_datasets as tfds
    >>> with tfds.testing.mock_data(num_examples=3):  # random records, offline
    ...     train_x, train_y, test_x, test_y = load_tfds("mnist")
    >>> train_x.shape, train_x.dtype, test_y.shape
    ((3, 28, 28, 1), dtype('uint8'), (3,))
    """
    where = "" if data_dir is None else f", data_dir={os.fspath(data_dir)!r}"
    call = f"tfds.data_source({name!r}{where})"
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise DataError(
            f"{call} unavailable: {_describe(e)}; pip install tensorflow-datasets"
        ) from e
    root = tfds_data_dir(data_dir)
    will_download = download and not is_prepared(name, data_dir) and not _mocked(tfds)
    if will_download:
        reason = offline_reason(name)
        if reason is not None:
            raise DataError(f"{call}: {name} is not prepared in {root} and it cannot be downloaded: "
                            f"{reason}; nothing was downloaded")
    before = _snapshot(root, name) if will_download else {}
    try:
        train, test = tfds.data_source(
            name,
            split=["train", "test"],
            data_dir=None if data_dir is None else os.fspath(data_dir),
            download=download,
            builder_kwargs={"file_format": "array_record"},
        )
        return Splits(*read_data_source(train), *read_data_source(test))
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - tfds raises many unrelated types.
        _remove_new(before)
        raise DataError(f"{call} failed: {_describe(e)}") from e
    except BaseException:  # Ctrl-C in the middle of a download: no partial files either.
        _remove_new(before)
        raise
