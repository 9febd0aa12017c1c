"""Tests for jacuap.data.dataset: the Dataset container, Splits and the DATASETS registry."""

import dataclasses

import numpy as np
import pytest

from datafiles import assert_one_line
from jacuap import data, errors
from jacuap.data import DATASETS, Dataset, DataError


def _toy(name="toy", num_classes=3, train=(4, 2, 2, 1), test=(2, 2, 2, 1), **overrides):
    fields = dict(
        name=name,
        train_images=np.linspace(0, 1, np.prod(train), dtype=np.float32).reshape(train),
        train_labels=np.arange(train[0], dtype=np.int32) % num_classes,
        test_images=np.zeros(test, np.float32),
        test_labels=np.zeros(test[:1], np.int32),
        num_classes=num_classes,
        source="test",
    )
    fields.update(overrides)
    return Dataset(**fields)


def test_registry_names_and_facts():
    assert list(DATASETS) == ["digits", "mnist", "fashion_mnist", "cifar10"]
    assert "mnist" in DATASETS and "imagenet" not in DATASETS
    assert ", ".join(DATASETS) == "digits, mnist, fashion_mnist, cifar10"
    shapes = {name: info.image_shape for name, info in DATASETS.items()}
    assert shapes == {
        "digits": (8, 8, 1),
        "mnist": (28, 28, 1),
        "fashion_mnist": (28, 28, 1),
        "cifar10": (32, 32, 3),
    }
    for name, info in DATASETS.items():
        assert info.name == name and info.num_classes == 10
        assert len(set(info.class_names)) == 10
    assert DATASETS["fashion_mnist"].class_names[0] == "T-shirt/top"
    assert DATASETS["fashion_mnist"].class_names[9] == "Ankle boot"
    assert DATASETS["cifar10"].class_names[::9] == ("airplane", "truck")
    assert DATASETS["mnist"].class_names == tuple("0123456789")
    with pytest.raises(TypeError):  # read-only: one registry for everyone
        DATASETS["imagenet"] = DATASETS["cifar10"]


def test_data_error_is_the_shared_user_error():
    assert DataError is errors.DataError and data.DataError is errors.DataError
    assert issubclass(DataError, errors.UserError) and issubclass(DataError, ValueError)
    assert str(DataError("a\n  b")) == "a b"


def test_dataset_statistics_and_shape():
    ds = _toy()
    assert ds.image_shape == (2, 2, 1)
    np.testing.assert_allclose(ds.mean, (0.5,), rtol=1e-6)
    np.testing.assert_allclose(ds.std, (ds.train_images.astype(np.float64).std(),), rtol=1e-12)
    assert ds.class_names == ("0", "1", "2")  # not a registry name: label numbers
    assert _toy(name="cifar10", num_classes=10).class_names[1] == "automobile"


def test_dataset_repr_is_short():
    ds = _toy(train=(5000, 8, 8, 1), test=(2, 8, 8, 1))
    assert repr(ds) == (
        "Dataset(name='toy', train=(5000, 8, 8, 1), test=(2, 8, 8, 1), "
        "num_classes=3, source='test')"
    )


def test_dataset_validates_layout():
    with pytest.raises(DataError) as e:
        _toy(train_images=np.zeros((4, 2, 2, 1), np.float64))
    assert_one_line(e.value, "train_images", "float32")
    with pytest.raises(DataError) as e:
        _toy(test_labels=np.zeros((3,), np.int32))
    assert_one_line(e.value, "test_labels", "int32[2]")
    with pytest.raises(DataError) as e:
        _toy(test=(2, 3, 3, 1))
    assert_one_line(e.value, "shapes differ")


def test_dataset_is_a_replaceable_dataclass():
    ds = _toy()
    up = dataclasses.replace(ds, source="other")
    assert up.source == "other" and up.train_images is ds.train_images


def test_splits_is_a_tuple_of_four():
    a, b, c, d = (np.zeros(1) for _ in range(4))
    s = data.Splits(a, b, c, d)
    assert s.train_images is a and s.test_labels is d
    assert tuple(s) == (a, b, c, d)
