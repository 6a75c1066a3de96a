"""The wikiseq study through lib.core: params validation, bad input, the cache (keys, shared
models, unreadable entries rebuilt), and a smoke render of the whole report on generated data."""
import json
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from lib.core import pipeline
from lib.core.params import ParamsError, load_yaml
from lib.core.rendering import REPORT_START_ENV
from lib.core.runs import BUILD_ENV, ROOT, configure, run_from_file
from lib.wikiseq import bank as bankmod
from lib.wikiseq import evaluate as evaluation
from lib.wikiseq import steps
from lib.wikiseq.report import render_report, report_config

SMOKE = "params/wikiseq/smoke.yaml"


@pytest.fixture
def build(tmp_path, monkeypatch):
    monkeypatch.setenv(BUILD_ENV, str(tmp_path / "build"))
    return tmp_path


def _forget_memos():
    """Drop what the process keeps in memory, so the next step reads or recomputes."""
    bankmod._LOADED.clear()
    evaluation._SHARED.clear()


@pytest.mark.unit
@pytest.mark.parametrize("section,values,match", [
    ("train", {"lr": 1e-3}, "params key 'train.lr' was renamed 'train.learning_rate'"),
    ("train", {"epochs": 3}, "params key 'train.epochs' was renamed 'train.max_epochs'"),
    ("model", {"hidden": 8}, "params key 'model.hidden' was renamed 'model.gru_hidden'"),
    ("evaluate", {"ks": [10]}, "params key 'evaluate.ks' was renamed 'evaluate.cutoffs'"),
    ("data", {"ctx": 5}, "unknown params key 'data.ctx'"),
])
def test_unknown_key_fails(section, values, match):
    with pytest.raises(ParamsError, match=match):
        configure(study="wikiseq", run="x", **{section: values})


@pytest.mark.unit
@pytest.mark.parametrize("section,values,match", [
    ("train", {"learning_rate": -1e-3}, "train.learning_rate"),
    ("train", {"learning_rate": "fast"}, "train.learning_rate"),
    ("train", {"max_epochs": -1}, "train.max_epochs"),
    ("train", {"epoch_cap": -1}, "train.epoch_cap"),
    ("train", {"epoch_cap": 1.5}, "train.epoch_cap"),
    ("data", {"ctx_len": 0}, "data.ctx_len"),
    ("model", {"decay": 1.5}, "model.decay"),
    ("model", {"decay": 0.0}, "model.decay"),
    ("model", {"gru_hidden": 0}, "model.gru_hidden"),
    ("model", {"tower": "transformer"}, "model.tower"),
    ("evaluate", {"index": "hnsw"}, "evaluate.index"),
    ("evaluate", {"cutoffs": [500, 10]}, "evaluate.cutoffs"),
    ("evaluate", {"cutoffs": [0, 10]}, "evaluate.cutoffs"),
    ("data", {"source": "npz"}, "data.path"),
])
def test_impossible_values_fail(section, values, match):
    with pytest.raises(ParamsError, match=match):
        configure(study="wikiseq", run="x", **{section: values})


@pytest.mark.unit
def test_every_params_file_resolves():
    files = sorted(Path(ROOT, "params", "wikiseq").glob("*.yaml"))
    runs = [f for f in files if not f.stem.startswith("report")]
    assert len(runs) >= 11
    for f in runs:
        assert run_from_file(f).cfg["run"] == f.stem
    v1 = run_from_file("params/wikiseq/v1_faithful.yaml").cfg["train"]
    assert (v1["max_epochs"], v1["epoch_cap"], v1["learning_rate"], v1["accum_steps"]) == (20, None, 2e-5, 8)
    assert run_from_file("params/wikiseq/v1_faithful.yaml").cfg["data"]["n_train"] == 138
    smoke = run_from_file(SMOKE).cfg
    assert (smoke["train"]["epoch_cap"], smoke["model"]["gru_hidden"], smoke["evaluate"]["cutoffs"]) == \
        (2, 8, [10, 100, 500])


@pytest.mark.unit
def test_report_files_resolve():
    rcfg = report_config(load_yaml("params/wikiseq/report.yaml"))
    assert rcfg["cutoff"] == 500 and "derived_runs" not in rcfg
    assert rcfg["runs"] == sorted(f"params/wikiseq/{role}.yaml" for role in rcfg["roles"])
    # a quick profile: lib.run executes the runs with the file's overrides
    quick = report_config(load_yaml("params/wikiseq/report_quick.yaml"))
    ov = {"data": {"pair_cap": 160, "n_eval": 300}, "train": {"epoch_cap": 2, "epoch_eval_queries": 64}}
    assert quick["runs"] == [] and quick["derived_runs"] == [(f, ov) for f in rcfg["runs"]]
    for f, o in quick["derived_runs"]:
        assert run_from_file(f, o).cfg["train"]["epoch_cap"] == 2


@pytest.mark.unit
def test_missing_and_corrupt_bank_fail_clearly(build):
    run = configure(study="wikiseq", run="npz", data={"source": "npz", "path": str(build / "nope.npz")})
    with pytest.raises(ParamsError, match="bank file not found"):
        steps.prepare(run)
    bad = build / "bad.npz"
    bad.write_bytes(b"not a zip")
    run = configure(study="wikiseq", run="npz", data={"source": "npz", "path": str(bad)})
    with pytest.raises(ParamsError, match="not a readable .npz"):
        steps.prepare(run)
    np.savez(build / "partial.npz", vectors=np.ones((3, 4)))
    run = configure(study="wikiseq", run="npz", data={"source": "npz", "path": str(build / "partial.npz")})
    with pytest.raises(ParamsError, match="missing arrays"):
        steps.prepare(run)


@pytest.mark.unit
def test_user_npz_bank_runs(build):
    rng = np.random.default_rng(0)
    lens = [30, 25, 40, 3, 2]
    art = np.repeat(np.arange(len(lens)) * 7, lens)        # arbitrary ids
    pos = np.concatenate([rng.permutation(n) * 2 for n in lens])  # shuffled, with gaps
    vec = rng.standard_normal((len(art), 8))
    np.savez(build / "mine.npz", vectors=vec, article_id=art, position=pos)
    run = configure(study="wikiseq", run="mine",
                    data={"source": "npz", "path": str(build / "mine.npz"), "ctx_len": 5,
                          "n_train": 20, "n_val": 5, "n_eval": 10, "val_fraction": 0.34},
                    model={"gru_hidden": 4}, train={"max_epochs": 1, "threads": 1},
                    evaluate={"cutoffs": [1, 10], "small_bank": 0})
    out = steps.prepare(run)
    table = dict(zip(out["data"]["quantity"], out["data"]["value"]))
    assert table["bank_size"] == sum(lens) and table["sequence_articles"] == 3
    bank = steps.load_bank(run)
    # rows are re-ordered by (article, position): the vector at article 0 position 0 is the
    # one whose original position was the smallest
    first = np.flatnonzero((art == 0))[np.argmin(pos[art == 0])]
    np.testing.assert_allclose(bank.vectors[0], vec[first] / np.linalg.norm(vec[first]), rtol=1e-5)
    steps.evaluate(run)
    m = json.loads((run.dir / "metrics.json").read_text())
    assert m["train"]["updates"] == 1 and m["heuristics"]["oracle"]["exact"]["recall@1"] == 1.0


@pytest.mark.unit
def test_bank_key_and_folder_are_kept(build):
    """An embedded bank from before the restructuring is found where it was."""
    run = run_from_file(SMOKE)
    bank = steps.load_bank(run)
    assert bank.key == bankmod.bank_key(run.cfg["data"]) == "79e0ac029000"
    assert (build / "build" / "wikiseq" / "banks" / bank.key / "bank_meta.json").is_file()


@pytest.mark.unit
def test_cache_layout_and_shared_model(build):
    a = run_from_file(SMOKE, {"train": {"epoch_cap": 1}})
    m, ranks = steps.results(a)
    assert m["key"] == a.metrics_key and a.is_up_to_date()
    assert json.loads((a.model_dir / "train.json").read_text())["key"] == a.train_key
    assert (a.model_dir / "model.pt").is_file() and a.model_dir.parent.name == "models"
    assert set(ranks) == {"model", "last", "mean", "exp_weighted", "oracle"}
    assert len(ranks["model"]) == m["data"]["n_eval"] == 150
    # a run that differs only in evaluation settings uses the same model, trained once
    b = run_from_file(SMOKE, {"train": {"epoch_cap": 1}, "evaluate": {"nprobe": 8}})
    assert b.train_key == a.train_key and b.metrics_key != a.metrics_key
    stamp = (a.model_dir / "train.json").stat().st_mtime_ns
    mb, _ = steps.results(b)
    assert (a.model_dir / "train.json").stat().st_mtime_ns == stamp
    assert mb["final"]["exact"] == m["final"]["exact"] and mb["ivf"]["nprobe"] == 8
    # ... but one that changes a cut-off evaluated during training does not
    c = run_from_file(SMOKE, {"train": {"epoch_cap": 1}, "evaluate": {"cutoffs": [10, 500]}})
    assert c.train_key != a.train_key


@pytest.mark.unit
def test_unreadable_cache_entries_are_rebuilt(build):
    run = run_from_file(SMOKE, {"train": {"epoch_cap": 1}})
    m, ranks = steps.results(run)
    _, pairs = steps.load_pairs(run)
    for path in (run.data_dir / "pairs.npz", run.model_dir / "train.json", run.dir / "ranks.npz"):
        path.write_bytes(b"PK\x03\x04 truncated")
    _forget_memos()
    _, pairs2 = steps.load_pairs(run)
    for k in ("train", "val", "eval"):
        np.testing.assert_array_equal(pairs2[k], pairs[k])
    m2, ranks2 = steps.results(run)
    assert m2["final"] == m["final"]
    assert [h["train_loss"] for h in m2["train"]["history"][1:]] == [h["train_loss"] for h in m["train"]["history"][1:]]
    np.testing.assert_array_equal(ranks2["model"], ranks["model"])
    (run.dir / "metrics.json").write_text("{not json")
    assert not run.is_up_to_date()
    assert steps.results(run)[0]["final"] == m["final"] and run.is_up_to_date()


@pytest.mark.unit
def test_smoke_run_is_deterministic(build):
    a = run_from_file(SMOKE, {"train": {"epoch_cap": 1}})
    steps.evaluate(a)
    first = json.loads((a.dir / "metrics.json").read_text())
    for folder in (a.dir, a.model_dir, a.data_dir, build / "build" / "wikiseq" / "banks"):
        shutil.rmtree(folder)
    _forget_memos()
    steps.evaluate(a)
    second = json.loads((a.dir / "metrics.json").read_text())
    assert first["final"] == second["final"] and first["heuristics"] == second["heuristics"]
    assert [h["train_loss"] for h in first["train"]["history"][1:]] == \
           [h["train_loss"] for h in second["train"]["history"][1:]]


@pytest.mark.e2e
def test_smoke_render_report(build, monkeypatch):
    """The whole study on generated data through the shared entry point the 04 notebook uses;
    the figures are what the smoke data gives (pinned)."""
    cfg = load_yaml("params/wikiseq/report.yaml")
    started = time.time() - 1
    monkeypatch.setenv(REPORT_START_ENV, str(started))  # as make report sets it
    out = build / "out" / "TWO_TOWER_V1_V2_COMPARISON.md"
    res = pipeline.render_report("wikiseq", str(ROOT / "params/wikiseq/report.yaml"), output=str(out),
                                 run_overrides=load_yaml(SMOKE))
    text = out.read_text()
    assert "{{" not in text and "{%" not in text and "Undefined" not in text
    for section in ("## Executive summary", "## Per-version detail", "## Loss vs recall",
                    "## In-batch vs full-bank gap", "## Data scaling", "## Root-cause analysis",
                    "## Path forward", "## Bottom line", "## Provenance"):
        assert section in text
    assert re.search(r"Smoke render", text)
    companion = json.loads(out.with_suffix(".json").read_text())
    assert sorted(companion["figs"]) == ["curves", "scaling"]
    for rel in companion["figs"].values():  # named by the report they belong to, shown in its markdown
        assert rel.startswith("figures/TWO_TOWER_V1_V2_COMPARISON-") and f"]({rel})" in text
        assert (out.parent / rel).stat().st_size > 1000
    assert set(companion["runs"]) == set(cfg["report"]["roles"])
    v = companion["verdict"]
    assert res["cause"] == v["cause"] == "updates"
    assert v["reproduced_failure"] is True and v["updates_help"] == {"v1": False, "v2": True}
    assert not v["pairs_help_reference_optimiser"] and not v["learned_beats_heuristic"]
    assert v["update_gain"] == pytest.approx(7 / 150) and v["pair_gain"] == pytest.approx(0.0)
    assert companion["best_role"] == "v1_residual"
    data = companion["data"]
    assert (data["bank_key"], data["eval_set_sha256"], data["bank_size"], data["n_eval"]) == \
        ("79e0ac029000", "36830168e3ab5fbf", 3629, 150)
    # the update counts are what the reference's schedule gives (capped at 2 epochs)
    updates = {role: m["train"]["updates"] for role, m in companion["runs"].items()}
    assert updates == {"v1_faithful": 2, "v2_faithful": 10, "v1_updates": 10, "v2_updates": 78,
                       "v1_residual": 10, "v2_residual": 78, "all_faithful": 10, "all_updates": 77,
                       "all_residual": 77, "v2_hardneg": 78}
    recall = {role: m["final"]["exact"]["recall@500"] for role, m in companion["runs"].items()}
    assert recall == pytest.approx({"v1_faithful": 14 / 150, "v2_faithful": 14 / 150, "v1_updates": 13 / 150,
                                    "v2_updates": 21 / 150, "v1_residual": 1.0, "v2_residual": 1.0,
                                    "all_faithful": 14 / 150, "all_updates": 21 / 150, "all_residual": 1.0,
                                    "v2_hardneg": 20 / 150})
    assert companion["heur_rec"] == pytest.approx(1.0)
    assert companion["H"]["exp_weighted"]["exact"]["recall@10"] == pytest.approx(73 / 150)
    assert companion["cmp"]["updates_vs_faithful_v2"]["mean_diff"] == pytest.approx(7 / 150)
    assert companion["losers"] == ["v1_faithful", "v2_faithful", "v1_updates", "v2_updates", "all_faithful",
                                   "all_updates", "v2_hardneg"]
    # the report's own wall time: every run and the bank made here (generated vectors: no text
    # to embed), so the from-a-fresh-clone figure is measured
    speed = companion["speed"]
    assert (speed["n_run_dirs"], speed["fresh_runs"], speed["bank_embedded_here"], speed["bank_made_here"]) == \
        (10, 10, False, True)
    assert speed["started_at"] == started and 0 < speed["report_wall_seconds"] < time.time() - started + 1
    assert speed["built_at"] >= started and speed["embed_seconds"] is None
    assert ("10 runs of which 10 trained or evaluated in this invocation; the text bank built in it, with no text "
            "to embed; this report) | ") in text and "target from a fresh clone < 3600 s: met" in text
    # rendered again by a later make report: every run and the bank cached, nothing claimed
    monkeypatch.setenv(REPORT_START_ENV, str(time.time()))
    _forget_memos()
    pipeline.render_report("wikiseq", str(ROOT / "params/wikiseq/report.yaml"), output=str(out),
                           run_overrides=load_yaml(SMOKE))
    again = json.loads(out.with_suffix(".json").read_text())["speed"]
    assert (again["fresh_runs"], again["bank_made_here"]) == (0, False)
    assert "the text bank not embedded in it" in out.read_text()
    assert "target from a fresh clone < 3600 s: not measured by this render" in out.read_text()


@pytest.mark.unit
def test_the_saved_bank_says_when_it_was_built_and_what_its_embedding_took(build):
    run = run_from_file(SMOKE)
    before = time.time()
    bank = steps.load_bank(run)
    record = bankmod.build_record(bankmod.bank_folder(build / "build", bank.key))
    assert before <= record["built_at"] <= time.time() and record["build_seconds"] > 0
    assert record["embed_seconds"] is None  # generated vectors: nothing embedded
    bank.embed_seconds = 12.5
    bankmod.save_bank(bank, build / "other")
    assert bankmod.build_record(build / "other")["embed_seconds"] == 12.5
    assert bankmod.build_record(build / "nowhere") == {"built_at": None, "build_seconds": None, "embed_seconds": None}

def test_the_embedding_does_not_depend_on_the_callers_threads(tmp_path, monkeypatch):
    """The real encoder over texts of mixed lengths, in blocks of 5 batches of 4: a caller on
    one torch thread and a caller on two get the same vectors to the last bit (the encoder
    always runs on EMBED_THREADS; the same batch on one thread and on two can differ in the
    last bits), the caller's thread count is restored, the second call reads the cache, and
    another batch size is another cache entry."""
    import torch
    monkeypatch.setattr(bankmod, "EMBED_BLOCK", 5)
    words = "the river runs past an old mill and under a stone bridge near the town".split()
    texts = [" ".join(words[: 3 + (7 * i) % 12]) + f" {i}." for i in range(17)]
    quiet = dict(log=lambda *_: None)
    threads = torch.get_num_threads()
    vectors = []
    try:
        for caller_threads in (1, 2):
            torch.set_num_threads(caller_threads)
            vecs, seconds = bankmod.embed_texts(texts, tmp_path / str(caller_threads), 4, "cpu", **quiet)
            assert seconds > 0 and torch.get_num_threads() == caller_threads
            vectors.append(vecs)
    finally:
        torch.set_num_threads(threads)
    assert vectors[0].shape == (17, 384) and np.array_equal(vectors[0], vectors[1])
    assert len(np.unique(vectors[0].round(4), axis=0)) == 17  # distinct texts, distinct vectors
    cached, cached_seconds = bankmod.embed_texts(texts, tmp_path / "1", 4, "cpu", **quiet)
    assert cached_seconds is None and np.array_equal(cached, vectors[0])
    _, other_seconds = bankmod.embed_texts(texts, tmp_path / "1", 8, "cpu", **quiet)
    assert other_seconds is not None and len(list((tmp_path / "1" / "embeddings").glob("*.npy"))) == 2



@pytest.mark.unit
def test_a_long_epoch_shows_its_progress(build, monkeypatch):
    """Within an epoch a line gives the micro-batches done (at most every PROGRESS_SECONDS);
    the training itself is unchanged by it."""
    from lib.wikiseq import train as trainer
    run = run_from_file(SMOKE, {"train": {"epoch_cap": 1}})
    quiet = steps.trained(run)
    shutil.rmtree(run.model_dir)
    monkeypatch.setattr(trainer, "PROGRESS_SECONDS", 0.0)
    lines = []
    monkeypatch.setattr(steps, "_log", lines.append)
    loud = steps.trained(run)
    micro = loud["micro_batches_per_epoch"]
    shown = [ln for ln in lines if "micro-batches" in ln]
    assert micro > 2 and len(shown) == micro - 1  # none after the last: the epoch's own line follows
    assert all(ln.startswith(f"  epoch 1: {m}/{micro} micro-batches, ") for m, ln in zip(range(1, micro), shown))
    assert [h["train_loss"] for h in loud["history"][1:]] == [h["train_loss"] for h in quiet["history"][1:]]


@pytest.mark.unit
def test_report_rejects_unknown_keys():
    with pytest.raises(ParamsError, match="unknown params key 'report.outptu'"):
        render_report({"report": {"outptu": "x.md"}})
    with pytest.raises(ParamsError, match="unknown params key 'report.k'"):
        render_report({"report": {"k": 500}})
    with pytest.raises(ParamsError, match="run_overrides"):
        render_report({"report": {"run_overrides": {"trian": {}}}})
