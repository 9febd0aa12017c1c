"""attack.py --torch_model: a PyTorch CNN and its Flax twin (same weights) give the same table.

The Flax CNN is trained for one epoch on digits; benchmarks/torch_reference.from_flax
copies its weights into the PyTorch twin, saved as a state dict.  The same request
runs on the workdir (in this process) and on the PyTorch model: through attack.py
(the convert mechanism of jacuap.from_torch) and through run_attacks (callback).
SGD-UAP is deterministic given the key: its UER matches to one input; SV-UAP
matches within noise.  (DeepFool-UAP through both mechanisms is compared with
the Flax model in tests/test_torch_bridge.py; here it would only add compile
time to a test of the program's path.)
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from jacuap import configs, errors, evaluation, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = dict(norm="linf", eps=[0.1], num_craft=300, num_eval=300, num_metrics=50, sgd_epochs=2,
             progress=False)
FACTORY = '''
from benchmarks.torch_reference import TorchCNN

def digits_cnn():
    return TorchCNN(10, 1, (8, 8), (32, 64), 128, MEAN, STD)
'''


@pytest.mark.slow
def test_attack_py_on_a_pytorch_cnn_matches_its_flax_twin(tmp_path, monkeypatch):
    import torch

    from benchmarks import torch_reference

    config = configs.get_config("digits")
    configs.override(config, model="cnn", num_epochs=1, progress=False, eval_num_inputs=50)
    train.train_and_evaluate(config, str(tmp_path / "w"))
    restored = train.restore_model(str(tmp_path / "w"))
    spec = restored.meta["model_spec"]
    twin = torch_reference.from_flax(restored.params, spec["mean"], spec["std"], image_shape=(8, 8, 1))
    torch.save(twin.state_dict(), tmp_path / "cnn.pt")
    (tmp_path / "mytorch.py").write_text(f"MEAN, STD = {tuple(spec['mean'])!r}, {tuple(spec['std'])!r}\n" + FACTORY)

    attacks = ["sgd_uap", "sv_uap"]
    tables = {"flax": evaluation.run_attacks(evaluation.AttackRequest(
        workdir=str(tmp_path / "w"), attacks=attacks, out=str(tmp_path / "flax"), **SIZES))}
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), ROOT]))
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "attack.py"), "--torch_model=mytorch:digits_cnn",
                           f"--torch_weights={tmp_path / 'cnn.pt'}", "--dataset=digits", f"--out={tmp_path / 'convert'}",
                           f"--attack={','.join(attacks)}", "--eps=0.1", "--num_craft=300", "--num_eval=300",
                           "--num_metrics=50", "--sgd_epochs=2", "--noprogress"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "UER, fooling rate and clean accuracy on 300 test inputs" in proc.stdout
    tables["convert"] = json.load(open(tmp_path / "convert" / "results.json"))
    monkeypatch.syspath_prepend(str(tmp_path))
    torch_model = evaluation.request.TorchModel("mytorch:digits_cnn", "digits", str(tmp_path / "cnn.pt"), "callback")
    tables["callback"] = evaluation.run_attacks(evaluation.AttackRequest(
        workdir="", torch=torch_model, attacks=["sgd_uap"], out=str(tmp_path / "callback"), **SIZES))

    rows = {name: {(r["attack"], r["eps"]): r for r in t["results"]} for name, t in tables.items()}
    for name in ("convert", "callback"):
        assert tables[name]["config"]["workdir"] == "torch:mytorch:digits_cnn"
        for key, row in rows[name].items():
            flax_row = rows["flax"][key]
            assert row["clean_accuracy"] == flax_row["clean_accuracy"]
            tolerance = 1 / 300 if key[0] == "sgd_uap" else 0.03  # one input of 300; "within noise"
            assert abs(row["uer"] - flax_row["uer"]) <= tolerance, (name, key, row["uer"], flax_row["uer"])
        # Sign steps: a float32 difference can flip a near-zero gradient's sign, so a few pixels may differ.
        sgd = np.load(tmp_path / name / rows[name][("sgd_uap", 0.1)]["file"])
        same = np.abs(sgd - np.load(tmp_path / "flax" / rows["flax"][("sgd_uap", 0.1)]["file"])) <= 1e-5
        assert same.mean() >= 0.98, same.mean()
        metrics, flax_metrics = tables[name]["metrics"], tables["flax"]["metrics"]
        assert metrics["mean_frobenius_sq"] == pytest.approx(flax_metrics["mean_frobenius_sq"], rel=1e-3)
    assert tables["convert"]["metrics"]["stacked_spectral_norm"] == pytest.approx(
        tables["flax"]["metrics"]["stacked_spectral_norm"], rel=1e-3)
    with pytest.raises(errors.AttackError,
                       match="read a Flax model's hidden layers"):
        evaluation.run_attacks(evaluation.AttackRequest(workdir="", torch=torch_model, attacks=["layer_max"],
                                                        out=str(tmp_path / "layers"), **SIZES))
