"""Your own data: ``npz:PATH`` and ``folder:PATH[@HxW]`` (jacuap.data.own, npz, folder), and the ``seed`` check."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from jacuap import configs, data
from jacuap.configs import default
from jacuap.data import own
from jacuap.errors import ConfigError, DataError


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


def _xy(n=50, shape=(6, 5), k=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n,) + shape, dtype=np.uint8), np.arange(n) % k


# --- npz -------------------------------------------------------------------------------------------------------------

def test_npz_xy_is_split_80_20_by_the_seed(tmp_path):
    x, y = _xy(50)
    path = _npz(tmp_path / "d.npz", x=x, y=y, class_names=np.array(["a", "b", "c"]))
    ds = data.load_dataset(f"npz:{path}", seed=3)
    assert ds.name == f"npz:{path}"
    assert ds.train_images.shape == (40, 6, 5, 1) and ds.test_images.shape == (10, 6, 5, 1)
    assert ds.num_classes == 3 and ds.class_names == ("a", "b", "c")
    perm = np.random.default_rng(3).permutation(50)
    np.testing.assert_array_equal(ds.test_images[..., 0], x[perm[:10]] / np.float32(255))
    np.testing.assert_array_equal(ds.train_labels, y[perm[10:]])
    assert ds.train_images.dtype == np.float32 and ds.train_images.max() <= 1
    # Every image lands in exactly one split.
    assert sorted(ds.train_labels.tolist() + ds.test_labels.tolist()) == sorted(y.tolist())
    assert ds.source.startswith(f"npz {path} (sha256:") and "split seed 3: 40 train / 10 test" in ds.source
    again = data.load_dataset(f"npz:{path}", seed=3)
    np.testing.assert_array_equal(again.test_labels, ds.test_labels)
    other = data.load_dataset(f"npz:{path}", seed=4)
    assert not np.array_equal(other.test_images, ds.test_images)


@pytest.mark.parametrize("n, n_test", [(2, 1), (5, 1), (6, 2), (15, 3), (1797, 360)])
def test_split_puts_ceil_n_over_5_in_test(n, n_test):
    train, test = own.split_indices(n, seed=1)
    assert len(test) == n_test and sorted(train.tolist() + test.tolist()) == list(range(n))


def test_npz_own_split_is_kept_and_floats_and_rgb_pass(tmp_path):
    rng = np.random.default_rng(0)
    xtr, xte = rng.random((7, 4, 4, 3)), rng.random((3, 4, 4, 3)).astype(np.float32)
    path = _npz(tmp_path / "s.npz", x_train=xtr, y_train=np.array([0, 1, 2, 3, 0, 1, 2]),
                x_test=xte, y_test=np.array([3, 2, 1], np.uint8), extra=np.zeros(2))
    ds = data.load_dataset(f"npz:{path}", seed=0)
    np.testing.assert_array_equal(ds.train_images, xtr.astype(np.float32))
    np.testing.assert_array_equal(ds.test_images, xte)
    assert ds.test_labels.tolist() == [3, 2, 1] and ds.test_labels.dtype == np.int32
    assert ds.num_classes == 4 and ds.class_names == ("0", "1", "2", "3") and ds.image_shape == (4, 4, 3)
    assert "its own split: 7 train / 3 test" in ds.source


def test_npz_relative_path_is_made_absolute(tmp_path, monkeypatch):
    x, y = _xy(10)
    os.makedirs(tmp_path / "sub")
    _npz(tmp_path / "sub" / "r.npz", x=x, y=y)
    monkeypatch.chdir(tmp_path)
    ds = data.load_dataset("npz:sub/r.npz")
    assert ds.name == "npz:" + str(tmp_path / "sub" / "r.npz")
    assert data.canonical_name("npz:sub/r.npz") == ds.name
    assert data.canonical_name("NPZ:~/r.npz") == "npz:" + os.path.expanduser("~/r.npz")
    assert data.canonical_name("fashion-mnist") == "fashion-mnist"


def test_npz_fingerprint_changes_with_the_file(tmp_path):
    x, y = _xy(10)
    path = _npz(tmp_path / "f.npz", x=x, y=y)
    before = data.load_dataset(f"npz:{path}").source
    x[0, 0, 0] ^= 1
    _npz(path, x=x, y=y)
    assert data.load_dataset(f"npz:{path}").source != before


_X, _Y = _xy(10)


@pytest.mark.parametrize("arrays, message", [
    (dict(x=_X.astype(np.float32), y=_Y), r"array 'x' holds values in \[0, 255\]; float images must lie in \[0, 1\]"),
    (dict(x=np.full((4, 2, 2), np.nan), y=np.arange(4) % 2), r"array 'x' holds values in \[nan, nan\]"),
    (dict(x=_X.astype(np.int64), y=_Y), "array 'x' has dtype int64; images must be uint8"),
    (dict(x=_X, y=_Y.astype(float)), "array 'y' has dtype float64; labels must be integers"),
    (dict(x=_X, y=_Y - 1), "array 'y' holds the negative label -1"),
    (dict(x=_X, y=_Y[:9]), r"array 'y' has shape \(9,\); it must be \(10,\)"),
    (dict(x=_X[:0], y=_Y[:0]), r"array 'x' has shape \(0, 6, 5\): no images"),
    (dict(x=_X[:1], y=_Y[:1]), "at least 2 are needed"),
    (dict(x=np.zeros((4, 3, 8, 8), np.uint8), y=np.arange(4) % 2), "looks like NCHW"),
    (dict(x=np.zeros((4, 8, 8, 2), np.uint8), y=np.arange(4) % 2), "C 1 or 3"),
    (dict(x=_X, y=_Y * 0), "the labels give 1 class"),
    (dict(x=_X, y=_Y, class_names=np.array(["a", "b"])), "a label is 2 but class_names names 2 classes"),
    (dict(x=_X, y=_Y, class_names=np.array(["a", "b", "a"])), "class_names names 'a' twice"),
    (dict(x=_X, y=_Y, class_names=np.arange(3)), "class_names must be a 1-D array of strings"),
    (dict(x=np.array([None] * 4, object), y=np.arange(4)), "array 'x' holds Python objects"),
    (dict(images=_X, labels=_Y), "needs arrays x and y .* it has: images, labels"),
    (dict(x_train=_X, y_train=_Y, x_test=_X), "has x_train, y_train, x_test but not y_test"),
    (dict(x=_X, y=_Y, x_train=_X, y_train=_Y, x_test=_X, y_test=_Y), "has both x/y and"),
    (dict(x_train=_X, y_train=_Y, x_test=_X[:, :3], y_test=_Y), "both splits need one shape"),
])
def test_npz_mistakes_are_one_line_data_errors(tmp_path, arrays, message):
    path = _npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=message) as info:
        data.load_dataset(f"npz:{path}")
    assert "\n" not in str(info.value) and path in str(info.value)


def test_npz_files_that_are_no_archive(tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"not a zip file at all")
    with pytest.raises(DataError, match="junk.npz is not a readable .npz archive"):
        data.load_dataset(f"npz:{tmp_path / 'junk.npz'}")
    np.save(tmp_path / "one.npy", _X)
    os.rename(tmp_path / "one.npy", tmp_path / "one.npz")
    with pytest.raises(DataError, match="is a single .npy array, not a .npz archive"):
        data.load_dataset(f"npz:{tmp_path / 'one.npz'}")
    with pytest.raises(DataError, match=f"dataset 'npz:{tmp_path}/nope.npz': no file {tmp_path}/nope.npz"):
        data.load_dataset(f"npz:{tmp_path}/nope.npz")
    with pytest.raises(DataError, match="npz arrays are not resized"):
        data.load_dataset(f"npz:{tmp_path}/x.npz@8x8")


# --- folder ----------------------------------------------------------------------------------------------------------

def _images(root, counts, size=(5, 4), mode="L", value=lambda cls, i: 40 * i):
    """``counts = {class: n}`` images of ``size = (W, H)`` under ``root/class/``."""
    for c, (cls, n) in enumerate(sorted(counts.items())):
        os.makedirs(root / cls, exist_ok=True)
        for i in range(n):
            color = value(c, i) if mode == "L" else (value(c, i), 0, 255)
            Image.new(mode, size, color).save(root / cls / f"{i}.png")


def test_folder_classes_are_sorted_sub_folders_and_grey_gives_one_channel(tmp_path):
    _images(tmp_path, {"zebra": 4, "ant": 6})
    os.makedirs(tmp_path / ".ipynb_checkpoints" / "x")
    Image.new("L", (5, 4)).save(tmp_path / ".ipynb_checkpoints" / "x" / "0.png")
    (tmp_path / "ant" / "notes.txt").write_text("not an image")
    os.makedirs(tmp_path / "ant" / "deeper")
    Image.new("RGB", (5, 4), (7, 7, 7)).save(tmp_path / "ant" / "deeper" / "g.jpg")  # grey, saved as RGB
    ds = data.load_dataset(f"folder:{tmp_path}", seed=0)
    assert ds.class_names == ("ant", "zebra") and ds.num_classes == 2
    assert ds.image_shape == (4, 5, 1)
    assert len(ds.train_images) + len(ds.test_images) == 11 and len(ds.test_images) == 3
    labels = sorted(ds.train_labels.tolist() + ds.test_labels.tolist())
    assert labels == [0] * 7 + [1] * 4
    assert "11 images" in ds.source and f"folder {tmp_path} (sha256:" in ds.source


def test_folder_colour_and_resize(tmp_path):
    _images(tmp_path, {"a": 3, "b": 3}, mode="RGB", size=(6, 6))
    Image.new("L", (10, 3), 128).save(tmp_path / "a" / "odd.png")
    with pytest.raises(DataError, match=r"is 6x6 but .*odd.png is 3x10; resize all with folder:.*@HxW"):
        data.load_dataset(f"folder:{tmp_path}")
    ds = data.load_dataset(f"folder:{tmp_path}@4x8")
    assert ds.image_shape == (4, 8, 3) and ds.name == f"folder:{tmp_path}@4x8"
    assert "resized to 4x8" in ds.source
    every = np.concatenate([ds.train_images, ds.test_images])
    # Flat images stay flat through the bilinear resize: blue 255 in the six RGB ones, grey 128 in odd.png.
    assert sorted(np.unique(every[..., 2]).tolist()) == [np.float32(128 / 255), 1.0]
    assert (every[..., 2] == 1.0).all(axis=(1, 2)).sum() == 6


def test_folder_train_test_split_is_kept(tmp_path):
    _images(tmp_path / "train", {"cat": 3, "dog": 2})
    _images(tmp_path / "test", {"dog": 2})
    ds = data.load_dataset(f"folder:{tmp_path}", seed=5)
    assert ds.train_labels.tolist() == [0, 0, 0, 1, 1] and ds.test_labels.tolist() == [1, 1]
    assert ds.class_names == ("cat", "dog") and "its own split: 5 train / 2 test" in ds.source
    _images(tmp_path / "test", {"emu": 1})
    with pytest.raises(DataError, match="has the class folder 'emu', which .*/train lacks"):
        data.load_dataset(f"folder:{tmp_path}")


@pytest.mark.parametrize("make, message", [
    (lambda root: _images(root / "train", {"a": 1, "b": 1}), "has train/ but no test/"),
    (lambda root: (root / "flat.png").write_bytes(b""), "has no class sub-folders"),
    (lambda root: (_images(root, {"a": 2}), os.makedirs(root / "b")), "b holds no images"),
    (lambda root: (_images(root, {"a": 2, "b": 1}), (root / "b" / "bad.png").write_bytes(b"junk")),
     r"image .*bad.png cannot be read \(UnidentifiedImageError"),
    (lambda root: (_images(root, {"a": 2, "b": 1}), Image.new("I;16", (5, 4)).save(root / "b" / "w.png")),
     "is I;16 .*save it as 8-bit"),
])
def test_folder_mistakes_are_one_line_data_errors(tmp_path, make, message):
    make(tmp_path)
    with pytest.raises(DataError, match=message) as info:
        data.load_dataset(f"folder:{tmp_path}")
    assert "\n" not in str(info.value)


def test_folder_fingerprint_sees_a_changed_image(tmp_path):
    _images(tmp_path, {"a": 2, "b": 2})
    before = data.load_dataset(f"folder:{tmp_path}").source
    Image.new("L", (5, 4), 3).save(tmp_path / "b" / "1.png")
    assert data.load_dataset(f"folder:{tmp_path}").source != before


def test_folder_size_suffix_is_checked(tmp_path):
    with pytest.raises(DataError, match=r"H and W in 1..4096, got \(0, 8\)"):
        data.load_dataset(f"folder:{tmp_path}@0x8")
    with pytest.raises(DataError, match="names no path"):
        data.load_dataset("folder:@8x8")
    with pytest.raises(DataError, match=f"no folder {tmp_path}/nope"):
        data.load_dataset(f"folder:{tmp_path}/nope")


# --- seed, config validation, class names through the validation split ---------------------------------------------

@pytest.mark.parametrize("seed", [-1, True, 1.5, "0", None])
def test_seed_must_be_a_non_negative_integer(seed):
    with pytest.raises(DataError, match=r"^seed must be a non-negative integer, got "):
        data.load_dataset("digits", seed=seed)


def test_validate_accepts_own_forms_and_names_a_missing_path(tmp_path):
    x, y = _xy(10)
    path = _npz(tmp_path / "ok.npz", x=x, y=y)
    configs.validate(configs.override(default.get_config(), dataset=f"npz:{path}"))
    configs.validate(configs.override(default.get_config(), dataset=f"folder:{tmp_path}@8x8"))
    with pytest.raises(ConfigError, match=f"^dataset 'npz:{tmp_path}/missing.npz': no file {tmp_path}/missing.npz$"):
        configs.validate(configs.override(default.get_config(), dataset=f"npz:{tmp_path}/missing.npz"))
    with pytest.raises(ConfigError, match=f"no folder {path}"):
        configs.validate(configs.override(default.get_config(), dataset=f"folder:{path}"))
    with pytest.raises(ConfigError, match="unknown dataset 'imagenet'; choose one of digits, .*, or your own: npz:"):
        configs.validate(configs.override(default.get_config(), dataset="imagenet"))


def test_class_names_survive_the_validation_split(tmp_path):
    x, y = _xy(30)
    path = _npz(tmp_path / "v.npz", x=x, y=y, class_names=np.array([b"r", b"s", b"t"]))
    ds = data.load_dataset(f"npz:{path}", num_validation=4)
    assert ds.class_names == ("r", "s", "t") and len(ds.validation_images) == 4


# --- end to end: train.py's library call, then an attack run from another folder ------------------------------------

@pytest.mark.slow
def test_npz_dataset_trains_and_is_attacked_from_another_folder(tmp_path, monkeypatch):
    from jacuap import evaluation, train

    rng = np.random.default_rng(0)
    y = np.arange(200) % 3
    x = (rng.random((200, 8, 8)) * 0.3 + y[:, None, None] * 0.3).astype(np.float32)  # separable by brightness
    os.makedirs(tmp_path / "here" / "data")
    _npz(tmp_path / "here" / "data" / "mine.npz", x=x, y=y, class_names=np.array(["dark", "mid", "light"]))
    monkeypatch.chdir(tmp_path / "here")
    config = default.get_config()
    config.update(dataset="npz:data/mine.npz", model="mlp", num_epochs=1,
                  batch_size=32, eval_num_inputs=20, progress=False)
    summary = train.train_and_evaluate(config, "run")
    absolute = "npz:" + str(tmp_path / "here" / "data" / "mine.npz")
    assert summary["dataset"] == absolute and config.dataset == "npz:data/mine.npz"  # the caller's config untouched
    assert json.load(open(tmp_path / "here" / "run" / "config.json"))["dataset"] == absolute
    assert "split seed 0: 160 train / 40 test" in summary["data_source"]

    os.makedirs(tmp_path / "elsewhere")
    monkeypatch.chdir(tmp_path / "elsewhere")
    results = evaluation.run_attacks(evaluation.AttackRequest(
        workdir=str(tmp_path / "here" / "run"), attacks=["sgd_uap"], norm="linf", eps=[0.1], out="att",
        num_craft=40, num_eval=40, num_metrics=0, sgd_epochs=1, progress=False, targeted=True))
    assert results["config"]["dataset"] == absolute
    assert results["config"]["class_names"] == ["dark", "mid", "light"]
    assert results["config"]["num_eval"] == 40
    assert [r["attack"] for r in results["results"]] == ["sgd_uap"]
    assert 0 <= results["results"][0]["uer"] <= 1
    assert [m["class_names"] for m in results["targeted"]] == [["dark", "mid", "light"]]
    assert (tmp_path / "elsewhere" / "att" / "results.json").exists()
