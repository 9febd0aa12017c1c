"""The validation split: held out of training (same inputs for every seed), trained beside, attacked on."""

import json
import os

import numpy as np
import pytest

from jacuap import data, errors, evaluation, train
from jacuap.configs import default


def _rows(x):
    return sorted(r.tobytes() for r in x)


def test_hold_out_validation_partitions_the_training_split():
    full = data.load_dataset("digits", seed=3)
    ds = data.load_dataset("digits", seed=3, num_validation=300)
    assert len(ds.validation_images) == 300 and len(ds.train_images) == len(full.train_images) - 300
    # Together they are exactly the training split; the test split is untouched.
    assert _rows(np.concatenate([ds.train_images, ds.validation_images])) == _rows(full.train_images)
    np.testing.assert_array_equal(ds.test_images, full.test_images)
    # The training inputs left keep their order (a subsequence of the full split).
    keep = [i for i, r in enumerate(full.train_images) if r.tobytes() in {v.tobytes() for v in ds.train_images}]
    np.testing.assert_array_equal(full.train_images[keep], ds.train_images)
    # The same inputs each time, and for another training seed of the same split.
    again = data.hold_out_validation(full, 300)
    np.testing.assert_array_equal(again.validation_labels, ds.validation_labels)


@pytest.mark.parametrize("bad", [-1, 1437, 10**6, 2.5, True, "5"])
def test_bad_num_validation_is_named(bad):
    with pytest.raises(data.DataError, match="num_validation"):
        data.load_dataset("digits", num_validation=bad)


def test_validation_split_needs_both_arrays():
    x, y = np.zeros((4, 2, 2, 1), np.float32), np.zeros(4, np.int32)
    with pytest.raises(data.DataError, match="validation_labels"):
        data.Dataset("toy", x, y, x, y, 3, "zeros", validation_images=x)
    with pytest.raises(data.DataError, match="validation_labels must be int32"):
        data.Dataset("toy", x, y, x, y, 3, "zeros", validation_images=x, validation_labels=y[:2])


@pytest.fixture(scope="module")
def held_out_workdir(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("val") / "mlp")
    config = default.get_config()
    config.update(dataset="digits", model="mlp", jr_lambda=0.0, num_epochs=3, progress=False,
                  eval_num_inputs=50, num_validation=200)
    summary = train.train_and_evaluate(config, workdir)
    return workdir, summary


def test_training_reports_validation_accuracy(held_out_workdir):
    workdir, summary = held_out_workdir
    assert summary["num_validation"] == 200 and 0.5 < summary["validation_accuracy"] <= 1.0
    history = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert history[-1]["validation_accuracy"] == summary["validation_accuracy"]
    # Trained on the rest only: 1237 inputs, 128 a batch.
    assert summary["steps"] == 3 * (1237 // 128)


def test_attack_on_the_validation_split(held_out_workdir, tmp_path):
    workdir, summary = held_out_workdir
    req = evaluation.AttackRequest(workdir=workdir, attacks=["sgd_uap"], norm="linf", eps=[0.1], out=str(tmp_path),
                                   num_craft=300, num_eval=10**6, num_metrics=0, sgd_epochs=1, progress=False,
                                   eval_split="validation")
    res = evaluation.run_attacks(req, log=lambda m: None)
    assert res["config"]["eval_split"] == "validation" and res["config"]["num_eval"] == 200
    assert res["results"][0]["clean_accuracy"] == pytest.approx(summary["validation_accuracy"])
    # The crafting inputs come from the training inputs left, never the validation ones.
    ds = data.load_dataset("digits", num_validation=200)
    xc, _, xe, _ = evaluation.craft_and_eval_sets(ds, req)
    assert not set(_rows(xc)) & set(_rows(ds.validation_images))
    np.testing.assert_array_equal(xe, ds.validation_images)


def test_validation_attack_on_a_model_without_the_split(tmp_path):
    ds = data.load_dataset("digits")
    req = evaluation.AttackRequest(workdir="w", attacks=["sgd_uap"], norm="linf", eps=[0.1], out=str(tmp_path),
                                   eval_split="validation")
    with pytest.raises(errors.AttackError, match="num_validation"):
        evaluation.craft_and_eval_sets(ds, req)
    with pytest.raises(errors.AttackError, match="eval_split"):
        evaluation.AttackRequest(workdir="w", attacks=["sgd_uap"], norm="linf", eps=[0.1], out=str(tmp_path),
                                 eval_split="train")
    with pytest.raises(errors.AttackError, match="craft_split=test"):
        evaluation.AttackRequest(workdir="w", attacks=["sgd_uap"], norm="linf", eps=[0.1], out=str(tmp_path),
                                 eval_split="validation", craft_split="test")


def test_bad_num_validation_in_config():
    from jacuap import configs

    config = default.get_config()
    config.num_validation = -5
    with pytest.raises(errors.ConfigError, match="num_validation"):
        configs.validate(config)
