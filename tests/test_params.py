"""Bad params fail the run, clearly, before anything executes."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from lib.core import notebooks, runs
from lib.core.params import ParamsError

ROOT = Path(__file__).resolve().parent.parent


def test_every_committed_params_file_is_valid():
    files = sorted((ROOT / "params" / "movielens").glob("*.yaml"))
    assert files
    for f in files:
        if f.name == "report.yaml":
            continue
        runs.run_parameters(f)


@pytest.mark.parametrize("section,bad,match", [
    ({"loss": {"temprature": 0.05}}, "loss.temprature", "did you mean 'temperature'"),
    ({"train": {"batch_size": "big"}}, "train.batch_size", "must be of type int"),
    ({"loss": {"temperature": -1.0}}, "temperature", "must be > 0"),
    ({"data": {"split": [0.8, 0.3, 0.1]}}, "split", "summing to 1"),
    ({"model": {"kind": "two_towr"}}, "kind", "unknown"),
    ({"model": {"kind": "ease", "params": {"lambda": 3}}}, "ease", "unexpected keyword"),
])
def test_bad_values_raise(section, bad, match):
    with pytest.raises(ParamsError, match=match):
        runs.configure(**section)


def test_unknown_top_level_key_in_file(tmp_path):
    f = tmp_path / "typo.yaml"
    f.write_text("data: {dataset: synthetic}\nmodle: {kind: popularity}\n")
    with pytest.raises(ParamsError, match="modle"):
        runs.run_parameters(f)


def test_runner_fails_on_typo_before_executing(tmp_path):
    f = tmp_path / "typo.yaml"
    f.write_text("study: movielens\ndata: {dataset: synthetic}\ntrain: {max_epoch: 3}\n")
    proc = subprocess.run([sys.executable, "-m", "lib.run", str(f)], cwd=ROOT, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "TWOTOWER_BUILD_DIR": str(tmp_path / "build")})
    assert proc.returncode == 2
    assert "train.max_epoch" in proc.stderr and "max_epochs" in proc.stderr
    assert not (tmp_path / "build").exists()  # nothing ran


@pytest.mark.parametrize("nb", [*notebooks.RUN_NOTEBOOKS, notebooks.REPORT_NOTEBOOK])
def test_notebook_parameters_are_what_papermill_finds(nb):
    """The parameters cell is read without papermill (``--check`` stays fast): the same
    names, in order, with the same default values as ``papermill.inspect_notebook``."""
    import ast

    import papermill
    ours = notebooks.notebook_parameters_with_defaults(nb)
    theirs = {k: v["default"] for k, v in papermill.inspect_notebook(str(notebooks.NOTEBOOKS / nb)).items()}
    assert list(ours) == list(theirs)
    assert {k: ast.literal_eval(v) for k, v in ours.items()} == {k: ast.literal_eval(v) for k, v in theirs.items()}


@pytest.fixture
def notebooks_in_tmp(tmp_path, monkeypatch):
    """The parameters reader pointed at ``tmp_path``, its cache empty before and after."""
    monkeypatch.setattr(notebooks, "NOTEBOOKS", tmp_path)
    notebooks.notebook_parameters_with_defaults.cache_clear()
    yield tmp_path
    notebooks.notebook_parameters_with_defaults.cache_clear()


def test_notebook_parameters_cell_forms(notebooks_in_tmp):
    """Annotated and multi-line assignments count; other statements and untagged cells do not."""
    cell = {"cell_type": "code", "metadata": {"tags": ["parameters"]}, "outputs": [], "execution_count": None,
            "source": ["x = 1  # one\n", "y: int = 2\n", "z = {'a': 1,\n", "     'b': [2, 3]}\n",
                       "import os\n", "w: int\n", "a, b = 1, 2\n"]}
    other = {"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None, "source": "q = 5\n"}
    (notebooks_in_tmp / "nb.ipynb").write_text(json.dumps({"cells": [other, cell], "metadata": {}, "nbformat": 4,
                                                            "nbformat_minor": 5}))
    found = notebooks.notebook_parameters_with_defaults("nb.ipynb")
    assert found == {"x": "1", "y": "2", "z": "{'a': 1,\n     'b': [2, 3]}"}


def test_a_corrupt_notebook_is_named(notebooks_in_tmp):
    (notebooks_in_tmp / "nb.ipynb").write_text('{"cells": [')
    with pytest.raises(RuntimeError, match=r"nb\.ipynb: not a readable notebook \(JSONDecodeError"):
        notebooks.notebook_parameters_with_defaults("nb.ipynb")


def test_notebook_parameters_cover_the_params_sections():
    for nb in notebooks.RUN_NOTEBOOKS:
        assert set(runs.TOP_LEVEL) <= notebooks.notebook_parameters(nb)


def test_omitted_section_means_study_defaults_not_smoke(tmp_path):
    """A params file without `data` must not inherit the notebook's smoke dataset."""
    f = tmp_path / "x.yaml"
    f.write_text("study: movielens\nmodel: {kind: popularity}\n")
    params = runs.run_parameters(f)
    assert params["data"] == {} and runs.run_from_file(f).cfg["data"]["dataset"] == "ml-1m"
