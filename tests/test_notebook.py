"""notebooks/colab_tpu.ipynb runs top to bottom here, on CPU, as a user would run it.

No Jupyter needed: the code cells are plain Python (no ``!``/``%`` magics,
so they run in any kernel) and are executed in order in one namespace.  The
only change is to the cell tagged ``parameters`` (the configuration at the
top), whose values are overridden after it runs to keep the run small.
"""

import configparser
import json
import os
import re
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "notebooks", "colab_tpu.ipynb")


def code_cells(path):
    nb = json.load(open(path))
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            yield "".join(cell["source"]), cell.get("metadata", {}).get("tags", [])


def test_notebook_cells_are_plain_python_with_config_first():
    cells = list(code_cells(NOTEBOOK))
    assert "parameters" in cells[0][1], "the configuration cell comes first"
    for source, _ in cells:
        compile(source, NOTEBOOK, "exec")
        assert not any(line.lstrip().startswith(("!", "%")) for line in source.splitlines())


def _run_cells(count, **overrides):
    """The namespace after the first ``count`` code cells, the parameters cell's values overridden."""
    namespace = {"__name__": "__main__"}
    for source, tags in list(code_cells(NOTEBOOK))[:count]:
        exec(compile(source, NOTEBOOK, "exec"), namespace)
        if "parameters" in tags:
            namespace.update(overrides)
    return namespace


def test_install_keeps_an_installed_jax(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ns = _run_cells(2)  # configuration, install (jacuap is importable here: nothing is installed)
    pip = [sys.executable, "-m", "pip", "install", "-q"]
    source = ns["JACUAP_SOURCE"]
    # With JAX installed (Colab's TPU/GPU build): jacuap alone, then the rest with jax/jaxlib pinned.
    assert ns["pip_args"](True) == pip + ["--no-deps", source]
    assert ns["pip_args"](False) == pip + [source]
    requires = ["jax>=0.4.30", "jaxlib>=0.4.30", "flax>=0.8.5", "absl-py>=1.4",
                "scipy>=1.10; python_version >= '3.9'", 'pytest>=7.4; extra == "dev"', "JAX[tpu]>=0.4"]
    assert ns["deps_args"](requires, {"jaxlib": "0.4.35", "jax": "0.4.35"}) == pip + [
        "flax>=0.8.5", "absl-py>=1.4", "scipy>=1.10; python_version >= '3.9'", "jax==0.4.35", "jaxlib==0.4.35"]
    # jacuap's real requirements: every jax/jaxlib left in the command is the installed one, pinned.
    import importlib.metadata

    args = ns["deps_args"](importlib.metadata.requires("jacuap"), {"jax": "9.9", "jaxlib": "9.9"})
    assert [a for a in args if a.lower().startswith("jax")] == ["jax==9.9", "jaxlib==9.9"]
    assert "flax>=0.8.5" in " ".join(args) and "pytest" not in " ".join(args)


def test_install_source_is_the_url_setup_cfg_declares():
    ns = _run_cells(1)
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, "setup.cfg"))
    url = cfg["metadata"]["url"]
    assert ns["JACUAP_SOURCE"] == f"git+{url}.git"
    assert url in cfg["metadata"]["project_urls"]


def test_runs_go_to_drive_only_when_asked_on_colab(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    ns = _run_cells(3, USE_DRIVE=True, WORKDIR=str(tmp_path / "local"))  # not on Colab: stays local
    assert "USE_DRIVE needs Colab" in capsys.readouterr().out
    assert ns["RUN_ROOT"] == str(tmp_path / "local") and os.path.isdir(ns["RUN_ROOT"])
    choose = ns["choose_run_root"]
    assert ns["USE_DRIVE"] is True and ns["DRIVE_WORKDIR"].startswith("/content/drive/MyDrive/jacuap")
    assert choose(True, True, "local", ns["DRIVE_WORKDIR"]) == ns["DRIVE_WORKDIR"]
    assert choose(False, True, "local", "drive") == choose(True, False, "local", "drive") == "local"
    assert _run_cells(1)["USE_DRIVE"] is False, "the default stays local"


@pytest.mark.slow
def test_notebook_runs_top_to_bottom(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__main__"}
    for source, tags in code_cells(NOTEBOOK):
        exec(compile(source, NOTEBOOK, "exec"), namespace)
        if "parameters" in tags:
            namespace.update(NUM_EPOCHS=2, NUM_CRAFT=128, NUM_EVAL=100, NUM_METRICS=40, EPS=[0.1],
                             WORKDIR=str(tmp_path / "runs"))
    assert namespace["summary"]["test_accuracy"] > 0.5
    assert {r["attack"] for r in namespace["results"]["results"]} == {"sgd_uap", "sv_uap"}
    assert os.path.exists(os.path.join(namespace["request"].out, "results.json"))
    assert 0.5 <= namespace["values"]["shared_perturbation_strength"] <= 1.0
    # The NNX cell: a trained NNX model (better than chance) and a UER in [0, 1].
    assert namespace["nnx_accuracy"] > 0.3 and 0.0 <= namespace["nnx_uer"] <= 1.0
    # ...and comes back as an NNX object with the trained parameters (the cell checks its outputs).
    assert type(namespace["trained_module"]) is namespace["SmallNNX"]
    assert namespace["trained_module"] is not namespace["module"]
    # The devices cell names the backend and, on CPU, warns that JAX fell back to it.
    out = capsys.readouterr().out
    assert re.search(r"^JAX \S+ runs on cpu: \d+ device\(s\) \[", out, re.M)
    assert "WARNING: no TPU or GPU: JAX fell back to the CPU" in out
    assert namespace["RUN_ROOT"] == str(tmp_path / "runs") and namespace["request"].out.startswith(str(tmp_path))
