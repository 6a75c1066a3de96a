"""lib.movielens.bench_scale: the MovieLens-20M-size benchmark, run at tiny scales.

A run at --scale 0.002 checks what the benchmark reports (every step timed and measured, the
JSON metrics equal to evaluate_split's on the same data, the target lines); a run on a log
with ~200,000 users checks with tracemalloc that no step allocates a dense users x items
array.
"""
from __future__ import annotations

import json
import os
import re
import tracemalloc

import numpy as np
import pytest
import scipy.sparse as sp

from lib.movielens import bench_scale as bench

STEPS = ["load + split (build_prepared)",
         *(f"{kind} {m}" + (" (test, bootstrap CIs)" if kind == "evaluate" else "")
           for m in ("popularity", "recent_popularity", "itemknn", "ials", "ease") for kind in ("fit", "evaluate")),
         "train two_tower (tt_l64t_linear_dim64_temperature005, <= 1 epochs)",
         "evaluate two_tower (test, bootstrap CIs)"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The benchmark's command line at --scale 0.002 (40,000 interactions), one epoch."""
    folder = tmp_path_factory.mktemp("bench_scale")
    out = folder / "result.json"
    import contextlib
    import io
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert bench.main(["--scale", "0.002", "--max-epochs", "1", "--keep", str(folder / "keep"),
                           "--json", str(out)]) == 0
    return json.loads(out.read_text()), buf.getvalue(), folder / "keep"


def test_scale_rule():
    assert bench.sizes_for(1.0) == {"n_interactions": 20_000_000, "n_users": 138_000, "n_items": 27_000}
    assert bench.sizes_for(0.01) == {"n_interactions": 200_000, "n_users": 1_380, "n_items": 2_700}
    assert bench.sizes_for(1e-6)["n_items"] == 200  # the floor
    with pytest.raises(ValueError):
        bench.sizes_for(0)


def test_every_step_is_timed_and_measured(tiny):
    r, _, _ = tiny
    assert [row["step"] for row in r["steps"]] == STEPS
    for row in r["steps"]:
        assert row["seconds"] > 0 and row["peak_rss_gb"] > 0.05, row  # a Python process with torch: > 50 MB
        assert row["peak_rss_gb"] >= row["start_rss_gb"] * 0.999
    assert r["process_peak_rss_gb"] >= max(row["peak_rss_gb"] for row in r["steps"])
    assert r["total_s"] >= sum(row["seconds"] for row in r["steps"])
    assert r["sizes"] == bench.sizes_for(0.002) and r["grid_search"] is False
    # one study alone on the machine: torch and FAISS on every CPU, the two-tower included
    assert r["machine"]["threads"] == os.cpu_count() == r["machine"]["torch_threads"]
    assert r["two_tower_sections"]["train"]["threads"] == os.cpu_count()
    assert r["two_tower_params"] == "params/movielens/tt_l64t_linear_dim64_temperature005.yaml"
    assert r["two_tower_sections"]["model"]["architecture"] == "linear"
    assert r["settings"]["itemknn"] == {"k": 100} and r["settings"]["ials"]["regularization"] == 1.0
    assert r["settings"]["ease"]["l2"] == pytest.approx(0.5 * r["data"]["train"] / r["data"]["n_items"], rel=1e-3)
    tt = r["two_tower"]
    assert tt["epochs"] == 1 and tt["max_epochs"] == 1 and tt["params_max_epochs"] == 40 and tt["capped"]
    assert len(tt["seconds_per_epoch"]) == 1 and tt["seconds_per_epoch"][0] > 0
    assert tt["projected_full_s"][1] == pytest.approx(tt["setup_s"] + 40 * tt["median_epoch_s"])
    assert set(r["metrics"]) == {"popularity", "recent_popularity", "itemknn", "ials", "ease", "two_tower"}


def test_metrics_equal_evaluate_split_on_the_same_data(tiny):
    from lib.core.runs import configure
    from lib.movielens import baselines, evaluate
    from lib.movielens.data import build_prepared

    r, _, keep = tiny
    (path,) = keep.glob("*.parquet")
    cfg = configure(data={"dataset": "interactions", "path": str(path)}, model={"kind": "popularity"}).cfg
    data = build_prepared(cfg["data"], 0, keep)
    assert (data.n_users, data.n_items, len(data.test)) == (r["data"]["n_users"], r["data"]["n_items"], r["data"]["test"])
    entry, _ = evaluate.evaluate_split(baselines.Popularity().fit(data.matrix("train"), data.train), data, cfg,
                                       "test", "cpu")
    got = r["metrics"]["popularity"]
    assert got["metrics"]["ndcg@10"] == pytest.approx(entry["metrics"]["ndcg@10"], abs=1e-12)
    assert got["metrics"] == pytest.approx(entry["metrics"], abs=1e-12)
    assert got["ci"]["ndcg@10"] == pytest.approx(entry["ci"]["ndcg@10"], abs=1e-12)
    assert got["n_users"] == entry["n_users"] == r["evaluated_test_users"]


def test_target_lines_carry_the_measured_values(tiny):
    r, out, _ = tiny
    load = r["steps"][0]["seconds"]
    assert re.search(rf"load \+ split <= 60 s\s+{load:.1f} s\s+{'PASS' if load <= 60 else 'MISS'}", out)
    assert re.search(rf"whole benchmark <= 30 min\s+{r['total_s']:.1f} s\s+PASS\s+\(two-tower capped at 1 of 40", out)
    assert re.search(rf"peak RSS <= 12 GB\s+{r['process_peak_rss_gb']:.2f} GB\s+PASS", out)
    assert re.search(r"two-tower on cuda <= 2 min\s+[\d.]+ s\s+not checked\s+\(--device cpu\)", out)
    assert "stated for --scale 1.0; this run: --scale 0.002" in out and "no grid search" in out
    verdicts = {t["name"]: t["verdict"] for t in r["targets"]}
    assert verdicts == {"load + split": "PASS", "whole benchmark": "PASS", "peak RSS": "PASS",
                        "two-tower on cuda": "not checked"}
    for row in r["steps"]:  # the table: one line per step with its wall time and peak RSS
        assert re.search(rf"^{re.escape(row['step'])}\s+{row['seconds']:.1f}\s+{row['peak_rss_gb']:.2f}\s", out, re.M)


def test_a_kept_log_is_reused(tiny):
    _, _, keep = tiny
    (path,) = keep.glob("*.parquet")
    mtime = path.stat().st_mtime_ns
    again, how = bench.ensure_log(keep, bench.sizes_for(0.002))
    assert again == path and how["reused"] and path.stat().st_mtime_ns == mtime
    other, how = bench.ensure_log(keep, {"n_interactions": 3000, "n_users": 50, "n_items": 200})
    assert other != path and not how["reused"] and other.is_file()


# -- memory: no dense users x items array ------------------------------------------------------------
# Loading traces ~190 bytes per interaction (arrow -> pandas, the k-core, the sort) and evaluation
# O(evaluated users x 100): the catalog is large enough that these stay well under a quarter of a
# dense array (5-core leaves ~113,000 users: 113,000 x 4,500 float32 is ~2 GB; the bound ~500 MB),
# small enough that the two-tower's epoch (a softmax over the catalog per user) takes ~20 s.
MEM_SIZES = {"n_interactions": 2_000_000, "n_users": 200_000, "n_items": 4_500}


@pytest.fixture(scope="module")
def traced(tmp_path_factory):
    """prepare + popularity + ItemKNN + a 1-epoch two-tower + their evaluation, traced, on a log
    with 200,000 users; the two-tower is u11 (the MLP towers over IDs + pooled history: more
    per-user state than the benchmark's linear tower), with batches of 1,024 users instead of
    128 (its memory is per batch; 8x fewer steps)."""
    return bench.run_benchmark(MEM_SIZES, models=["popularity", "itemknn", "two_tower"], max_epochs=1,
                               keep=tmp_path_factory.mktemp("mem"), trace=True,
                               two_tower_params="params/movielens/tt_u11_half_life_7d.yaml",
                               two_tower_overrides={"train": {"user_batch_size": 1024}},
                               say=lambda *a, **k: None)


@pytest.mark.slow
def test_no_step_allocates_a_dense_users_x_items_array(traced):
    r = traced
    dense = r["data"]["n_users"] * r["data"]["n_items"] * 4
    assert dense > 500e6  # a dense float32 users x items array would be over 500 MB
    bound = dense / 4
    assert [row["step"] for row in r["steps"]] == [
        "load + split (build_prepared)", "fit popularity", "evaluate popularity (test, bootstrap CIs)",
        "fit itemknn", "evaluate itemknn (test, bootstrap CIs)", "train two_tower (tt_u11_half_life_7d, <= 1 epochs)",
        "evaluate two_tower (test, bootstrap CIs)"]
    for row in r["steps"]:
        assert row["traced_peak_mb"] * 1e6 < bound, (row["step"], row["traced_peak_mb"], bound / 1e6)
    assert r["traced_peak_mb"] * 1e6 < bound


def test_the_bruteforce_check_is_not_dense():
    """evaluate_split's FAISS-vs-brute-force check (embedding models) on 100,000 users: it held
    dense (users x items) float64 arrays before 227d71d, found by the scale benchmark."""
    from lib.core import retrieval
    n_users, n_items, d = 100_000, 200, 16
    rng = np.random.default_rng(0)
    u = rng.normal(size=(n_users, d)).astype(np.float32)
    v = rng.normal(size=(n_items, d)).astype(np.float32)
    exclude = sp.random(n_users, n_items, density=0.02, format="csr", random_state=1, dtype=np.float32)
    exclude.data[:] = 1
    top = np.tile(np.arange(10), (n_users, 1))
    tracemalloc.start()
    try:
        share = retrieval.agreement_with_bruteforce(u, v, np.arange(n_users), exclude, top)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert 0 <= share < 0.01  # a fixed list is rarely anyone's exact top 10
    assert peak < n_users * n_items * 4 / 4  # a quarter of one dense float32 (users x items) array
