"""TensorBoard: the events train.py and attack.py log, read back; the progress bar's clock after compilation."""

import io as _io
import json
import os
import shutil
import time

import numpy as np
import pytest
from tqdm import tqdm

from jacuap import summaries, train
from jacuap.configs import default
from jacuap.evaluation import tensorboard
from jacuap.train import runtime

STEPS_PER_EPOCH = 1437 // 256  # digits' training split, batch_size 256
EPOCH_TAGS = {"loss", "ce", "penalty", "train_accuracy", "test_accuracy", "train_seconds", "step_seconds"}
SUMMARY_TAGS = {f"summary/{k}" for k in runtime.SUMMARY_SCALARS}


def _config(**overrides):
    config = default.get_config()
    config.update(dataset="digits", model="mlp", num_epochs=1, batch_size=256, lr_schedule="constant",
                  jr_lambda=0.5, jr_num_proj=1, progress=False, eval_num_inputs=50)
    config.update(**overrides)
    return config


@pytest.fixture(scope="module")
def one_epoch(tmp_path_factory):
    """``_config()`` trained: (workdir, summary)."""
    workdir = str(tmp_path_factory.mktemp("tb") / "run")
    return workdir, train.train_and_evaluate(_config(), workdir)


def _lines(workdir):
    return [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]


def _assert_events_match(workdir, summary):
    """Each epoch once, at its last step, with metrics.jsonl's numbers (float32); the summary's at the end."""
    events = summaries.read(summaries.logdir(workdir))
    lines = _lines(workdir)
    assert set(events) == EPOCH_TAGS | SUMMARY_TAGS
    for tag in EPOCH_TAGS:
        assert events[tag] == [(l["step"], pytest.approx(l[tag], rel=1e-6)) for l in lines], tag
    for tag in SUMMARY_TAGS:
        assert events[tag] == [(summary["steps"], pytest.approx(summary[tag[len("summary/"):]], rel=1e-6))]


def test_training_logs_each_epoch_as_metrics_jsonl(one_epoch):
    workdir, summary = one_epoch
    line, = _lines(workdir)
    # step_seconds: the steps after the (compiling) first one; train_seconds keeps its meaning (all of it).
    assert 0 < line["step_seconds"] * (STEPS_PER_EPOCH - 1) < line["train_seconds"]
    _assert_events_match(workdir, summary)
    assert len(summaries.event_files(summaries.logdir(workdir))) == 1


def test_an_extended_or_rerun_run_shows_each_epoch_once(one_epoch, tmp_path):
    workdir = str(tmp_path / "w")
    shutil.copytree(one_epoch[0], workdir)
    summary = train.train_and_evaluate(_config(num_epochs=2), workdir)  # resumes at step 5, the old summary's
    assert [l["step"] for l in _lines(workdir)] == [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]
    _assert_events_match(workdir, summary)  # the step-5 summary of the first run is purged
    summary = train.train_and_evaluate(_config(num_epochs=2), workdir)  # finished: trains nothing
    _assert_events_match(workdir, summary)
    shutil.rmtree(summaries.logdir(workdir))  # a workdir without events gets its whole history
    summary = train.train_and_evaluate(_config(num_epochs=2), workdir)
    _assert_events_match(workdir, summary)


def test_a_resumed_run_hides_what_was_logged_after_its_checkpoint(tmp_path):
    workdir = str(tmp_path / "w")
    summaries.scalars(summaries.logdir(workdir), 5, {"loss": 1.0})
    summaries.scalars(summaries.logdir(workdir), 10, {"loss": 0.5, "ce": 0.4})  # then killed before its checkpoint
    history = [{"epoch": 1, "step": 5, "loss": 1.0, "penalty": None}]
    # Resumed at step 5: the restart marker hides steps >= 5, epoch 1 is logged again, once.
    with runtime.tensorboard(workdir, 5, history) as writer:
        writer.scalars(10, {"loss": 0.25})
    assert summaries.read(summaries.logdir(workdir)) == {"loss": [(5, 1.0), (10, 0.25)]}
    # A folder without events gets the whole history.
    with runtime.tensorboard(str(tmp_path / "fresh"), 5, history):
        pass
    assert summaries.read(summaries.logdir(str(tmp_path / "fresh"))) == {"loss": [(5, 1.0)]}


def test_images_and_text_round_trip_and_a_bad_image_is_one_line(tmp_path):
    gray = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4, 1)
    summaries.image(str(tmp_path), "g", 7, gray)
    summaries.text(str(tmp_path), "t", 0, "| a |\n|---|")
    events = summaries.read(str(tmp_path))
    (step, pixels), = events["g"]
    assert step == 7 and pixels.shape == (3, 4, 3) and pixels.dtype == np.uint8
    np.testing.assert_array_equal(pixels[..., 0], np.round(gray[..., 0] * 255))
    assert events["t"] == [(0, "| a |\n|---|")]
    with pytest.raises(ValueError, match=r"image 'x'.*got shape \(2, 2, 2\)"):
        summaries.image(str(tmp_path), "x", 0, np.zeros((2, 2, 2)))


def _results(uer=0.25):
    rows = [dict(attack="sgd_uap", seed=0, norm="linf", eps=e, universal=True, uer=u, fooling_rate=u - 0.1,
                 clean_accuracy=0.9, seconds=1.0, file=f"sgd_uap_linf_eps{e:g}_seed0.npy")
            for e, u in ((0.05, uer), (0.1, 0.5))]
    return {"complete": True, "results": rows, "worst_case": [dict(rows[1], eps=0.1)],
            "metrics": {"mean_frobenius_sq": 3.0, "num_inputs": 60, "per_class": [1.0]}}


def test_attack_results_scalars_table_and_uaps(tmp_path):
    out = str(tmp_path)
    v = np.array([[-0.1, 0.0], [0.1, 0.3]], np.float32)[..., None]
    tensorboard.log_attack_results(_results(), out, {"sgd_uap eps=0.05": v, "sgd_uap eps=0.1": -v})
    logdir = summaries.logdir(out)
    events = summaries.read(logdir)
    assert events["uer/sgd_uap"] == [(50, 0.25), (100, 0.5)]
    assert events["fooling_rate/sgd_uap"] == [(50, pytest.approx(0.15)), (100, pytest.approx(0.4))]
    assert events["uer/worst_case"] == [(100, 0.5)]
    assert events["metrics/mean_frobenius_sq"] == [(0, 3.0)] and "metrics/per_class" not in events
    assert "| sgd_uap | 0 | linf | 0.05 | 0.250 |" in events["results"][0][1]
    (step, image), = events["uap/sgd_uap_eps_0.05"]
    assert step == 0 and image.shape == (2, 2, 3)
    assert image[..., 0].tolist() == [[0, 64], [128, 255]]  # its own range: (v - min) / (max - min)
    # The same results again: nothing written; other results replace the file.
    files = summaries.event_files(logdir)
    tensorboard.log_attack_results(_results(), out, {"sgd_uap eps=0.05": v})
    assert summaries.event_files(logdir) == files
    tensorboard.log_attack_results(_results(uer=0.3), out, {})
    assert len(summaries.event_files(logdir)) == 1 and summaries.event_files(logdir) != files
    assert summaries.read(logdir)["uer/sgd_uap"] == [(50, pytest.approx(0.3)), (100, 0.5)]


def test_the_bar_and_step_seconds_leave_out_the_compiling_first_step(monkeypatch):
    stream = _io.StringIO()
    bar = tqdm(total=6, file=stream, mininterval=0, postfix="compiling")
    timer = runtime.StepTimer(bar)
    time.sleep(0.5)  # the first step's compilation
    timer.step(np.zeros(2))
    assert bar.initial == bar.n == 1 and bar.postfix == "" and bar.format_dict["elapsed"] < 0.5
    for _ in range(3):
        timer.step(np.zeros(2))
    with timer.paused():
        time.sleep(0.3)  # a checkpoint save
    seconds = timer.seconds_per_step()
    assert timer.timed == 3 and 0 <= seconds < 0.05
    assert "compiling" in stream.getvalue()
    bar.close()
    assert runtime.StepTimer(tqdm(total=1, disable=True)).seconds_per_step() is None


def test_the_progress_bar_says_compiling_until_the_first_step(capsys):
    with runtime.progress_bar(_config(progress=True), 0, 0, 3, compiling=True) as bar:
        assert bar.postfix == "compiling"
        runtime.StepTimer(bar).step(np.zeros(1))
        assert not bar.postfix
    assert "compiling" in capsys.readouterr().err
