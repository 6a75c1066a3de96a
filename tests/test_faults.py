"""Bad input and faults, as a user meets them: each fails clearly, names what is wrong and
loses nothing (issue 12's defects, one test each)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lib.core import notebooks, runs
from lib.core.params import ParamsError

ROOT = Path(__file__).resolve().parent.parent


def _papermill(nb, parameters, tmp_path):
    import papermill
    return papermill.execute_notebook(str(notebooks.NOTEBOOKS / nb), str(tmp_path / nb), parameters=parameters,
                                      cwd=str(notebooks.NOTEBOOKS), kernel_name="python3", progress_bar=False)


@pytest.mark.e2e
def test_notebook_run_directly_rejects_a_mistyped_parameter(tmp_path, monkeypatch):
    import papermill
    with pytest.raises(papermill.PapermillExecutionError) as info:
        _papermill("01_data_prep.ipynb", {"parmas_file": "../params/movielens/baseline_popularity.yaml"}, tmp_path)
    assert info.value.ename == "ParamsError"
    assert "unknown parameter 'parmas_file' (did you mean 'params_file'?)" in info.value.evalue


@pytest.mark.e2e
def test_notebook_rejects_values_that_params_file_would_ignore(tmp_path):
    import papermill
    with pytest.raises(papermill.PapermillExecutionError) as info:
        _papermill("02_train.ipynb", {"params_file": "../params/movielens/baseline_popularity.yaml",
                                      "train": {"max_epochs": 1}}, tmp_path)
    assert info.value.ename == "ParamsError" and "['train'] would be ignored" in info.value.evalue


@pytest.mark.unit
def test_relative_data_path_means_the_users_folder(tmp_path, monkeypatch):
    f = tmp_path / "movielens" / "mine.yaml"
    f.parent.mkdir()
    f.write_text("data: {dataset: ml-100k, path: my-data/ml-100k}\nmodel: {kind: popularity}\n")
    monkeypatch.chdir(tmp_path)
    assert runs.run_parameters(f)["data"]["path"] == str(tmp_path / "my-data" / "ml-100k")
    monkeypatch.chdir(ROOT / "notebooks")  # a kernel's folder: relative to the repository root
    assert runs.run_parameters(f)["data"]["path"] == str(ROOT / "my-data" / "ml-100k")


@pytest.mark.e2e
def test_relative_build_folder_is_the_users(tmp_path):
    """A relative $TWOTOWER_BUILD_DIR is where the user ran from, for the kernels too (they
    run in notebooks/), not split across two folders."""
    f = tmp_path / "movielens" / "pop.yaml"
    f.parent.mkdir()
    f.write_text("data: {dataset: synthetic}\nmodel: {kind: popularity}\nevaluate: {bootstrap: 50}\n")
    env = dict(os.environ, TWOTOWER_BUILD_DIR="rel-build", PYTHONPATH=str(ROOT), MPLBACKEND="Agg")
    proc = subprocess.run([sys.executable, "-m", "lib.run", str(f)], cwd=tmp_path, env=env, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    name = runs.run_parameters(f)["run"]
    assert (tmp_path / "rel-build" / "movielens" / "runs" / name / "metrics.json").is_file()
    assert not (ROOT / "notebooks" / "rel-build").exists()


@pytest.mark.unit
def test_top_level_run_key_is_rejected(tmp_path):
    f = tmp_path / "movielens" / "x.yaml"
    f.parent.mkdir()
    f.write_text("run: other\nmodel: {kind: popularity}\n")
    with pytest.raises(ParamsError, match="unknown top-level key.*'run'"):
        runs.run_parameters(f)


@pytest.mark.unit
@pytest.mark.parametrize("text,match", [
    ("", "the file is empty"),
    ("train: {max_epochs: 3}\ntrain: {batch_size: 8}\n", "key 'train' is given twice"),
    ("train: {learning_rate: 1e-3}\n", "YAML reads 1e-3 as a string"),
    ("data: ml-100k\n", "section 'data' must be a mapping"),
    ("train: 5\n", "section 'train' must be a mapping"),
    ("data: {split: [a, b, c]}\n", "data.split' must be a list of float"),
    ("seed: -1\n", "seed must be an integer >= 0"),
])
def test_bad_params_file_is_named_and_explained(tmp_path, text, match):
    f = tmp_path / "movielens" / "bad.yaml"
    f.parent.mkdir()
    f.write_text(text)
    with pytest.raises(ParamsError, match=match):
        runs.run_parameters(f)


@pytest.mark.unit
def test_unknown_study_says_where_it_came_from(tmp_path):
    f = tmp_path / "experiments" / "x.yaml"
    f.parent.mkdir()
    f.write_text("model: {kind: popularity}\n")
    with pytest.raises(ParamsError, match="unknown study 'experiments', from the folder it is in"):
        runs.run_parameters(f)


@pytest.mark.unit
def test_cuda_without_a_gpu_fails_at_check_time(tmp_path):
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    f = tmp_path / "movielens" / "gpu.yaml"
    f.parent.mkdir()
    f.write_text("device: cuda\nmodel: {kind: popularity}\n")
    with pytest.raises(ParamsError, match="torch sees no CUDA GPU"):
        runs.run_parameters(f)


def _fig(value: float):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [0, value])
    plt.close(fig)
    return fig


@pytest.mark.unit
def test_figures_belong_to_their_report(tmp_path):
    """Two reports in one folder never share a figure file; a render that fails before its
    markdown is written leaves the figures the old markdown shows; a finished render removes
    only its own figures that it no longer shows."""
    from lib.core import files, rendering
    a, b = tmp_path / "A.md", tmp_path / "B.md"
    figs_a = rendering.save_figures({"curve": _fig(1.0)}, a)
    files.atomic_write_text(a, f"![]({figs_a['curve']})\n")
    figs_b = rendering.save_figures({"curve": _fig(2.0)}, b)
    files.atomic_write_text(b, f"![]({figs_b['curve']})\n")
    rendering.prune_figures(b, figs_b)
    assert figs_a["curve"] != figs_b["curve"] and (tmp_path / figs_a["curve"]).is_file()
    assert rendering.save_figures({"curve": _fig(1.0)}, a) == figs_a  # same bytes, same file
    new_a = rendering.save_figures({"curve": _fig(3.0)}, a)  # a render of A that dies here ...
    assert (tmp_path / figs_a["curve"]).is_file()  # ... leaves what A.md shows in place
    files.atomic_write_text(a, f"![]({new_a['curve']})\n")
    rendering.prune_figures(a, new_a)
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == sorted(
        Path(r).name for r in (new_a["curve"], figs_b["curve"]))


def _popularity_run(tmp_path, name="pop"):
    f = tmp_path / "movielens" / f"{name}.yaml"
    f.parent.mkdir(exist_ok=True)
    f.write_text("data: {dataset: synthetic, synthetic: {n_users: 60, n_items: 40, n_ratings: 1500}}\n"
                 "model: {kind: popularity}\nevaluate: {bootstrap: 50}\n")
    return f


@pytest.mark.unit
@pytest.mark.parametrize("entry", ["data", "model", "metrics"])
def test_a_corrupt_cache_entry_is_rebuilt(tmp_path, entry, capsys):
    """A truncated file in a cache entry (a full disk, a kill) is detected and rebuilt,
    never read as a result, and the rebuilt result equals the first one."""
    import json

    from lib.movielens import steps
    run = runs.run_from_file(_popularity_run(tmp_path))
    steps.evaluate(run)
    first = json.loads((run.dir / "metrics.json").read_text())
    target = {"data": run.data_dir / "meta.json", "model": run.model_dir / "train.json",
              "metrics": run.dir / "metrics.json"}[entry]
    target.write_text(target.read_text()[:25])  # cut mid-JSON
    if entry == "data":
        data = steps.load_data(run)
        assert "incomplete or corrupt" in capsys.readouterr().out
        assert data.meta["ratings"] == first["data"]["ratings"] and json.loads(target.read_text())
        return
    if entry == "model":
        (run.dir / "metrics.json").unlink()  # else the (valid) metrics are simply reused
    steps.evaluate(run)
    after = json.loads((run.dir / "metrics.json").read_text())
    figures = lambda m: {s: {k: v for k, v in e.items() if k != "rank_seconds"} for s, e in m["splits"].items()}  # noqa: E731
    assert figures(after) == figures(first)


@pytest.mark.e2e
def test_force_rebuilds_data_model_and_metrics(tmp_path, monkeypatch):
    from lib.core import runner
    monkeypatch.setenv("TWOTOWER_BUILD_DIR", str(tmp_path / "build"))
    f = _popularity_run(tmp_path)
    run = runs.run_from_file(f)
    runner.run_one(f)
    paths = [run.data_dir / "prepared.npz", run.model_dir / "train.json", run.dir / "metrics.json"]
    before = [p.stat().st_mtime_ns for p in paths]
    runner.run_one(f)  # cached: nothing rebuilt
    assert [p.stat().st_mtime_ns for p in paths] == before
    runner.run_one(f, force=True)
    assert all(p.stat().st_mtime_ns > t for p, t in zip(paths, before))


@pytest.mark.unit
@pytest.mark.parametrize("value", [".inf", ".nan", "-.inf"])
def test_a_non_finite_number_is_rejected(tmp_path, value):
    f = tmp_path / "movielens" / "inf.yaml"
    f.parent.mkdir()
    f.write_text(f"train: {{learning_rate: {value}}}\n")
    with pytest.raises(ParamsError, match="train.learning_rate' must be a finite number"):
        runs.run_parameters(f)


@pytest.mark.unit
def test_a_diverging_run_stops_at_the_first_non_finite_loss_and_caches_nothing(tmp_path):
    """A NaN loss (here: a learning rate that overflows) stops training with a message
    naming the run and the epoch; no model and no metrics are cached."""
    from lib.movielens import steps
    from lib.movielens.train import DivergedError
    run = runs.configure(data={"dataset": "synthetic", "synthetic": {"n_users": 60, "n_items": 40, "n_ratings": 1500}},
                         train={"learning_rate": 1e30, "max_epochs": 5, "batch_size": 64}, run="diverge")
    with pytest.raises(DivergedError, match=r"run diverge: epoch 1: the training loss is nan"):
        steps.evaluate(run)
    assert not (run.model_dir / "train.json").exists() and not (run.model_dir / "model.pt").exists()
    assert not (run.dir / "metrics.json").exists()


@pytest.mark.unit
def test_a_diverging_wikiseq_run_stops_and_caches_nothing():
    from lib.core.params import load_yaml
    from lib.wikiseq import steps
    from lib.wikiseq.train import DivergedError
    smoke = load_yaml(ROOT / "params/wikiseq/smoke.yaml")
    smoke["train"] = dict(smoke["train"], learning_rate=1e30, max_epochs=2)
    run = runs.configure(study="wikiseq", run="diverge", **smoke)
    with pytest.raises(DivergedError, match=r"run diverge: epoch 1: the training loss is nan"):
        steps.evaluate(run)
    assert not run.model_dir.exists() and not (run.dir / "metrics.json").exists()


@pytest.mark.unit
@pytest.mark.parametrize("sections,match", [
    ({"model": {"kind": "two_tower", "params": {"l2": 3.0}}}, "a two-tower takes"),
    ({"data": {"dataset": "synthetic", "synthetic": {"n_users": 10, "n_items": 10, "n_ratings": 500}}},
     "n_ratings must be at most 80%"),
    ({"evaluate": {"k": 100}}, "params key 'evaluate.k' was renamed 'evaluate.top_k'"),
])
def test_movielens_params_that_would_be_ignored_or_hang_are_errors(sections, match):
    with pytest.raises(ParamsError, match=match):
        runs.configure(**sections)


@pytest.mark.unit
def test_a_broken_zip_and_an_unparsable_file_are_named(tmp_path):
    from lib.movielens import data
    bad_zip = tmp_path / "ml-100k.zip"
    bad_zip.write_bytes(b"not a zip")
    with pytest.raises(data.DataError, match=f"{bad_zip}: not a readable zip archive"):
        data.load("ml-100k", str(bad_zip), verify=False)
    folder = tmp_path / "ml-100k"
    folder.mkdir()
    (folder / "u.data").write_text("1\t2\tthree\t4\n")
    with pytest.raises(data.DataError, match=f"{folder / 'u.data'}: not in the expected format"):
        data.load("ml-100k", str(folder), verify=False)


@pytest.mark.unit
def test_prepared_data_follows_the_files_when_checksums_are_off(tmp_path):
    """With verify_checksums off, replacing a file at the same path gives another
    prepared-data key (nothing official pins its content)."""
    import os
    folder = tmp_path / "ml-100k"
    folder.mkdir()
    (folder / "u.data").write_text("1\t1\t5\t100\n")
    sections = {"data": {"dataset": "ml-100k", "path": str(folder), "verify_checksums": False}}
    before = runs.configure(**sections)
    keys = (before.data_key, before.train_key, before.metrics_key)
    assert (runs.configure(**sections).data_key, runs.configure(**sections).train_key) == keys[:2]
    (folder / "u.data").write_text("1\t1\t4\t100\n")
    os.utime(folder / "u.data", ns=(1, 1))
    after = runs.configure(**sections)
    # the data, and what is built on it (the model, the metrics), are not reused
    assert all(a != b for a, b in zip((after.data_key, after.train_key, after.metrics_key), keys))


@pytest.mark.unit
def test_two_params_files_of_one_name_never_share_a_run_folder(tmp_path, capsys):
    """The same file name in two folders: two runs, two folders, each its own metrics."""
    from lib.movielens import steps
    a, b = tmp_path / "a" / "movielens" / "x.yaml", tmp_path / "b" / "movielens" / "x.yaml"
    for f, kind in ((a, "popularity"), (b, "random")):
        f.parent.mkdir(parents=True)
        f.write_text(f"data: {{dataset: synthetic}}\nmodel: {{kind: {kind}}}\nevaluate: {{bootstrap: 50}}\n")
    run_a, run_b = runs.run_from_file(a), runs.run_from_file(b)
    assert run_a.dir != run_b.dir and run_a.cfg["run"].startswith("x-")
    steps.evaluate(run_a)
    steps.evaluate(run_b)
    import json
    kinds = [json.loads((r.dir / "metrics.json").read_text())["config"]["model"]["kind"] for r in (run_a, run_b)]
    assert kinds == ["popularity", "random"]
    assert runs.run_parameters(ROOT / "params/movielens/baseline_ease.yaml")["run"] == "baseline_ease"


@pytest.mark.unit
@pytest.mark.parametrize("sections,match", [
    ({"model": {"kind": "ease", "params": {"l2": -5}}}, r"model.params for 'ease': l2 must be > 0"),
    ({"model": {"kind": "itemknn", "select_on_validation": {"k": [50, 0]}}}, r"select_on_validation.k = 0"),
    ({"train": {"threads": 0}}, "train.threads must be >= 1"),
    ({"evaluate": {"bootstrap": 0}}, "evaluate.bootstrap must be >= 20"),
    ({"evaluate": {"latency_repeats": 0}}, "evaluate.latency_repeats must be >= 1"),
    ({"evaluate": {"diversity_k": 0}}, "evaluate.diversity_k must be in 2..top_k"),
    ({"train": {"positive_min_rating": 9}}, "train.positive_min_rating must be in 0..5"),
])
def test_impossible_values_fail_at_check_time(sections, match):
    with pytest.raises(ParamsError, match=match):
        runs.configure(**sections)


@pytest.mark.unit
def test_a_protocol_that_leaves_nothing_is_a_data_error(tmp_path):
    from lib.movielens import data
    src = data.write_synthetic_ml1m(tmp_path / "syn", n_users=40, n_items=30, n_ratings=600, seed=0)
    raw = data.parse_ml1m(src, verify=False)
    with pytest.raises(data.DataError, match="no ratings left after the 100000-core filter"):
        data.prepare(raw, min_count=100_000)
    with pytest.raises(data.DataError, match=r"leaves \['val'\] empty"):
        data.prepare(raw, fractions=(0.9995, 0.0001, 0.0004))


@pytest.mark.unit
@pytest.mark.parametrize("text,match", [
    ("train: {max_epochs: null}\n", "train.max_epochs' must not be null"),
    ("data: {split: null}\n", "data.split' must not be null"),
])
def test_null_where_a_value_is_needed_is_an_error(tmp_path, text, match):
    f = tmp_path / "movielens" / "null.yaml"
    f.parent.mkdir()
    f.write_text(text)
    with pytest.raises(ParamsError, match=match):
        runs.run_parameters(f)
    assert runs.configure(study="wikiseq", data={"n_train": None}).cfg["data"]["n_train"] is None


@pytest.mark.unit
def test_a_hard_negative_pool_larger_than_the_catalog_is_named(synthetic_data):
    from lib.movielens import steps
    from lib.movielens.train import Trainer
    loss = dict(steps.DEFAULTS["loss"], num_hard_negatives=4, hard_negative_pool=100_000)
    with pytest.raises(ParamsError, match=r"hard_negative_pool \(100000\) is larger than the catalog \(\d+ items\)"):
        Trainer(synthetic_data, steps.DEFAULTS["model"], loss, steps.DEFAULTS["train"], seed=0)


@pytest.mark.unit
def test_a_hard_negative_pool_larger_than_a_users_unseen_items_is_named(synthetic_data):
    """A pool larger than what some user has not seen would mine that user's training items."""
    import numpy as np

    from lib.movielens import steps
    from lib.movielens.train import Trainer
    n_unseen = synthetic_data.n_items - np.diff(synthetic_data.matrix("train").indptr)
    user = int(np.argmin(n_unseen))
    loss = dict(steps.DEFAULTS["loss"], num_hard_negatives=1, hard_negative_pool=int(n_unseen[user]) + 1)
    with pytest.raises(ParamsError, match=rf"hard_negative_pool \({n_unseen[user] + 1}\) is larger than the "
                                          rf"{n_unseen[user]} items user row {user} has not seen in training"):
        Trainer(synthetic_data, steps.DEFAULTS["model"], loss, steps.DEFAULTS["train"], seed=0)
    loss["hard_negative_pool"] = int(n_unseen[user])  # the largest pool that holds only unseen items
    Trainer(synthetic_data, steps.DEFAULTS["model"], loss, steps.DEFAULTS["train"], seed=0)
