"""``folder:PATH[@HxW]``: images in one sub-folder per class, read with Pillow (:func:`read_folder`).

Layout (torchvision's ImageFolder): ``PATH/<class>/<image>``, images at any
depth below their class folder.  The class names are the sorted sub-folder
names, label ``k`` the ``k``-th of them.  ``PATH/train/<class>/...`` with
``PATH/test/<class>/...`` is a train/test split that is kept (the classes
are ``train``'s; ``test`` may lack some, not add any); without it the images
are split 80/20 by the seed (:func:`jacuap.data.own.split_indices`).

* Files read: the extensions in :data:`IMAGE_EXTENSIONS` (any case); other
  files, and names starting with ``.`` (``.ipynb_checkpoints``, ``.DS_Store``),
  are skipped.  A GIF gives its first frame.
* Colour: every image is converted to RGB (palette, CMYK, grey; an alpha
  channel is dropped, not composited).  When every pixel of every image then
  has ``R = G = B`` the dataset is greyscale, ``C = 1``; else ``C = 3``.
  16-bit and float images (Pillow modes ``I``, ``I;16``, ``F``) are refused.
* Size: ``folder:PATH@HxW`` resizes every image to ``H`` rows by ``W`` columns
  (bilinear, antialiased when shrinking; the aspect ratio is not kept).
  Without ``@HxW`` every image must already share one size, which is kept;
  images of different sizes are an error that suggests ``@HxW``.
* Pixels are ``uint8`` (later ``p / 255``).  The fingerprint is the sha256 of
  every image's path (relative to ``PATH``) and bytes, in reading order.
"""

from __future__ import annotations

import hashlib
import io
import os
from typing import List, Optional, Tuple

import numpy as np

from jacuap.data.own import Read
from jacuap.errors import DataError

__all__ = ["IMAGE_EXTENSIONS", "read_folder"]

#: The file extensions read as images (compared in lower case).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm",
                    ".pnm")
_WIDE_MODES = ("I", "F")  # and every "I;16..." mode


def _subfolders(path: str) -> List[str]:
    """The sorted non-hidden sub-folders of ``path``."""
    try:
        names = os.listdir(path)
    except OSError as exc:
        raise DataError(f"folder {path} cannot be listed ({exc.strerror or exc})") from None
    return sorted(n for n in names if not n.startswith(".") and os.path.isdir(os.path.join(path, n)))


def _image_files(class_dir: str) -> List[str]:
    """The image files below ``class_dir`` at any depth, in sorted order."""
    found = []
    for root, dirs, files in os.walk(class_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [os.path.join(root, f) for f in sorted(files)
                  if not f.startswith(".") and os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS]
    return found


def _read_image(file: str, size: Optional[Tuple[int, int]]) -> Tuple[bytes, np.ndarray]:
    """``(bytes, uint8[H, W, 3])`` of one image file, resized to ``size = (H, W)`` if given."""
    from PIL import Image  # lazy: only folder datasets need Pillow

    try:
        with open(file, "rb") as f:
            raw = f.read()
        with Image.open(io.BytesIO(raw)) as im:
            if im.mode in _WIDE_MODES or im.mode.startswith("I;"):
                raise DataError(f"image {file} is {im.mode} (16-bit or float); save it as 8-bit (L or RGB)")
            rgb = im.convert("RGB")
    except DataError:
        raise
    except Exception as exc:  # Pillow raises many kinds (UnidentifiedImageError, SyntaxError, bombs)
        reason = str(exc).splitlines()[0] if str(exc) else ""
        raise DataError(f"image {file} cannot be read ({type(exc).__name__}: {reason})") from None
    if size is not None and (rgb.height, rgb.width) != size:
        rgb = rgb.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    return raw, np.asarray(rgb, dtype=np.uint8)


def _read_split(path: str, root: str, classes: List[str], digest, size) -> Tuple[List[np.ndarray], List[int],
                                                                                   List[str]]:
    """Images, labels and files of the class folders of ``root`` (labels by ``classes``)."""
    images, labels, files = [], [], []
    for folder in _subfolders(root):
        if folder not in classes:
            raise DataError(f"folder {root} has the class folder {folder!r}, which {path}/train lacks; "
                            "a test class must be a training class too")
        found = _image_files(os.path.join(root, folder))
        if not found:
            raise DataError(f"folder {os.path.join(root, folder)} holds no images "
                            f"({', '.join(IMAGE_EXTENSIONS[:6])}, ...)")
        for file in found:
            raw, pixels = _read_image(file, size)
            digest.update(os.path.relpath(file, path).replace(os.sep, "/").encode() + b"\0")
            digest.update(hashlib.sha256(raw).digest())
            images.append(pixels)
            labels.append(classes.index(folder))
            files.append(file)
    return images, labels, files


def read_folder(path: str, size: Optional[Tuple[int, int]] = None) -> Read:
    """The images of the folder ``path`` as ``uint8`` arrays (rules: the module docstring).

    Returns a :class:`jacuap.data.own.Read` with ``x``/``y`` or the four
    ``x_train`` ... ``y_test`` arrays, the class names and the fingerprint.

    Raises:
      DataError: no class sub-folders, an empty class folder, an unreadable
        image, images of different sizes without ``@HxW`` (one line naming
        the folder or file).

    >>> import tempfile
    >>> from PIL import Image
    >>> root = tempfile.mkdtemp()
    >>> for cls, value in (("cat", 0), ("dog", 255)):
    ...     os.makedirs(os.path.join(root, cls))
    ...     for i in range(3):
    ...         Image.new("L", (5, 4), value).save(os.path.join(root, cls, f"{i}.png"))
    >>> read = read_folder(root)
    >>> read.arrays["x"].shape, read.arrays["y"].tolist(), read.class_names
    ((6, 4, 5, 1), [0, 0, 0, 1, 1, 1], ('cat', 'dog'))
    >>> read_folder(root, size=(8, 8)).arrays["x"].shape
    (6, 8, 8, 1)
    """
    top = _subfolders(path)
    has = [s for s in ("train", "test") if s in top]
    if len(has) == 1:
        other = "test" if has == ["train"] else "train"
        raise DataError(f"folder {path} has {has[0]}/ but no {other}/; give both for a fixed split, "
                        f"or rename the {has[0]!r} class folder")
    roots = {"train": os.path.join(path, "train"), "test": os.path.join(path, "test")} if has else {"": path}
    classes = _subfolders(roots["train"] if has else path)
    if not classes:
        where = roots["train"] if has else path
        raise DataError(f"folder {where} has no class sub-folders; put the images of each class in "
                        f"their own folder, e.g. {os.path.join(where, 'cat', '1.png')}")
    digest = hashlib.sha256()
    read = {split: _read_split(path, root, classes, digest, size) for split, root in roots.items()}
    every = [(img, file) for images, _, files in read.values() for img, file in zip(images, files)]
    if not every:
        raise DataError(f"folder {path} holds no images")
    first_img, first_file = every[0]
    for img, file in every:
        if img.shape != first_img.shape:
            raise DataError(f"folder {path}: {first_file} is {first_img.shape[0]}x{first_img.shape[1]} but "
                            f"{file} is {img.shape[0]}x{img.shape[1]}; resize all with folder:{path}@HxW "
                            "(e.g. @32x32)")
    grey = all(np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(img[..., 1], img[..., 2])
               for img, _ in every)
    arrays, names = {}, {}
    for split, (images, labels, _) in read.items():
        suffix = f"_{split}" if split else ""
        x = np.stack(images) if images else np.zeros((0,) + first_img.shape, np.uint8)
        arrays["x" + suffix] = x[..., :1] if grey else x
        arrays["y" + suffix] = np.asarray(labels, np.int64)
        names["x" + suffix] = f"the images of {roots[split]}"
        names["y" + suffix] = f"the labels of {roots[split]}"
    details = (f"{len(every)} images",) + (() if size is None else (f"resized to {size[0]}x{size[1]}",))
    return Read(arrays, names, tuple(classes), digest.hexdigest(), details)
