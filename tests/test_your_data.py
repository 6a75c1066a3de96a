"""The study on a user's own interactions file: the generic loader against the built-in
MovieLens loaders, and a report on a generated log from one params file."""
import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lib.core import pipeline
from lib.core.params import ParamsError
from lib.core.runs import configure, read_report_file, run_parameters
from lib.movielens import data as movielens, steps
from lib.movielens.example import write_example

CASES = [("ml-100k", "csv"), ("ml-100k", "parquet"), ("ml-1m", "parquet")]


def _written(raw: movielens.RawData, folder, fmt: str) -> dict:
    """The raw ratings of a built-in dataset as a user's export: renamed columns, string ids."""
    r = raw.ratings
    table = pa.table({"member": "m" + r["user_id"].astype(str), "sku": "s" + r["item_id"].astype(str),
                      "stars": r["rating"], "when": r["timestamp"]})
    path = folder / f"ratings.{fmt}"
    if fmt == "csv":
        import pyarrow.csv as pacsv
        pacsv.write_csv(table, path)
    else:
        pq.write_table(table, path)
    return {"dataset": "interactions", "path": str(path),
            "columns": {"user": "member", "item": "sku", "timestamp": "when", "rating": "stars"}}


@pytest.mark.parametrize("dataset, fmt", CASES)
def test_generic_loader_gives_the_built_in_split_and_metrics(tmp_path, shared_data, dataset, fmt):
    raw = movielens.load(dataset, str(shared_data / dataset))
    builtin = movielens.prepare(raw)
    d = _written(raw, tmp_path, fmt)
    run = configure(data=d, model={"kind": "itemknn", "params": {"k": 100}})
    generic = movielens.build_prepared(run.cfg["data"], 0, tmp_path / "build")
    assert [len(generic.train), len(generic.val), len(generic.test)] == \
        [len(builtin.train), len(builtin.val), len(builtin.test)]
    if dataset == "ml-1m":
        assert [len(generic.train), len(generic.val), len(generic.test)] == [799_688, 99_961, 99_962]
    # the same interactions in each split, under the string ids
    for split in ("train", "val", "test"):
        a, b = getattr(builtin, split), getattr(generic, split)
        assert ("m" + pd.Series(builtin.user_ids[a["user"]]).astype(str)).tolist() == generic.user_ids[b["user"]].tolist()
        assert ("s" + pd.Series(builtin.item_ids[a["item"]]).astype(str)).tolist() == generic.item_ids[b["item"]].tolist()
    # and the same metrics from the same model code (items are indexed in another order: ties aside, equal)
    from lib.movielens import baselines, evaluate
    cfg = run.cfg
    got = {}
    for name, prepared in (("builtin", builtin), ("generic", generic)):
        model = baselines.BASELINES["itemknn"](k=100).fit(prepared.matrix("train"), prepared.train)
        got[name], *_ = evaluate.split_metrics(model, prepared, cfg, "test", "cpu")
    for metric in ("recall@10", "ndcg@10", "hit_rate@10"):
        assert got["generic"][metric] == pytest.approx(got["builtin"][metric], abs=2e-4)


def _report_file(tmp_path, models, extra: dict | None = None):
    write_example(tmp_path / "data", n_users=400, n_items=120, n_interactions=9_000)
    folder = tmp_path / "mine"
    folder.mkdir()
    d = tmp_path / "data"
    body = {
        "data": {"dataset": "interactions", "path": str(d / "events.csv"),
                 "columns": {"user": "user_id", "item": "sku", "timestamp": "ts", "rating": None},
                 "user_features": {"path": str(d / "users.csv"), "key": "user_id",
                                   "columns": {"country": "categorical", "age": "numeric"}},
                 "item_features": {"path": str(d / "items.parquet"), "key": "sku",
                                   "columns": {"genres": {"type": "multi_categorical", "sep": "|"}, "price": "numeric"}},
                 **(extra or {})},
        "models": models,
        "report": {"output": str(tmp_path / "out" / "mine.md"), "bootstrap": 200, "latency": False},
    }
    path = folder / "report.yaml"
    path.write_text(json.dumps(body))  # JSON is YAML
    return path


def test_a_report_on_a_generated_log_from_one_params_file(tmp_path):
    path = _report_file(tmp_path, ["popularity", "ease", "two_tower_u1", "two_tower_u3"])
    study, rcfg = read_report_file(path)
    assert study == "movielens" and rcfg["name"] == "mine" and len(rcfg["derived_runs"]) == 4
    result = pipeline.render_report(study, str(path), run_overrides={"train": {"max_epochs": 2}})
    md = (tmp_path / "out" / "mine.md").read_text()
    ctx = json.loads((tmp_path / "out" / "mine.json").read_text())
    assert result["report"] == str(tmp_path / "out" / "mine.md")
    d = ctx["data"]
    # every row read is accounted for: kept + dropped (duplicates, k-core)
    assert d["rows_read"] == d["ratings"] + sum(d["dropped"].values())
    assert sum(s["ratings"] for s in d["splits"].values()) == d["ratings"]
    assert f"| Interactions kept | {d['ratings']} |" in md
    assert "**Protocol: global temporal split 80/10/10; queries read their training history (reference)**" in md
    assert "every held-out interaction (the log has no rating column)" in md
    assert {"age", "country"} == set(d["features"]["user"]) and d["features"]["item"]["genres"]["vocabulary"] == 15
    # the verdict in words agrees with the paired figures it quotes
    for metric, words in zip(ctx["cmp_metrics"], ctx["words"]):
        p = ctx["paired"][metric]
        want = "loses" if p["high"] < 0 else "wins" if p["low"] > 0 else "within noise"
        assert f"{metric}: the two-tower {want}" in words or f"{metric}: {want}" in words
        assert f"{p['mean_diff']:+.4f}" in words and words in md
    assert ctx["best_base"]["label"] == max(ctx["baselines"], key=lambda r: r["m"]["ndcg@10"])["label"]
    # the variant chosen is the one with the best validation NDCG@10, and only it is marked
    chosen = max(ctx["variants"], key=lambda v: v["m"]["ndcg@10"])
    assert [v["chosen"] for v in ctx["variants"]] == [v is chosen for v in ctx["variants"]]
    assert md.count("**(chosen)**") == 1 and f"{chosen['label']} **(chosen)**" in md
    for rel in ctx["figs"].values():
        assert (tmp_path / "out" / rel).is_file() and rel in md
    # the device of each run, in the provenance table
    prov = ctx["provenance"]
    assert len(prov["run_devices"]) >= 4 and set(prov["run_devices"]) == set(prov["wall_seconds"])  # + derived runs
    for run, device in prov["run_devices"].items():
        assert device == "cpu" and f"| {run} | cpu | {prov['wall_seconds'][run]} |" in md


def test_a_log_without_features_still_gets_two_tower_and_baselines(tmp_path):
    path = _report_file(tmp_path, ["popularity", "two_tower_u0", "two_tower_l64t"])
    body = json.loads(path.read_text())
    del body["data"]["user_features"], body["data"]["item_features"]
    path.write_text(json.dumps(body))
    pipeline.render_report("movielens", str(path), run_overrides={"train": {"max_epochs": 2}})
    md = (tmp_path / "out" / "mine.md").read_text()
    ctx = json.loads((tmp_path / "out" / "mine.json").read_text())
    assert "No side features declared" in md
    # both tower families are candidates, and validation chooses between them
    assert [v["label"].split(":")[0] for v in ctx["variants"]] == ["u0", "l64t"]
    chosen = max(ctx["variants"], key=lambda v: v["m"]["ndcg@10"])
    assert f"Two-tower ({chosen['label'].split(':')[0]}, chosen on validation)" in md


def test_a_dataset_report_runs_every_baseline_and_both_tower_families_by_default(tmp_path):
    path = _report_file(tmp_path, None)
    _, rcfg = read_report_file(path)
    from lib.movielens.report import DATASET_MODELS
    assert [m["label"] for m in rcfg["models"]] == [label for label, _, _ in DATASET_MODELS.values()]
    archs = {}
    for params, overrides in rcfg["derived_runs"]:
        run = run_parameters(params, overrides)
        assert run["data"]["path"] == str(tmp_path / "data" / "events.csv")  # every model reads the user's log
        if run["model"].get("kind", "two_tower") == "two_tower":
            archs.setdefault(run["model"].get("architecture", "mlp"), set()).add(run["loss"]["temperature"])
    assert archs == {"mlp": {0.05}, "linear": {0.05}}


@pytest.mark.parametrize("change, message", [
    ({"models": ["eas"]}, "unknown model 'eas' (did you mean 'ease'?)"),
    ({"modles": []}, "unknown top-level key(s) ['modles']"),
    ({"data": {"dataset": "interactions", "path": "/nowhere.txt"}}, "data.path: /nowhere.txt: unknown file type"),
    ({"data": {"dataset": "interactions"}}, "data.path: the interactions file (CSV, TSV or Parquet)"),
    ({"data": {"dataset": "interactions", "path": "EXISTING", "duplicates": "latest"}}, "data.duplicates: unknown 'latest'; known: 'first', 'last' or 'all'"),
    ({"data": {"dataset": "interactions", "path": "EXISTING", "columns": {"usr": "a"}}}, "unknown params key 'data.columns.usr'"),
    ({"data": {"dataset": "interactions", "path": "EXISTING", "leave_last": 1, "split_dates": ["2016-01-01", "2017-01-01"]}},
     "data.split_dates and data.leave_last are two protocols"),
    ({"data": {"dataset": "interactions", "path": "EXISTING", "item_features": {"path": "EXISTING", "key": "sku",
                                                                                "columns": {"g": "multi"}}}},
     "data.item_features.columns.g.type: unknown feature type 'multi'"),
    ({"data": {"dataset": "ml-1m", "columns": {"user": "x"}}}, "data.columns applies to data.dataset: interactions only"),
])
def test_bad_report_files_fail_at_check_with_the_key(tmp_path, change, message):
    from lib.core.runs import report_runs
    path = _report_file(tmp_path, ["popularity"])
    body = json.loads(path.read_text())
    existing = body["data"]["path"]
    text = json.dumps({**body, **change}).replace("EXISTING", existing)
    path.write_text(text)
    with pytest.raises(ParamsError) as err:
        report_runs(path)
    assert message in str(err.value)


def test_ease_refuses_a_catalog_above_its_bound():
    from lib.movielens.baselines import EASE
    import scipy.sparse as sp
    with pytest.raises(ValueError, match="EASE on 50 items .* refuses above model.params.max_items = 40"):
        EASE(l2=10.0, max_items=40).fit(sp.random(30, 50, density=0.1, format="csr", random_state=0))
    assert np.isfinite(EASE(l2=10.0, max_items=50).fit(sp.random(30, 50, density=0.1, format="csr",
                                                                 random_state=0)).B_).all()


def test_feature_keys_are_resolved_against_the_user_folder(tmp_path, monkeypatch):
    path = _report_file(tmp_path, ["popularity"])
    body = json.loads(path.read_text())
    body["data"]["item_features"]["path"] = "data/items.parquet"
    path.write_text(json.dumps(body))
    monkeypatch.chdir(tmp_path)
    from lib.core.runs import run_parameters, ROOT
    params = run_parameters(ROOT / "params/movielens/baseline_popularity.yaml", body and
                            {"data": body["data"]})
    assert params["data"]["item_features"]["path"] == str(tmp_path / "data" / "items.parquet")
    assert steps.data_key_extra(configure(**params).cfg)["files"]  # sizes and times of the user's files


def test_a_report_under_another_protocol_names_it(tmp_path):
    path = _report_file(tmp_path, ["popularity", "itemknn"], extra={"leave_last": 1})
    body = json.loads(path.read_text())
    body["evaluate"] = {"query_history": "train+val", "refit": True}
    path.write_text(json.dumps(body))
    pipeline.render_report("movielens", str(path))
    md = (tmp_path / "out" / "mine.md").read_text()
    ctx = json.loads((tmp_path / "out" / "mine.json").read_text())
    assert ("**Protocol: per-user temporal leave-last-1 (each user's last 1 interactions to test, the 1 before to "
            "validation); queries read their history through validation (no retraining); every model refit on "
            "train+val with what validation chose, then tested**") in md
    assert all(r["protocol"] == {"query_history": "train+val", "refit": True} and "refit" in r
               for r in ctx["runs"].values())
    # per user: one test interaction each, so HitRate@10 = Recall@10 for every model
    for row in ctx["comparison"]:
        assert row["m"]["hit_rate@10"] == pytest.approx(row["m"]["recall@10"])


def test_a_missing_data_file_is_named_when_the_data_is_prepared(tmp_path):
    """--check validates a report whose data does not exist yet (the example's, before
    `make example`); preparing it names the missing file and leaves no cache entry."""
    from lib.core.runs import report_runs, run_from_file
    from lib.core.files import DataError
    path = _report_file(tmp_path, ["popularity"])
    body = json.loads(path.read_text())
    body["data"]["item_features"]["path"] = str(tmp_path / "gone.parquet")
    path.write_text(json.dumps(body))
    _, _, items = report_runs(path)
    run = run_from_file(*items[0])
    with pytest.raises(DataError, match="gone.parquet: no such file"):
        steps.prepare(run)
    assert not run.data_dir.exists() and not list(run.data_dir.parent.glob(f".{run.data_dir.name}*"))


def test_check_validates_the_example_before_its_data_exists(tmp_path, capsys):
    """`python -m lib.run --check params/*/*.yaml` on a fresh clone: the example report file
    (its data is generated by `make example`) is a report file and passes; run as a run
    file, it says to use --report."""
    from lib import run as cli
    from lib.core.runs import ROOT, run_parameters
    example = tmp_path / "example" / "report.yaml"
    example.parent.mkdir()
    example.write_text((ROOT / "params/example/report.yaml").read_text().replace("data/example/", "not-yet/"))
    assert cli.check([str(example)]) == 0
    assert capsys.readouterr().out.strip() == f"ok: {example}"
    with pytest.raises(ParamsError, match="is a report file: run it with --report"):
        run_parameters(example)


def test_the_example_data_is_rewritten_only_when_its_bytes_change(tmp_path):
    """`make example` twice: the second leaves the files (and their times, hence the
    cached runs) as they are; a changed size rewrites them, complete."""
    folder = write_example(tmp_path / "ex", n_users=200, n_items=60, n_interactions=3_000)
    times = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    assert sorted(times) == ["events.csv", "items.parquet", "users.csv"]
    write_example(folder, n_users=200, n_items=60, n_interactions=3_000)
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == times
    write_example(folder, n_users=200, n_items=60, n_interactions=3_500)
    assert sum(1 for _ in open(folder / "events.csv")) == 3_501  # a header and the new rows
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_a_report_on_another_device_is_no_smoke_render(tmp_path):
    """run_overrides mark a smoke render (smaller data, fewer epochs), except the device
    alone (make report DEVICE=...): that report is the real one, computed elsewhere."""
    path = _report_file(tmp_path, ["popularity"])
    md = tmp_path / "out" / "mine.md"
    pipeline.render_report("movielens", str(path), run_overrides={"device": "cpu"})
    assert "Smoke render" not in md.read_text()
    pipeline.render_report("movielens", str(path), run_overrides={"device": "cpu", "train": {"max_epochs": 2}})
    assert "**Smoke render**" in md.read_text()
