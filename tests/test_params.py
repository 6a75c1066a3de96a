"""Bad params fail the run, clearly, before anything executes."""
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


def test_notebook_parameters_cover_the_params_sections():
    for nb in notebooks.RUN_NOTEBOOKS:
        assert set(runs.TOP_LEVEL) <= notebooks.notebook_parameters(nb)


def test_omitted_section_means_study_defaults_not_smoke(tmp_path):
    """A params file without `data` must not inherit the notebook's smoke dataset."""
    f = tmp_path / "x.yaml"
    f.write_text("study: movielens\nmodel: {kind: popularity}\n")
    params = runs.run_parameters(f)
    assert params["data"] == {} and runs.run_from_file(f).cfg["data"]["dataset"] == "ml-1m"
