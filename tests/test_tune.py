"""make tune: one budget of Optuna trials per model on validation, resumable, and tuned
params files that reproduce their best trial."""
import json
import subprocess

import pytest
import yaml

from lib.core import runs
from lib.core.params import ParamsError
from lib.movielens import steps, tune

pytestmark = pytest.mark.e2e


def _tune_file(tmp_path, trials: int = 3) -> str:
    base = tmp_path / "ease_base.yaml"
    base.write_text("study: movielens\ndata: {dataset: ml-1m}\nmodel: {kind: ease, select_on_validation: {l2: [1.0, 2.0]}}\n")
    spec = {"study": "movielens", "tune": {"datasets": ["synthetic"], "trials": trials, "seed": 0,
                                           "output": str(tmp_path / "tuned"),
                                           "models": [{"name": "ease", "params": str(base),
                                                       "space": {"model.params.l2": {"float": [1.0, 1000.0], "log": True}}}]}}
    f = tmp_path / "tune.yaml"
    f.write_text(yaml.safe_dump(spec))
    return str(f)


def _two_model_tune_file(tmp_path, trials: int) -> str:
    """The tune file with a second model, "ease_again": the same space, another sampler seed."""
    f = _tune_file(tmp_path, trials)
    spec = yaml.safe_load(open(f))
    spec["tune"]["models"].append({**spec["tune"]["models"][0], "name": "ease_again"})
    (tmp_path / "tune.yaml").write_text(yaml.safe_dump(spec))
    return f


def test_tuning_writes_the_best_trial_and_resumes(tmp_path, capsys):
    f = _tune_file(tmp_path)
    assert tune.main([f]) == 0
    table = json.loads((tmp_path / "tuned" / "synthetic.json").read_text())
    ease = table["models"]["ease"]
    assert (ease["trials"], ease["failed"], table["trials_per_model"]) == (3, 0, 3)
    out = capsys.readouterr().out
    values = [float(line.split("val NDCG@10 ")[1].split()[0]) for line in out.splitlines() if "trial " in line]
    assert len(values) == 3 and ease["best_value"] == pytest.approx(max(values), abs=5e-5)
    # the tuned file: the base file with the best value, no grid, on the tuned dataset; it reproduces the trial
    tuned = tmp_path / "tuned" / "synthetic_ease.yaml"
    raw = yaml.safe_load(tuned.read_text())
    assert raw["model"]["params"] == {"l2": ease["best_params"]["model.params.l2"]}
    assert "select_on_validation" not in raw["model"] and raw["data"]["dataset"] == "synthetic"
    run = runs.run_from_file(tuned, {"evaluate": {"splits": ["val"]}})
    steps.evaluate(run)
    got = json.loads((run.dir / "metrics.json").read_text())["splits"]["val"]["metrics"]["ndcg@10"]
    assert got == pytest.approx(ease["best_value"], rel=1e-9)
    # resumed: the trials done are not run again; a larger budget adds only the missing ones
    assert tune.main([f]) == 0
    assert "trial " not in capsys.readouterr().out
    assert tune.main([f, "--trials", "4"]) == 0
    assert [line for line in capsys.readouterr().out.splitlines() if "trial " in line][0].startswith(
        "[synthetic ease] trial 4/4")
    table = json.loads((tmp_path / "tuned" / "synthetic.json").read_text())
    assert table["models"]["ease"]["trials"] == 4
    # each row names the code its trials ran (this checkout's commit), and the table's cost is its rows' sum
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=runs.ROOT, capture_output=True,
                            text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=runs.ROOT,
                           capture_output=True, text=True).stdout.strip()
    commit += "-dirty" if dirty else ""
    assert table["models"]["ease"]["commits"] == table["commits"] == [commit]
    assert table["seconds"] == sum(m["seconds"] for m in table["models"].values())


@pytest.mark.unit
def test_the_commit_is_dirty_for_changed_code_not_for_the_tunings_own_output(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    (repo / "params" / "tuning").mkdir(parents=True)
    (repo / "code.py").write_text("x = 1\n")
    (repo / "params" / "tuning" / "ml-1m.json").write_text("{}\n")
    def git(*args):
        return subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", *args], cwd=repo,
                              capture_output=True, text=True, check=True).stdout.strip()
    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "x")
    head = git("rev-parse", "--short", "HEAD")
    monkeypatch.setattr(tune, "ROOT", repo)
    (repo / "params" / "tuning" / "ml-1m.json").write_text('{"models": {}}\n')  # a tuning's own table
    assert tune._commit(repo / "params" / "tuning") == head
    (repo / "code.py").write_text("x = 2\n")
    assert tune._commit(repo / "params" / "tuning") == head + "-dirty"


def test_a_second_tuning_started_before_the_first_ended_keeps_its_rows(tmp_path, monkeypatch):
    """Two `tune --models ...` at once: each merges its rows into the table as it is when it writes."""
    f = _two_model_tune_file(tmp_path, trials=1)
    table_file = tmp_path / "tuned" / "synthetic.json"
    real = tune.tune_model

    def slow(model, *args):  # the first invocation's table is written while this one tunes
        if model["name"] == "ease_again":
            assert tune.main([f, "--models", "ease"]) == 0
        return real(model, *args)
    monkeypatch.setattr(tune, "tune_model", slow)
    assert tune.main([f, "--models", "ease_again"]) == 0
    assert set(json.loads(table_file.read_text())["models"]) == {"ease", "ease_again"}


def test_tuning_some_models_keeps_the_other_rows(tmp_path):
    f = _two_model_tune_file(tmp_path, trials=2)
    table_file = tmp_path / "tuned" / "synthetic.json"
    assert tune.main([f, "--models", "ease"]) == 0
    first = json.loads(table_file.read_text())
    # a row written before rows carried commits (an older table) keeps the table's old commit
    first["commit"] = "0ld0ld0"
    del first["commits"], first["models"]["ease"]["commits"]
    table_file.write_text(json.dumps(first))
    assert tune.main([f, "--models", "ease_again"]) == 0
    table = json.loads(table_file.read_text())
    assert set(table["models"]) == {"ease", "ease_again"}
    assert table["models"]["ease"]["commits"] == ["0ld0ld0"]
    assert table["models"]["ease_again"]["commits"] != ["0ld0ld0"] and len(table["commits"]) == 2
    assert table["seconds"] == pytest.approx(table["models"]["ease"]["seconds"] + table["models"]["ease_again"]["seconds"])


def test_models_tuned_in_parallel_find_what_one_process_finds(tmp_path, monkeypatch):
    """--jobs 2 tunes two models at once in worker processes; each model's trials stay
    sequential under its own seeded sampler, so the table is the one a single process writes."""
    f = _two_model_tune_file(tmp_path, trials=2)
    tables = []
    for jobs in ("1", "2"):
        monkeypatch.setenv("TWOTOWER_BUILD_DIR", str(tmp_path / f"build{jobs}"))
        assert tune.main([f, "--jobs", jobs]) == 0
        tables.append(json.loads((tmp_path / "tuned" / "synthetic.json").read_text()))
    for name in ("ease", "ease_again"):
        one, two = (t["models"][name] for t in tables)
        assert (two["best_params"], two["best_value"], two["trials"]) == (one["best_params"], one["best_value"], 2)
    assert tables[0]["models"]["ease"]["best_params"] != tables[0]["models"]["ease_again"]["best_params"]


@pytest.mark.unit
def test_an_impossible_jobs_count_is_refused(tmp_path, capsys):
    assert tune.main([_tune_file(tmp_path), "--jobs", "0"]) == 2
    assert "--jobs must be >= 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "tuned").exists()


@pytest.mark.parametrize("space,match", [
    ({"model.params.l2": {"float": [10.0, 1.0]}}, "low < high"),
    ({"model.params.l2": {"float": [0.0, 1.0], "log": True}}, "low > 0 with log"),
    ({"model.params.l2": {"uniform": [1.0, 2.0]}}, "one of"),
    ({"model.params.lambda": {"float": [1.0, 2.0]}}, "unexpected keyword"),
])
def test_a_bad_search_space_fails_before_any_trial(tmp_path, space, match):
    f = _tune_file(tmp_path)
    spec = yaml.safe_load(open(f))
    spec["tune"]["models"][0]["space"] = space
    (tmp_path / "tune.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(ParamsError, match=match):
        tune.tune_config(tmp_path / "tune.yaml")


@pytest.mark.unit
def test_the_committed_tune_file_and_tuned_files_are_valid():
    cfg = tune.tune_config(runs.ROOT / "params/movielens/tuning/tune.yaml")
    assert {m["name"] for m in cfg["models"]} >= {"ease", "ials", "itemknn", "bpr", "two_tower_u11"}
    for f in sorted((runs.ROOT / "params/movielens/tuning").glob("*_*.yaml")):
        runs.run_parameters(f)
