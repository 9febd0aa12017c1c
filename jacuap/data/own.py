"""Your own data: ``npz:PATH`` (NumPy arrays) and ``folder:PATH[@HxW]`` (one sub-folder per class).

:func:`jacuap.data.load_dataset` hands a name starting with ``npz:`` or
``folder:`` to :func:`load_own`; the readers are :mod:`jacuap.data.npz` and
:mod:`jacuap.data.folder`.  The rules both share:

* Paths: ``~`` is expanded and a relative ``PATH`` is taken from the current
  folder and made absolute (:func:`canonical_name`), so a workdir trained on
  ``npz:data/mine.npz`` records ``npz:/abs/data/mine.npz`` and ``attack.py``
  finds the file from any folder.  ``data_dir`` is not used.
* Images become ``float32[N, H, W, C]`` (NHWC) in ``[0, 1]``: ``uint8`` pixels
  ``p`` as ``p / 255``, floats as they are (every value must lie in ``[0, 1]``).
* Labels are integers ``0 .. K-1``; ``K = len(class_names)`` when the data
  names its classes, else ``max(label) + 1`` over both splits; ``K >= 2``.
* Split: data that carries its own train/test split keeps it.  Otherwise
  ``perm = np.random.default_rng(seed).permutation(N)``, ``n_test =
  ceil(N / 5)`` (20%), the test split is ``perm[:n_test]`` and the training
  split ``perm[n_test:]`` (the rule of ``digits``: 1797 images give 1437/360).
  The same file and seed give the same split; another seed, another split.
* ``Dataset.source`` names the absolute path, a content fingerprint (sha256 of
  the file, or of the folder's image paths and bytes: a changed file shows)
  and the split.

>>> canonical_name("npz:/data/mine.npz"), canonical_name("digits")
('npz:/data/mine.npz', 'digits')
>>> split_indices(10, seed=0)
(array([2, 7, 3, 5, 9, 0, 8, 1]), array([4, 6]))
"""

from __future__ import annotations

import os
import re
from typing import Dict, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from jacuap.data.dataset import Dataset
from jacuap.errors import DataError

__all__ = ["OWN_FORMS", "OwnSpec", "Read", "canonical_name", "is_own", "load_own", "own_problem", "parse_own",
           "split_indices", "to_float_images"]

#: The prefixes of your own datasets, and what follows each.
OWN_FORMS = {"npz": "npz:PATH (a .npz file)", "folder": "folder:PATH[@HxW] (one sub-folder per class)"}
#: Data without a split puts ``ceil(N / TEST_DIVISOR)`` of its ``N`` images in the test split (20%).
TEST_DIVISOR = 5
#: The largest side ``folder:PATH@HxW`` may ask for.
MAX_SIDE = 4096

_SIZE = re.compile(r"@(\d+)x(\d+)$")


class Read(NamedTuple):
    """What a reader gives :func:`load_own`.

    ``arrays``: either ``x``, ``y`` or ``x_train``, ``y_train``, ``x_test``,
    ``y_test``; ``names``: how errors name each array (e.g. ``"array 'x'"``);
    ``class_names``: the classes' names or None; ``digest``: the content's
    sha256 in hex; ``details``: extra phrases for ``Dataset.source``.
    """

    arrays: Dict[str, np.ndarray]
    names: Dict[str, str]
    class_names: Optional[Tuple[str, ...]]
    digest: str
    details: Tuple[str, ...] = ()


class OwnSpec(NamedTuple):
    """A parsed ``npz:``/``folder:`` name: ``kind`` (``"npz"``/``"folder"``), the absolute ``path``, and
    ``size``, the ``(H, W)`` of ``folder:PATH@HxW`` (None: keep the images' own size)."""

    kind: str
    path: str
    size: Optional[Tuple[int, int]] = None


def is_own(name) -> bool:
    """Whether ``name`` is of the form ``npz:...`` or ``folder:...`` (prefix in any case).

    >>> is_own("npz:x.npz"), is_own("Folder:imgs"), is_own("mnist"), is_own(3)
    (True, True, False, False)
    """
    return isinstance(name, str) and name.split(":", 1)[0].strip().lower() in OWN_FORMS and ":" in name


def parse_own(name: str) -> OwnSpec:
    """``name`` as an :class:`OwnSpec` (touches nothing on disk).

    ``folder:PATH@HxW`` asks for every image resized to ``H`` rows by ``W``
    columns; the ``@HxW`` suffix is read only at the very end of the name.

    >>> parse_own("folder:/data/pets@32x48")
    OwnSpec(kind='folder', path='/data/pets', size=(32, 48))
    >>> parse_own("npz:")
    Traceback (most recent call last):
    jacuap.errors.DataError: dataset 'npz:' names no path; write npz:PATH (a .npz file)
    """
    prefix, rest = name.split(":", 1)
    kind, rest = prefix.strip().lower(), rest.strip()
    size = None
    match = _SIZE.search(rest) if kind == "folder" else None
    if match is not None:
        size = (int(match.group(1)), int(match.group(2)))
        rest = rest[: match.start()]
        if not all(1 <= s <= MAX_SIDE for s in size):
            raise DataError(f"dataset {name!r}: the size @HxW must have H and W in 1..{MAX_SIDE}, got {size}")
    elif kind == "npz" and _SIZE.search(rest):
        raise DataError(f"dataset {name!r}: npz arrays are not resized; drop the @HxW suffix")
    if not rest.strip():
        raise DataError(f"dataset {name!r} names no path; write {OWN_FORMS[kind]}")
    return OwnSpec(kind, os.path.abspath(os.path.expanduser(rest)), size)


def canonical_name(name):
    """``name`` with the path of an ``npz:``/``folder:`` form made absolute; any other name unchanged.

    What a run records (``config.json``, the checkpoint), so that the data is
    found again from another folder.  A relative path is taken from the
    current folder.  Nothing is read.

    >>> canonical_name("folder:~/pets@32x32") == "folder:" + os.path.expanduser("~/pets") + "@32x32"
    True
    """
    if not is_own(name):
        return name
    spec = parse_own(name)
    return f"{spec.kind}:{spec.path}" + ("" if spec.size is None else f"@{spec.size[0]}x{spec.size[1]}")


def own_problem(name: str) -> Optional[str]:
    """The one-line reason ``name`` (an ``npz:``/``folder:`` form) cannot load, or None if its path is there.

    Checks the form and that the path exists (a file for ``npz:``, a folder for
    ``folder:``) and is readable; the content is checked when it loads.

    >>> own_problem("npz:/no/such/file.npz")
    "dataset 'npz:/no/such/file.npz': no file /no/such/file.npz"
    """
    try:
        spec = parse_own(name)
    except DataError as exc:
        return str(exc)
    is_there = os.path.isfile if spec.kind == "npz" else os.path.isdir
    if not is_there(spec.path):
        what = "file" if spec.kind == "npz" else "folder"
        return f"dataset {name!r}: no {what} {spec.path}"
    if not os.access(spec.path, os.R_OK | (os.X_OK if spec.kind == "folder" else 0)):
        return f"dataset {name!r}: {spec.path} is not readable"
    return None


def split_indices(n: int, seed: int, where: str = "the data") -> Tuple[np.ndarray, np.ndarray]:
    """``(train, test)`` indices of ``n`` images without a split: ``perm[ceil(n/5):]``, ``perm[:ceil(n/5)]``.

    ``perm = np.random.default_rng(seed).permutation(n)``; needs ``n >= 2``.
    """
    if n < 2:
        raise DataError(f"{where} holds {n} image(s); at least 2 are needed to split train and test")
    perm = np.random.default_rng(seed).permutation(n)
    n_test = -(-n // TEST_DIVISOR)  # ceil in integers: 15 * 0.2 is 3.0000000000000004 in floats
    return perm[n_test:], perm[:n_test]


def to_float_images(x: np.ndarray, what: str) -> np.ndarray:
    """``x`` as ``float32[N, H, W, C]`` in ``[0, 1]``; ``what`` names the array in errors.

    ``uint8`` pixels ``p`` become ``p / 255``; float arrays must hold values in
    ``[0, 1]`` and are kept.  Shapes ``(N, H, W)`` (then ``C = 1``) and
    ``(N, H, W, C)`` with ``C`` in ``{1, 3}`` (NHWC) are accepted.

    >>> to_float_images(np.array([[[0, 255]]], np.uint8), "x").tolist()
    [[[[0.0], [1.0]]]]
    >>> to_float_images(np.full((1, 2, 2), 3.0), "x")
    Traceback (most recent call last):
    jacuap.errors.DataError: x holds values in [3, 3]; float images must lie in [0, 1] (uint8 ones are divided by 255)
    """
    shape = x.shape
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        hint = ""
        if x.ndim == 4 and x.shape[1] in (1, 3):
            hint = " (this looks like NCHW: save x.transpose(0, 2, 3, 1))"
        raise DataError(f"{what} has shape {shape}; images must be (N, H, W) or (N, H, W, C) with C 1 or 3 "
                        f"(NHWC){hint}")
    if 0 in shape:
        raise DataError(f"{what} has shape {shape}: no images")
    if x.dtype == np.uint8:
        out = x.astype(np.float32)
        np.divide(out, np.float32(255), out=out)  # 255 -> exactly 1
        return out
    if x.dtype.kind != "f":
        raise DataError(f"{what} has dtype {x.dtype}; images must be uint8 (0..255) or float in [0, 1]")
    lo, hi = float(np.min(x)), float(np.max(x))
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo < 0 or hi > 1:
        raise DataError(f"{what} holds values in [{lo:g}, {hi:g}]; float images must lie in [0, 1] "
                        "(uint8 ones are divided by 255)")
    return np.ascontiguousarray(x, dtype=np.float32)


def _labels(y: np.ndarray, what: str, n: int) -> np.ndarray:
    """``y`` checked as ``n`` non-negative integer labels, as ``int32``."""
    if y.dtype.kind not in "iu":
        raise DataError(f"{what} has dtype {y.dtype}; labels must be integers 0..K-1 (save y.astype(int))")
    if y.ndim != 1 or len(y) != n:
        raise DataError(f"{what} has shape {y.shape}; it must be ({n},), one label per image")
    if n and int(y.min()) < 0:
        raise DataError(f"{what} holds the negative label {int(y.min())}; labels must be 0..K-1")
    if n and int(y.max()) >= 2**31:
        raise DataError(f"{what} holds the label {int(y.max())}; labels must be 0..K-1")
    return y.astype(np.int32)


def _class_names(names: Optional[Sequence[str]], k_seen: int, where: str) -> Tuple[Tuple[str, ...], int]:
    """``(class_names, K)``: the given names (checked against the labels seen) or ``"0" .. "K-1"``."""
    if names is None:
        k = k_seen
        names = tuple(str(c) for c in range(k))
    else:
        names, k = tuple(names), len(names)
        if k_seen > k:
            raise DataError(f"{where}: a label is {k_seen - 1} but class_names names {k} classes (0..{k - 1})")
        if len(set(names)) != k:
            dup = next(c for c in names if names.count(c) > 1)
            raise DataError(f"{where}: class_names names {dup!r} twice")
    if k < 2:
        raise DataError(f"{where}: the labels give {k} class(es); a classifier needs at least 2")
    return names, k


def load_own(name: str, seed: int) -> Dataset:
    """The :class:`Dataset` of ``npz:PATH`` or ``folder:PATH[@HxW]`` (rules: the module's docstring).

    Raises:
      DataError: a missing path, an unreadable file, an array or image that
        breaks the rules (one line naming it).
    """
    from jacuap.data import folder, npz  # readers import this module's helpers

    problem = own_problem(name)
    if problem is not None:
        raise DataError(problem)
    spec = parse_own(name)
    canonical = canonical_name(name)
    if spec.kind == "npz":
        read = npz.read_npz(spec.path)
    else:
        read = folder.read_folder(spec.path, spec.size)
    arrays: Dict[str, np.ndarray] = read.arrays
    where = f"{spec.kind} {spec.path}"
    if "x" in arrays:
        x = to_float_images(arrays["x"], f"{where}: {read.names['x']}")
        y = _labels(arrays["y"], f"{where}: {read.names['y']}", len(x))
        train, test = split_indices(len(x), seed, where)
        parts = (x[train], y[train], x[test], y[test])
        split = f"split seed {seed}: {len(train)} train / {len(test)} test"
    else:
        xs = {s: to_float_images(arrays[f"x_{s}"], f"{where}: {read.names[f'x_{s}']}") for s in ("train", "test")}
        ys = {s: _labels(arrays[f"y_{s}"], f"{where}: {read.names[f'y_{s}']}", len(xs[s])) for s in xs}
        if xs["train"].shape[1:] != xs["test"].shape[1:]:
            raise DataError(f"{where}: train images have shape {xs['train'].shape[1:]}, test images "
                            f"{xs['test'].shape[1:]}; both splits need one shape")
        parts = (xs["train"], ys["train"], xs["test"], ys["test"])
        split = f"its own split: {len(parts[0])} train / {len(parts[2])} test"
    k_seen = 1 + max(int(parts[1].max()), int(parts[3].max()))
    class_names, k = _class_names(read.class_names, k_seen, where)
    h, w, c = parts[0].shape[1:]
    detail = "".join(f", {d}" for d in read.details)
    return Dataset(canonical, *parts, num_classes=k, label_names=class_names,
                   source=f"{where} (sha256:{read.digest[:12]}, {h}x{w}x{c}{detail}, {split})")
