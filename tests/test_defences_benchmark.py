"""benchmarks/defences.py: every row is a valid run, the table comes from the programs, reruns redo nothing."""

import json

import pytest

from benchmarks import defences


def test_every_row_is_a_valid_training_config():
    from jacuap import configs

    for name, fields, _, _ in defences.DEFENCES:
        config = configs.get_config("fashion_mnist")
        config.update(**fields)
        configs.validate(config)
    assert len(set(defences.NAMES)) == len(defences.NAMES) == 9
    modes = {f.get("jr_mode", "frobenius") for _, f, _, _ in defences.DEFENCES}
    trainings = {f.get("adv_training", "none") for _, f, _, _ in defences.DEFENCES}
    assert modes == {"frobenius", "stacked_spectral", "alignment"}
    assert trainings == {"none", "uat", "cw_uat", "sat", "pgd", "trades"}


def test_commands_carry_the_fields_as_flags():
    train, attack = defences.commands("stacked_spectral", dict(defences.DEFENCES[6][1]), "/w",
                                      dict(dataset="fashion_mnist", model="cnn", epochs=4, num_craft=5000,
                                           num_eval=10000), 0, [0.1, 0.2], "")
    assert "--config.jr_num_proj=None" in train and "--config.jr_mode=stacked_spectral" in train
    assert "--workdir=/w/stacked_spectral" in train and "--config.num_epochs=4" in train
    assert "--eps=0.1,0.2" in attack and "--out=/w/stacked_spectral/sgd" in attack


@pytest.mark.bench  # a benchmark script end to end: make test-bench (.ci/run runs it)
@pytest.mark.slow  # ~1 min: two programs in subprocesses on digits
def test_quick_row_then_rerun_reads_it(tmp_path, monkeypatch):
    out, workroot = tmp_path / "d.json", tmp_path / "runs"
    args = ["--quick", "--only", "none", "--attack_seeds", "0,1", "--workroot", str(workroot), "--out", str(out)]
    assert defences.main(args) == 0
    record = json.load(open(out))
    (row,) = record["rows"]
    summary = json.load(open(workroot / "none" / "summary.json"))
    results = json.load(open(workroot / "none" / "sgd" / "results.json"))
    assert row["clean_accuracy"] == summary["test_accuracy"]
    assert row["uer_by_seed"]["0.1"][0] == [r["uer"] for r in results["results"] if r["eps"] == 0.1][0]
    seed1 = json.load(open(workroot / "none" / "sgd_seed1" / "results.json"))
    assert seed1["config"]["seed"] == 1
    assert row["uer_by_seed"]["0.2"] == [r["uer"] for r in (results, seed1) for r in r["results"] if r["eps"] == 0.2]
    assert row["uer"] == {e: max(v) for e, v in row["uer_by_seed"].items()}
    assert set(row["uer"]) == {"0.1", "0.2"} and row["step_cost"] is None
    assert "| none |" in (tmp_path / "d.md").read_text()

    def no_program(argv, log):
        raise AssertionError(f"reran {argv[0]}")

    monkeypatch.setattr(defences, "_run", no_program)
    before = out.read_bytes()
    assert defences.main(args) == 0
    assert out.read_bytes() == before

    # --only adds its rows to those --out holds at the same settings, in the table's order.
    record["rows"].append(dict(row, name="uat", label="UAT"))
    out.write_text(json.dumps(record))
    assert defences.main(args) == 0
    assert [r["name"] for r in json.load(open(out))["rows"]] == ["none", "uat"]
    assert "| UAT |" in (tmp_path / "d.md").read_text()


def test_a_workdir_of_another_run_is_refused(tmp_path, capsys):
    (tmp_path / "uat").mkdir()
    (tmp_path / "uat" / "config.json").write_text(json.dumps(
        dict(dataset="digits", model="mlp", num_epochs=1, seed=0, jr_lambda=0.0, adv_training="pgd", adv_eps=0.1)))
    assert defences.main(["--quick", "--only", "uat", "--workroot", str(tmp_path),
                          "--out", str(tmp_path / "d.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "adv_training='pgd', not 'uat'" in err
    assert not (tmp_path / "d.json").exists()


def test_bad_arguments_are_one_line(tmp_path, capsys):
    assert defences.main(["--only", "nope", "--workroot", str(tmp_path)]) == 2
    assert "--only: unknown rows nope" in capsys.readouterr().err
    assert defences.main(["--epochs", "0", "--workroot", str(tmp_path)]) == 2
    assert "--epochs" in capsys.readouterr().err
    assert defences.main(["--attack_seeds", "0,x", "--workroot", str(tmp_path)]) == 2
    assert "--attack_seeds" in capsys.readouterr().err
