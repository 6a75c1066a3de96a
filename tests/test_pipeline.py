"""End to end: params file -> papermill notebooks -> metrics -> report.

The figures are pinned (pytest.approx): training is deterministic on CPU, so a change in
any of them means a change of behaviour, which must be deliberate (then re-pin them)."""
import json
from pathlib import Path

import pytest

from lib.core import files, notebooks, pipeline, rendering, runner

ROOT = Path(__file__).resolve().parent.parent
SMOKE = {"data": {"dataset": "synthetic"}, "train": {"max_epochs": 1, "batch_size": 256},
         "evaluate": {"bootstrap": 50, "latency_repeats": 20}}

# Two-tower figures pinned on each kind of CPU machine these tests have run on: the same code,
# params and seed give the same bits on one machine, but torch's CPU kernels differ between
# kinds (here: the machines of 2026-11 and CI until then; an AVX2-only machine, torch's
# ``get_cpu_capability()`` "AVX2", on 2026-12-02), and a last-bit difference in training grows
# into the metrics over the epochs. A run must equal one kind's figures, all of them, to 1e-6.
MACHINES = ("machines of 2026-11", "AVX2 machine of 2026-12-02")


def _one_kind_of(observed: tuple, pins: dict) -> str:
    """The machine kind whose pinned figures ``observed`` equals (each to rel 1e-6)."""
    for kind, want in pins.items():
        if observed == pytest.approx(want, rel=1e-6):
            return kind
    raise AssertionError(f"{observed} equals the figures pinned on none of the machine kinds: {pins}")


@pytest.mark.e2e
@pytest.mark.slow
def test_ml100k_end_to_end_through_notebooks(tmp_path, shared_data, monkeypatch):
    monkeypatch.setenv("TWOTOWER_DATA_ROOT", str(shared_data))
    f = tmp_path / "movielens" / "e2e.yaml"
    f.parent.mkdir()
    f.write_text("data: {dataset: ml-100k}\nmodel: {kind: two_tower, id_embeddings: true}\n"
                 "train: {max_epochs: 3, batch_size: 512}\nevaluate: {bootstrap: 100}\nseed: 3\n")
    run_dir = runner.run_one(f)
    for nb in notebooks.RUN_NOTEBOOKS:
        assert (run_dir / nb).is_file()
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["data"]["name"] == "ml-100k"
    test = m["splits"]["test"]
    # pinned when negatives moved to the device (exact sampling among unseen items, a torch
    # generator: other draws than numpy's rejection sampling of 84adf17)
    assert test["n_users"] == 152
    observed = (*(test["metrics"][k] for k in ("recall@10", "ndcg@10", "hit_rate@10")),
                *(r["train_loss"] for r in m["train"]["history"]))
    _one_kind_of(observed, dict(zip(MACHINES, [
        (0.06369559739253364, 0.21590901830658282, 0.5921052631578947,
         3.5718797253024195, 3.299763931766633, 3.150783021988407),
        (0.06673945126680253, 0.21852468324988852, 0.5986842105263158,
         3.5719832881804434, 3.300504819808468, 3.1508741809475804)])))
    assert test["faiss_equals_bruteforce@10"] == 1.0
    # second call is cached: nothing re-executes
    mtime = (run_dir / "metrics.json").stat().st_mtime
    runner.run_one(f)
    assert (run_dir / "metrics.json").stat().st_mtime == mtime


@pytest.mark.unit
def test_failed_render_keeps_the_last_good_report(tmp_path):
    out = tmp_path / "REPORT.md"
    out.write_text("good report\n")
    with pytest.raises(Exception):
        files.atomic_write_text(out, rendering.render("evaluation_report.md.j2", {"title": "x"}))
    assert out.read_text() == "good report\n"
    assert [p.name for p in tmp_path.iterdir()] == ["REPORT.md"]  # no temp file left


@pytest.mark.unit
def test_report_wall_counts_the_runs_made_since_make_report_started(tmp_path, monkeypatch):
    """A report's wall time is the whole report's only when every run was made by it: runs
    whose metrics.json predates the start are counted apart (a folder named twice, once)."""
    import os
    import time
    old, new = tmp_path / "old", tmp_path / "new"
    for folder in (old, new):
        folder.mkdir()
        (folder / "metrics.json").write_text("{}")
    started = time.time() - 60
    os.utime(old / "metrics.json", (started - 10, started - 10))
    monkeypatch.setenv(rendering.REPORT_START_ENV, str(started))
    made = rendering.report_wall([old, new, new])
    assert (made["n_run_dirs"], made["fresh_runs"], made["started_at"]) == (2, 1, started)
    assert 60 <= made["report_wall_seconds"] < 70
    monkeypatch.delenv(rendering.REPORT_START_ENV)
    assert rendering.report_wall([old, new]) == {"report_wall_seconds": None, "started_at": None,
                                                 "fresh_runs": 0, "n_run_dirs": 2}


@pytest.mark.unit
def test_the_test_summary_says_whether_this_invocation_wrote_it(tmp_path, monkeypatch):
    """A render through `make report REPORT=...` reads whatever results file an earlier
    invocation left: the summary says so instead of claiming the tests ran alongside."""
    import os
    import time

    from lib.movielens.report import _test_summary
    xml = tmp_path / "test-results.xml"
    xml.write_text('<testsuites><testsuite name="pytest" tests="3" failures="1" errors="0" skipped="1" time="2.5">'
                   '<testcase classname="tests.test_a" name="x"/><testcase classname="tests.test_a" name="y"/>'
                   '<testcase classname="tests.test_b" name="z"/></testsuite></testsuites>')
    started = time.time()
    os.utime(xml, (started - 100, started - 100))
    monkeypatch.setenv(rendering.REPORT_START_ENV, str(started))
    summary = _test_summary(xml)
    assert (summary["passed"], summary["failures"], summary["skipped"], summary["seconds"]) == (1, 1, 1, 2.5)
    assert summary["by_file"] == {"test_a": 2, "test_b": 1}
    assert summary["this_invocation"] is False
    assert summary["written_at"] == time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started - 100))
    os.utime(xml, (started + 1, started + 1))
    assert _test_summary(xml)["this_invocation"] is True
    monkeypatch.delenv(rendering.REPORT_START_ENV)
    assert _test_summary(xml)["this_invocation"] is None


@pytest.mark.e2e
@pytest.mark.slow
def test_smoke_report_figures(tmp_path):
    """The whole MovieLens report rendered on generated data: every run trained and
    evaluated, the choice on validation, the paired test and the verdicts, as numbers."""
    out = tmp_path / "EVAL.md"
    pipeline.render_report("movielens", str(ROOT / "params/movielens/report.yaml"), output=str(out),
                           run_overrides=SMOKE)
    c = json.loads(out.with_suffix(".json").read_text())
    assert c["main_row"]["m"]["ndcg@10"] == pytest.approx(0.27025506826241735, rel=1e-6)
    assert c["main_row"]["m"]["recall@10"] == pytest.approx(0.4309894385769872, rel=1e-6)
    assert c["best_params"] == "params/movielens/tt_f1_interactions_fullsoftmax.yaml"
    _one_kind_of((c["best_row"]["m"]["ndcg@10"], c["paired"]["ndcg@10"]["mean_diff"]), dict(zip(MACHINES, [
        (0.27394374607311134, 0.1203448116380188), (0.27417945072978167, 0.12058051629468913)])))
    # the baselines are the configurations make tune chose on ML-1M (params/movielens/tuning/), run here on smoke data
    assert {r["label"]: r["m"]["ndcg@10"] for r in c["baselines"]} == pytest.approx(
        {"Random": 0.047734, "Popularity": 0.059478, "Recent popularity": 0.048173, "ItemKNN (cosine)": 0.153599,
         "EASE^R": 0.093649, "BPR-MF (implicit)": 0.057273, "iALS (implicit)": 0.05915}, abs=1e-6)
    assert [(v["metric"], v["best_baseline"], v["wins"]) for v in c["verdicts"]] == [
        ("recall@10", "ItemKNN (cosine)", True), ("ndcg@10", "ItemKNN (cosine)", True),
        ("hit_rate@10", "ItemKNN (cosine)", True)]
    assert c["best_base"]["label"] == "ItemKNN (cosine)"
    assert c["paired"]["ndcg@10"]["mean_diff"] == pytest.approx(
        c["best_row"]["m"]["ndcg@10"] - c["best_base"]["m"]["ndcg@10"], rel=1e-9)
    # the verdict per protocol: 2 datasets x 3 protocols x 3 metrics, the reference one equal to the verdict above
    assert len(c["verdicts_by_protocol"]) == 18
    ref = c["verdicts_by_protocol"][:3]  # ML-1M's tables come first, the reference protocol first
    assert [v["protocol"] for v in ref] == ["reference"] * 3
    assert [(v["metric"], v["best_baseline"], v["wins"]) for v in ref] == [
        (v["metric"], v["best_baseline"], v["wins"]) for v in c["verdicts"]]
    assert [t["dataset"] for t in c["tuning"]] == ["ml-100k", "ml-1m"]
    # the gap to EASE by what the query tower reads: each group's best variant on validation users with history
    assert [r["best"] for r in c["gap"]["rows"]][0] == "Reference config (features only, mixed loss)"
    assert c["gap"]["rows"][0]["diff"] == pytest.approx(c["variants"][0]["warm_ndcg"] - c["rank_sweep"]["ease_warm"])
    # the loss with u11's towers fixed: the listed runs in order, each the variant's own validation figure
    sweep = c["loss_sweep"]
    assert [r["label"].split(":")[0] for r in sweep["rows"]] == ["u11", "f1", "f2", "f3"]
    warm = {v["params"]: v["warm_ndcg"] for v in c["variants"]}
    assert [r["warm_ndcg"] for r in sweep["rows"]] == [warm[r["params"]] for r in sweep["rows"]]
    assert sweep["spread"] == pytest.approx(max(warm[r["params"]] for r in sweep["rows"])
                                            - min(warm[r["params"]] for r in sweep["rows"]), rel=1e-12)
    assert sweep["spread"] == pytest.approx(0.23244015542839644, rel=1e-6)
    parts = {p["part"]: p["moves"] for p in c["decomposition"]["parts"]}
    assert parts["the loss, with the towers fixed"] == sweep["spread"]
    assert parts["rank"] == c["rank_sweep"]["gain_warm"] and parts["what the query tower reads"] == c["gap"]["largest_step"][1]
    assert c["decomposition"]["largest"]["part"] == "the loss, with the towers fixed"
    assert "the loss, with the towers fixed: +0.2324 (u11 to f1)" in out.read_text()
    won = sum(v["wins"] for v in c["verdicts_by_protocol"])
    assert f"the chosen two-tower wins {won} of the 18 (dataset, protocol, metric) cells" in out.read_text()
    text = out.read_text()
    # the markdown shows the companion's figures (the reference's line in the summary)
    assert "- Reference two-tower (features only, mixed loss): NDCG@10 0.2703, Recall@10 0.4310, HitRate@10 0.7082." in text
    assert "{{" not in text and "Smoke render" in text
    assert sorted(c["figs"]) == ["at_k", "ci", "loss", "rank"]
    # the rank sweep: the linear towers by dimension beside EASE on validation, and the sequence towers
    assert [r["dim"] for r in c["rank_sweep"]["rows"]] == [64, 128, 256, 512, 1024, 2048]
    ease = next(r for r in c["baselines"] if r["label"] == "EASE^R")  # the baselines table's EASE, on validation
    assert c["rank_sweep"]["ease"] == pytest.approx(ease["val_m"]["ndcg@10"], rel=1e-12)
    assert [v["label"].split(":")[0] for v in c["sequence_rows"]] == ["s1", "s2", "s3", "s1*", "s2*"]
    for rel in c["figs"].values():  # named by the report they belong to, shown in its markdown
        assert rel.startswith("figures/EVAL-") and (tmp_path / rel).is_file() and f"]({rel})" in text
