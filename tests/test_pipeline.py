"""End to end: params file -> papermill notebooks -> metrics -> report, on real ML-100K."""
import json
from pathlib import Path

import pytest

from lib import pipeline, report, run as runner

ROOT = Path(__file__).resolve().parent.parent


def test_ml100k_end_to_end_through_notebooks(tmp_path, shared_data, monkeypatch):
    monkeypatch.setenv("TWOTOWER_DATA_ROOT", str(shared_data))
    f = tmp_path / "movielens" / "e2e.yaml"
    f.parent.mkdir()
    f.write_text("data: {dataset: ml-100k}\nmodel: {kind: two_tower, id_embeddings: true}\n"
                 "train: {max_epochs: 3, batch_size: 512}\nevaluate: {bootstrap: 100}\nseed: 3\n")
    run_dir = runner.run_one(f)
    for nb in runner.RUN_NOTEBOOKS:
        assert (run_dir / nb).is_file()
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["data"]["name"] == "ml-100k"
    test = m["splits"]["test"]
    assert test["n_users"] > 50 and 0 < test["metrics"]["ndcg@10"] < 1
    assert test["faiss_equals_bruteforce@10"] > 0.99
    assert len(m["train"]["history"]) == 3
    # second call is cached: nothing re-executes
    mtime = (run_dir / "metrics.json").stat().st_mtime
    runner.run_one(f)
    assert (run_dir / "metrics.json").stat().st_mtime == mtime


def test_failed_render_keeps_the_last_good_report(tmp_path):
    out = tmp_path / "REPORT.md"
    out.write_text("good report\n")
    with pytest.raises(Exception):
        report.atomic_write_text(out, report.render("evaluation_report.md.j2", {"title": "x"}))
    assert out.read_text() == "good report\n"
    assert [p.name for p in tmp_path.iterdir()] == ["REPORT.md"]  # no temp file left


def test_smoke_report_renders_every_section(tmp_path):
    out = tmp_path / "EVAL.md"
    pipeline.render_report("movielens", str(ROOT / "params/movielens/report.yaml"), output=str(out),
                           run_overrides={"data": {"dataset": "synthetic"}, "train": {"max_epochs": 1, "batch_size": 256},
                                          "evaluate": {"bootstrap": 50, "latency_repeats": 20}})
    text = out.read_text()
    for heading in ("## Dataset and protocol", "## Training (reference run)", "## Final metrics",
                    "## Fix progression", "## Baselines and comparison", "## Latency", "## Provenance"):
        assert heading in text
    assert "{{" not in text and "Smoke render" in text
    companion = json.loads(out.with_suffix(".json").read_text())
    assert companion["main_row"]["m"]["ndcg@10"] > 0
    assert (tmp_path / "figures" / "ml_loss_curves.png").is_file()


def test_parallel_runs_report_every_failure(tmp_path):
    """run_many with jobs > 1 attempts every run and fails naming the broken ones."""
    d = tmp_path / "movielens"
    d.mkdir()
    (d / "bad_key.yaml").write_text("train: {max_epoch: 3}\n")
    (d / "bad_value.yaml").write_text("loss: {temperature: -1}\n")
    with pytest.raises(RuntimeError, match="2 run\\(s\\) failed: .*bad_"):
        runner.run_many([d / "bad_key.yaml", d / "bad_value.yaml"], jobs=2)
