"""TensorBoard event files: scalars, images and text, written by process 0 through tensorboardX.

One writer for the whole package (``train.py`` logs each epoch, ``attack.py``
its results table and UAPs), and :func:`read`, which reads the files back
without TensorFlow or TensorBoard installed.  tensorboardX (numpy and
protobuf) is imported at the first write or read only, so ``import jacuap``
stays light.

* :class:`Writer` writes one new event file in ``logdir``; on a process other
  than 0 every method does nothing.  ``purge_step`` opens the file with
  TensorBoard's restart marker (``SessionLog.START`` at that step): events of
  earlier files at steps ``>= purge_step`` are then hidden.  That is how a
  resumed run replaces what a killed one logged after its last checkpoint.
* :func:`scalars`, :func:`image`, :func:`text`: one value, one new file.
* :func:`read`: ``{tag: [(step, value), ...]}`` as TensorBoard shows it (files
  in name order, i.e. creation order; restart markers applied).

Event files are logs appended to, the one kind of file jacuap writes that
does not go through :mod:`jacuap.io`'s atomic replace: a reader skips a cut
last record.

>>> import tempfile
>>> d = tempfile.mkdtemp()
>>> scalars(d, 3, {"loss": 0.5, "penalty": None})  # None: left out
>>> text(d, "note", 0, "**hello**")
>>> sorted(read(d).items())
[('loss', [(3, 0.5)]), ('note', [(0, '**hello**')])]
>>> scalars(d, 2, {"loss": 0.25}, purge_step=2)  # a restart at step 2 hides step 3
>>> read(d)["loss"]
[(2, 0.25)]
"""

from __future__ import annotations

import os
import re
import struct
import sys
import time
from io import BytesIO
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

from jacuap import io

__all__ = ["DIRNAME", "logdir", "tag", "Writer", "scalars", "image", "text", "event_files", "read"]

#: The folder of a training workdir or an attack output folder that holds its event files.
DIRNAME = "tensorboard"
_PREFIX = "events.out.tfevents."
_TEXT_SUFFIX = "/text_summary"  # tensorboardX appends it to a text summary's tag


def logdir(folder: str) -> str:
    """Where jacuap logs the events of a workdir or an output ``folder``: ``folder/tensorboard``.

    >>> logdir("runs/a")
    'runs/a/tensorboard'
    """
    return os.path.join(folder, DIRNAME)


def _tensorboardx():
    """tensorboardX, imported without torch (it imports torch, when installed, only to accept torch tensors)."""
    block = "torch" not in sys.modules
    if block:
        sys.modules["torch"] = None  # `import torch` raises ImportError, which tensorboardX catches
    try:
        import tensorboardX
    except ModuleNotFoundError as exc:
        if exc.name != "tensorboardX":
            raise
        raise ModuleNotFoundError("jacuap logs to TensorBoard through tensorboardX, which is not installed: "
                                  "pip install 'tensorboardX>=2.6' (or reinstall jacuap)", name=exc.name) from None
    finally:
        if block:
            del sys.modules["torch"]
    return tensorboardX


def tag(name: str) -> str:
    """``name`` as TensorBoard keeps it: each character but a letter, digit, ``_ - . /`` made ``_``, no leading ``/``.

    >>> tag("uap/sgd_uap eps=0.1")
    'uap/sgd_uap_eps_0.1'
    """
    return re.sub(r"[^-/\w.]", "_", name).lstrip("/")


def _image_uint8(name: str, array: Any) -> np.ndarray:
    """``array`` (H x W, or H x W x C with C 1, 3 or 4; values in [0, 1], clipped) as H x W x C uint8."""
    a = np.asarray(array, np.float32)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[-1] not in (1, 3, 4) or not np.all(np.isfinite(a)):
        raise ValueError(f"image {name!r}: need finite values in H x W or H x W x C (C 1, 3 or 4), got shape "
                         f"{np.shape(array)}")
    return np.round(np.clip(a, 0.0, 1.0) * 255.0).astype(np.uint8)


class Writer:
    """A new event file in ``logdir`` (created), written by process 0; a context manager (exit: flush, close).

    Tags are written as :func:`tag` makes them.  ``purge_step``: see the
    module docstring.  ``label`` ends the file's name
    (``events.out.tfevents.<seconds>.<host>.<nanoseconds>[.<label>]``, unique
    and in creation order).
    """

    def __init__(self, logdir: str, purge_step: Optional[int] = None, label: str = ""):
        self._writer = None
        if io.is_primary():
            os.makedirs(logdir, exist_ok=True)
            suffix = f".{time.time_ns()}" + (f".{label}" if label else "")
            self._writer = _tensorboardx().SummaryWriter(logdir, purge_step=purge_step, filename_suffix=suffix,
                                                         flush_secs=30)

    def scalars(self, step: int, mapping: Mapping[str, Optional[float]]) -> None:
        """Each ``tag: value`` of ``mapping`` at ``step`` (stored as float32); None values are left out."""
        if self._writer is not None:
            for name, value in mapping.items():
                if value is not None:
                    self._writer.add_scalar(tag(name), float(value), int(step))

    def image(self, name: str, step: int, array: Any) -> None:
        """``array`` (H x W or H x W x C, C 1, 3 or 4, values in [0, 1]) as a PNG; grey is stored as RGB.

        Raises ValueError (one line) for another shape or a non-finite value.
        """
        pixels = _image_uint8(name, array)
        if self._writer is not None:
            self._writer.add_image(tag(name), pixels, int(step), dataformats="HWC")

    def text(self, name: str, step: int, string: str) -> None:
        """``string`` (markdown, as TensorBoard's text tab renders it) at ``step``."""
        if self._writer is not None:
            self._writer.add_text(tag(name), str(string), int(step))

    def flush(self) -> None:
        """Writes what is queued to the file now."""
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> "Writer":
        return self

    def __exit__(self, *exc) -> bool:
        self.close()
        return False


def scalars(logdir: str, step: int, mapping: Mapping[str, Optional[float]], purge_step: Optional[int] = None) -> None:
    """:meth:`Writer.scalars` in a new event file of ``logdir``."""
    with Writer(logdir, purge_step) as writer:
        writer.scalars(step, mapping)


def image(logdir: str, name: str, step: int, array: Any) -> None:
    """:meth:`Writer.image` in a new event file of ``logdir``."""
    with Writer(logdir) as writer:
        writer.image(name, step, array)


def text(logdir: str, name: str, step: int, string: str) -> None:
    """:meth:`Writer.text` in a new event file of ``logdir``."""
    with Writer(logdir) as writer:
        writer.text(name, step, string)


def event_files(logdir: str) -> List[str]:
    """The event files in ``logdir``, in name (creation) order; none if it does not exist."""
    if not os.path.isdir(logdir):
        return []
    return [os.path.join(logdir, n) for n in sorted(os.listdir(logdir)) if n.startswith(_PREFIX)]


def _records(path: str):
    """The records of a TFRecord file (length, its CRC, data, its CRC; CRCs not checked), a cut last one left out."""
    with open(path, "rb") as f:
        data = f.read()
    pos = 0
    while pos + 12 <= len(data):
        (length,) = struct.unpack("<Q", data[pos:pos + 8])
        end = pos + 12 + length + 4
        if end > len(data):
            return
        yield data[pos + 12:pos + 12 + length]
        pos = end


def _value(value) -> Tuple[str, Any]:
    """(tag, value) of a ``Summary.Value``: a float, an H x W x C uint8 array, a str, or the proto itself."""
    kind = value.WhichOneof("value")
    if kind == "simple_value":
        return value.tag, float(value.simple_value)
    if kind == "image":
        from PIL import Image

        return value.tag, np.asarray(Image.open(BytesIO(value.image.encoded_image_string)))
    if kind == "tensor" and value.metadata.plugin_data.plugin_name == "text":
        return value.tag.removesuffix(_TEXT_SUFFIX), value.tensor.string_val[0].decode("utf-8")
    return value.tag, value


def read(logdir: str) -> Dict[str, List[Tuple[int, Any]]]:
    """``{tag: [(step, value), ...]}`` of ``logdir``'s event files, as TensorBoard shows them.

    Files are read in name order; a restart marker (``purge_step``) drops
    every value read before it at a step ``>=`` its own.  A value is a float
    (a scalar), an H x W x 3 or 4 uint8 array (an image), or a str (a text,
    under the tag it was written with).
    """
    if not event_files(logdir):
        return {}
    _tensorboardx()  # first: its import skips torch
    from tensorboardX.proto import event_pb2

    found: Dict[str, List[Tuple[int, Any]]] = {}
    for path in event_files(logdir):
        for record in _records(path):
            event = event_pb2.Event.FromString(record)
            if event.HasField("session_log") and event.session_log.status == event_pb2.SessionLog.START:
                found = {t: [(s, v) for s, v in values if s < event.step] for t, values in found.items()}
                found = {t: values for t, values in found.items() if values}
            for value in event.summary.value:
                name, v = _value(value)
                found.setdefault(name, []).append((int(event.step), v))
    return found
