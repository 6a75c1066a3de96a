"""End to end: params file -> papermill notebooks -> metrics -> report.

The figures are pinned (pytest.approx): training is deterministic on one kind of CPU, so a change in
any of them means a change of behaviour, which must be deliberate (then re-pin them)."""
import json
import warnings
from pathlib import Path

import pytest

from lib.core import files, notebooks, pipeline, rendering, runner

ROOT = Path(__file__).resolve().parent.parent
SMOKE = {"data": {"dataset": "synthetic"}, "train": {"max_epochs": 1, "batch_size": 256},
         "evaluate": {"bootstrap": 50, "latency_repeats": 20}}

# Two-tower figures pinned on each kind of CPU machine these tests have run on, named by what
# the reports' provenance reads (``rendering.machine()``: the CPU's model name as the machine
# reports it, torch's ``get_cpu_capability()``). The same code, params and seed give the same
# bits on one kind, but torch's and MKL's CPU kernels differ between kinds, and a last-bit
# difference in training grows into the metrics over the epochs. (Forcing one kernel set,
# ATEN_CPU_CAPABILITY=avx2 with MKL_CBWR=AVX2 or COMPATIBLE and ONEDNN_MAX_CPU_ISA=AVX2, did not
# make the Intel machine give the AMD AVX2 machine's bits.) On a pinned kind a run must equal
# that kind's figures, all of them, to 1e-6. On a kind with no pins yet, each figure must lie
# within the test's stated tolerance of one pinned kind's (a few times the spread between the
# kinds), and a warning prints the figures to pin for it.
AMD_AVX512 = "AMD EPYC / AVX512"  # the machines of 2026-11 and 2026-12-06 (the committed MovieLens report's)
AMD_AVX2 = "AMD EPYC / AVX2"  # the name this kind reports (seen 2026-12-02: its run took the exact path)
INTEL_AVX512 = "Intel(R) Xeon(R) Processor / AVX512"


def machine_kind() -> str:
    m = rendering.machine()
    return f"{m['cpu']} / {m['torch_cpu_capability']}"


def _check_pinned(observed: tuple, pins: dict, unpinned_rel: tuple) -> None:
    """``observed`` equals this machine kind's pinned figures (each to rel 1e-6); on a kind with
    none, it lies within ``unpinned_rel`` (one relative tolerance per figure) of one kind's."""
    kind = machine_kind()
    if kind in pins:
        assert observed == pytest.approx(pins[kind], rel=1e-6), f"{kind}: {observed}, pinned {pins[kind]}"
        return
    near = [k for k, want in pins.items()
            if all(o == pytest.approx(w, rel=r) for o, w, r in zip(observed, want, unpinned_rel, strict=True))]
    assert near, f"{kind} (no figures pinned): {observed} is within {unpinned_rel} of no pinned kind: {pins}"
    warnings.warn(f"machine kind {kind!r} has no pinned figures: pin {observed!r} "
                  f"(within the tolerance of {near[0]!r})", stacklevel=2)


@pytest.mark.unit
def test_figures_pinned_per_machine_kind(monkeypatch):
    """A pinned kind must give its own figures to 1e-6 (a last-bit change fails, even within
    the unpinned tolerance); a kind with no pins passes within the tolerance, with a warning."""
    pins, rel = {"A / AVX512": (0.5, 3.0), "B / AVX2": (0.52, 3.001)}, (0.1, 1e-3)
    kind = {}
    monkeypatch.setattr(rendering, "machine", lambda: kind)
    kind.update(cpu="A", torch_cpu_capability="AVX512")
    _check_pinned((0.5, 3.0), pins, rel)
    with pytest.raises(AssertionError, match="pinned"):
        _check_pinned((0.5, 3.0001), pins, rel)
    with pytest.raises(AssertionError):  # B's figures, on A
        _check_pinned((0.52, 3.001), pins, rel)
    kind.update(cpu="C")
    with pytest.warns(UserWarning, match=r"'C / AVX512' has no pinned figures: pin \(0.53, 3.0005\)"):
        _check_pinned((0.53, 3.0005), pins, rel)
    with pytest.raises(AssertionError, match="no figures pinned"):
        _check_pinned((0.53, 3.01), pins, rel)


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
    # a kind with no pins: the metrics within 10% of a pinned kind's, the losses within 0.1%
    # (between the kinds below: up to 4.9% on recall@10, 0.02% on a loss)
    _check_pinned(observed, {
        AMD_AVX512: (0.06369559739253364, 0.21590901830658282, 0.5921052631578947,
                     3.5718797253024195, 3.299763931766633, 3.150783021988407),
        AMD_AVX2: (0.06673945126680253, 0.21852468324988852, 0.5986842105263158,
                   3.5719832881804434, 3.300504819808468, 3.1508741809475804),
        INTEL_AVX512: (0.06681516261019053, 0.22020223418240908, 0.5986842105263158,
                       3.5719175277217743, 3.2997851956275204, 3.151462087323589)},
        unpinned_rel=(0.1, 0.1, 0.1, 1e-3, 1e-3, 1e-3))
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
    # a kind with no pins: both within 2% of a pinned kind's (0.09% and 0.2% between the kinds below)
    best = (0.27394374607311134, 0.1203448116380188)
    _check_pinned((c["best_row"]["m"]["ndcg@10"], c["paired"]["ndcg@10"]["mean_diff"]),
                  {AMD_AVX512: best, INTEL_AVX512: best, AMD_AVX2: (0.27417945072978167, 0.12058051629468913)},
                  unpinned_rel=(0.02, 0.02))
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
