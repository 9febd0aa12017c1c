"""jacuap.evaluation: attack results on a trained workdir, and bad requests.

``attack.py`` itself (flags, exit codes) is tested in ``test_cli.py``.
"""

import json
import os

import numpy as np
import pytest

from jacuap import data, errors, evaluation, train
from jacuap.configs import default



def _train(workdir, jr_lambda, num_epochs):
    config = default.get_config()
    config.update(dataset="digits", model="mlp", jr_lambda=jr_lambda, num_epochs=num_epochs,
                  progress=False, eval_num_inputs=100)
    return train.train_and_evaluate(config, str(workdir))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("digits") / "plain"
    _train(workdir, 0.0, 10)
    return str(workdir)


def _request(workdir, out, **kw):
    base = dict(workdir=workdir, attacks=["sgd_uap", "sv_uap"], norm="linf", eps=[0.0, 0.1, 0.3],
                out=str(out), num_craft=500, num_eval=300, num_metrics=60, sgd_epochs=3, progress=False)
    base.update(kw)
    return evaluation.AttackRequest(**base)


def test_run_attacks_writes_complete_results(trained, tmp_path):
    out = tmp_path / "attack"
    results = evaluation.run_attacks(_request(trained, out))
    saved = json.load(open(out / "results.json"))
    assert saved == json.loads(json.dumps(results))
    rows = saved["results"]
    assert [(r["attack"], r["eps"]) for r in rows] == [
        (a, e) for a in ("sgd_uap", "sv_uap") for e in (0.0, 0.1, 0.3)]
    for r in rows:
        assert {"attack", "norm", "eps", "uer", "fooling_rate", "clean_accuracy", "seconds"} <= set(r)
        v = np.load(out / r["file"])
        assert v.shape == (8, 8, 1)
        assert np.max(np.abs(v)) <= r["eps"] + 1e-6
        assert r["perturbation_norm"] == pytest.approx(float(np.max(np.abs(v))))
        if r["eps"] == 0.0:
            # No perturbation: UER is the clean error, nothing is fooled.
            assert r["uer"] == pytest.approx(1 - r["clean_accuracy"])
            assert r["fooling_rate"] == 0.0
    sgd = {r["eps"]: r["uer"] for r in rows if r["attack"] == "sgd_uap"}
    assert sgd[0.0] < sgd[0.1] < sgd[0.3]
    assert (out / "uaps.png").stat().st_size > 1000
    m = saved["metrics"]
    assert 0.5 <= m["shared_perturbation_strength"] <= 1.0
    assert m["mean_frobenius_sq"] > 0
    # Only jacuap's outputs: every temporary file was renamed onto its target.
    assert sorted(os.listdir(out)) == sorted([r["file"] for r in rows] + [r["file"][:-4] + ".png" for r in rows]
                                             + [".lock", "request.json", "results.json", "rows", "tensorboard", "uaps.png"])
    assert sorted(os.listdir(out / "rows")) == sorted([r["file"][:-4] + ".json" for r in rows] + ["metrics.json"])
    assert saved["complete"] is True
    assert [r["file"] for r in rows][:2] == ["sgd_uap_linf_eps0_seed0.npy", "sgd_uap_linf_eps0.1_seed0.npy"]


def test_per_input_attacks_in_results(trained, tmp_path):
    results = evaluation.run_attacks(_request(trained, tmp_path / "a", attacks=["fgsm", "pgd"],
                                              eps=[0.1], num_metrics=0))
    rows = {r["attack"]: r for r in results["results"]}
    assert not rows["pgd"]["universal"] and rows["pgd"]["file"] is None
    assert rows["pgd"]["uer"] >= rows["fgsm"]["uer"] - 0.02
    assert rows["fgsm"]["uer"] > 1 - rows["fgsm"]["clean_accuracy"]
    assert results["metrics"] == {}


def test_craft_and_eval_sets_are_disjoint():
    ds = data.load_dataset("digits")
    req = _request("unused", "unused", craft_split="test", num_craft=100, num_eval=150)
    xc, _, xe, _ = evaluation.craft_and_eval_sets(ds, req)
    craft_rows = {x.tobytes() for x in xc}
    assert not craft_rows & {x.tobytes() for x in xe}
    assert len(xc) == 100 and len(xe) == 150


@pytest.mark.parametrize("kw,message", [
    (dict(attacks=["carlini"]), "unknown attack"),
    (dict(attacks=[]), "unknown attack"),
    (dict(norm="l1"), "unknown norm"),
    (dict(eps=[]), "at least one eps"),
    (dict(eps=[1.5]), r"eps must be a finite number >= 0 \(<= 1 for linf\), got 1.5"),
    (dict(eps=[-0.1], norm="l2"), ">= 0"),
    (dict(eps=[float("nan")]), "finite"),
    (dict(num_craft=0), "num_craft"),
    (dict(num_metrics=-1), "num_metrics"),
    (dict(seed=-1), "seed must be an integer >= 0"),
    (dict(eps=[0.1, 0.1]), "eps 0.1 is given twice"),
    (dict(craft_split="val"), "craft_split"),
])
def test_bad_requests(kw, message, tmp_path):
    with pytest.raises(errors.AttackError, match=message):
        _request("w", tmp_path, **kw)


def test_missing_workdir_is_a_checkpoint_error(tmp_path):
    with pytest.raises(errors.CheckpointError, match="does not exist"):
        evaluation.run_attacks(_request(str(tmp_path / "nope"), tmp_path / "out"))
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_jr_model_resists_sgd_uap_better(tmp_path):
    # The acceptance run: digits MLPs, 30 epochs, lambda 0 vs 0.5, attack.py's job at its default sizes
    # (in this process: tests/test_cli.py runs the program itself).
    for name, lam in (("plain", 0.0), ("jr", 0.5)):
        _train(tmp_path / name, lam, 30)
        evaluation.run_attacks(evaluation.AttackRequest(workdir=str(tmp_path / name), attacks=["sgd_uap"],
                                                        norm="linf", eps=[0.1, 0.2], out=str(tmp_path / name / "attack"),
                                                        num_metrics=0, progress=False), log=lambda line: None)
    uer = {}
    for name in ("plain", "jr"):
        rows = json.load(open(tmp_path / name / "attack" / "results.json"))["results"]
        uer[name] = {(r["attack"], r["eps"]): r["uer"] for r in rows}
    assert uer["jr"][("sgd_uap", 0.2)] < uer["plain"][("sgd_uap", 0.2)]


def test_uap_figure_titles_say_true_then_predicted_with_class_names(tmp_path, monkeypatch):
    from jacuap import evaluation

    titles = []
    real_show = evaluation.outputs._show
    monkeypatch.setattr(evaluation.outputs, "_show", lambda ax, image, title, **kw: (titles.append(title),
                                                                              real_show(ax, image, title, **kw)))
    w = np.zeros((4, 2), np.float32)
    w[:, 1] = 1.0  # logit 1 = sum of the pixels
    apply_fn = lambda p, x: x.reshape(x.shape[0], -1) @ p
    x = np.full((2, 2, 2, 1), 0.1, np.float32)  # class 1 (0.4 > 0)
    path = str(tmp_path / "uaps.png")
    evaluation.outputs.plot_uaps({"minus": np.full((2, 2, 1), -0.1, np.float32)}, apply_fn, w, x, path,
                           y=np.array([1, 0]), class_names=["cat", "dog"])
    # x + v = 0: logits tie, argmax 0; the input the UAP fools (a dog, classified right before) comes first.
    assert titles == ["dog ->\ncat", "cat ->\ncat"]
    assert os.path.getsize(path) > 0
