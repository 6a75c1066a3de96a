"""The report's verdict per protocol over seeds: seed means and ranges, the paired test on
per-user figures averaged over seeds, and when the two-tower wins."""
import numpy as np
import pytest


def _fake_run(tmp_path, name: str, kind: str, per_user: dict) -> dict:
    """A metrics.json-like result with its per_user.npz (what the report reads)."""
    folder = tmp_path / name
    folder.mkdir()
    users = np.arange(len(next(iter(per_user.values()))))
    np.savez(folder / "per_user.npz", **{"test/users": users}, **{f"test/{m}": v for m, v in per_user.items()})
    means = {m: float(np.mean(v)) for m, v in per_user.items()}
    return {"run": name, "_dir": str(folder), "config": {"model": {"kind": kind}, "data": {"dataset": "ml-1m"}},
            "splits": {"test": {"metrics": means}}}


def test_protocol_table_averages_seeds_user_by_user(tmp_path, monkeypatch):
    """Seed means and ranges, the paired test on per-user figures averaged over seeds, and
    the verdict: the two-tower wins on a metric only if its seed mean reaches the best baseline's."""
    from lib.movielens import report
    metrics = report.CMP_METRICS
    tt = [_fake_run(tmp_path, f"tt{s}", "two_tower", {m: np.array([0.2, 0.4, 0.6, 0.8]) + 0.1 * s for m in metrics})
          for s in range(3)]
    base = _fake_run(tmp_path, "ease", "ease", {m: np.array([0.3, 0.5, 0.7, 0.9]) for m in metrics})
    runs = {("tt.yaml", s): r for s, r in enumerate(tt)}
    monkeypatch.setattr(report, "_seed_override", lambda params, seed: None if params == "ease.yaml" else {"seed": seed})
    get = lambda params, extra: base if params == "ease.yaml" else runs[(params, extra.get("seed", 0))]  # noqa: E731
    table = report._protocol_table(get, {"seeds": [0, 1, 2], "bootstrap": 200}, "reference", "ML-1M",
                                   [{"label": "EASE^R", "params": "ease.yaml"}], "tt.yaml", "u11: x", {}, {})
    ease_row, tt_row = table["rows"]
    assert (ease_row["seeds"], tt_row["seeds"]) == (1, 3)
    assert tt_row["mean"]["ndcg@10"] == pytest.approx(0.6) and tt_row["low"]["ndcg@10"] == pytest.approx(0.5)
    assert tt_row["high"]["ndcg@10"] == pytest.approx(0.7)
    v = table["verdicts"][1]
    # seed-averaged per user: 0.3, 0.5, 0.7, 0.9 = the baseline exactly: a tie, which counts as a win
    assert v["diff"] == pytest.approx(0.0, abs=1e-12) and v["wins"] and (v["ci_low"], v["ci_high"]) == pytest.approx((0, 0))
    assert (v["dataset"], v["protocol"], v["metric"], v["best_baseline"], v["two_tower_run"]) == \
        ("ml-1m", "reference", "ndcg@10", "EASE^R", "tt0")
    runs = {k: _fake_run(tmp_path, f"low{k[1]}", "two_tower", {m: np.array([0.2, 0.4, 0.6, 0.8]) for m in metrics})
            for k in runs}
    table = report._protocol_table(get, {"seeds": [0, 1, 2], "bootstrap": 200}, "refit", "ML-1M",
                                   [{"label": "EASE^R", "params": "ease.yaml"}], "tt.yaml", "u11: x", {}, {})
    assert not any(v["wins"] for v in table["verdicts"]) and all(v["ci_high"] < 0 for v in table["verdicts"])


def _loss_run(loss: dict, train: dict, model: dict | None = None) -> dict:
    from lib.movielens import steps
    return {"config": {"model": dict(steps.DEFAULTS["model"], **(model or {})),
                       "loss": dict(steps.DEFAULTS["loss"], **loss), "train": dict(steps.DEFAULTS["train"], **train)}}


def test_loss_sweep_compares_one_towers_losses_against_ease(tmp_path):
    """The loss's part of the gap: rows in the listed order, each loss in words, its
    difference to EASE^R on the users with history, the spread best - worst; a run with
    other towers is refused, named."""
    from lib.core.params import ParamsError
    from lib.movielens import report
    results = {"u.yaml": _loss_run({"kind": "full_softmax"}, {"batching": "users"}),
               "f1.yaml": _loss_run({"kind": "full_softmax"}, {"batching": "interactions"}),
               "f2.yaml": _loss_run({"kind": "in_batch", "logq_correction": True, "remove_accidental_hits": True},
                                    {"batching": "interactions"}),
               "f3.yaml": _loss_run({"kind": "mixed", "explicit_weight": 0.7, "num_negatives": 16},
                                    {"batching": "interactions", "batch_size": 512})}
    warm = {"u.yaml": 0.14, "f1.yaml": 0.12, "f2.yaml": 0.10, "f3.yaml": 0.05}
    variants = [{"params": p, "label": f"{p.split('.')[0]}: x", "warm_ndcg": w, "m": {"ndcg@10": 2 * w}}
                for p, w in warm.items()]
    sweep = report._loss_sweep(results.get, list(warm), variants, ease_warm=0.13)
    assert [r["label"] for r in sweep["rows"]] == ["u: x", "f1: x", "f2: x", "f3: x"]
    assert [r["vs_ease"] for r in sweep["rows"]] == pytest.approx([0.01, -0.01, -0.03, -0.08])
    assert (sweep["best"]["params"], sweep["worst"]["params"], sweep["towers"]) == ("u.yaml", "f3.yaml", "u")
    assert sweep["spread"] == pytest.approx(0.09)
    assert [r["loss_text"] for r in sweep["rows"]] == [
        "multinomial over the catalog, user batches (each epoch 20% of every history held out as targets)",
        "softmax over the catalog, one training interaction per row; batches of 1024 interactions",
        "in-batch softmax (the batch's other positives), logQ correction and accidental hits removed; "
        "batches of 1024 interactions",
        "0.7 x 16 uniform sampled negatives + 0.3 x in-batch softmax; batches of 512 interactions"]
    results["f2.yaml"]["config"]["model"]["embedding_dim"] = 32
    with pytest.raises(ParamsError, match=r"f2.yaml has other towers than u.yaml \(model.embedding_dim: 32 vs 128\)"):
        report._loss_sweep(results.get, list(warm), variants, ease_warm=0.13)


def test_loss_sweep_entries_must_be_variants():
    from lib.core.params import ParamsError
    from lib.movielens import report
    variants = [{"label": "a: x", "params": "a.yaml"}, {"label": "b: x", "params": "b.yaml"}]
    assert report.report_config({"two_tower_variants": variants, "loss_sweep": ["a.yaml", "b.yaml"]})["loss_sweep"] == \
        ["a.yaml", "b.yaml"]
    with pytest.raises(ParamsError, match=r"report.loss_sweep: 'c.yaml' is not one of report.two_tower_variants"):
        report.report_config({"two_tower_variants": variants, "loss_sweep": ["a.yaml", "c.yaml"]})
    with pytest.raises(ParamsError, match=r"report.loss_sweep: at least two distinct params files"):
        report.report_config({"two_tower_variants": variants, "loss_sweep": ["a.yaml", "a.yaml"]})


def test_decomposition_names_the_part_that_moves_ndcg_most():
    """Each part a measured move on the users with history: the query tower's largest step,
    the loss sweep's spread, the rank sweep's gain, and time (test minus validation
    difference to EASE^R); the largest by magnitude is named."""
    from lib.movielens import report
    gap = {"largest_step": ("features + IDs, full softmax", 0.05), "ease_warm": 0.13,
           "test": {"tt_warm": 0.19, "ease_warm": 0.205, "tt_cold": 0.17, "ease_cold": 0.165}}
    loss_sweep = {"spread": 0.08, "worst": {"label": "f3: x"}, "best": {"label": "u11: y"}}
    rank_sweep = {"gain_warm": 0.006, "rows": [{"dim": 64}, {"dim": 2048}]}
    d = report._decomposition(gap, loss_sweep, rank_sweep, {"warm_ndcg": 0.14})
    assert [p["part"] for p in d["parts"]] == ["what the query tower reads", "the loss, with the towers fixed",
                                              "rank", "time"]
    assert [p["moves"] for p in d["parts"]] == pytest.approx([0.05, 0.08, 0.006, (0.19 - 0.205) - (0.14 - 0.13)])
    assert d["largest"]["part"] == "the loss, with the towers fixed"
    assert d["parts"][1]["detail"] == "f3 to u11" and d["parts"][2]["detail"] == "the linear tower from 64 to 2048 dimensions"
    assert d["parts"][3]["detail"] == "the chosen two-tower against EASE^R, +0.0100 on validation and -0.0150 on test"
    gap["test"]["tt_warm"] = 0.10  # now time moves it most, by magnitude (a drop of 0.115)
    assert report._decomposition(gap, loss_sweep, rank_sweep, {"warm_ndcg": 0.14})["largest"]["part"] == "time"
    assert report._decomposition(None, None, None, None) is None


def test_seed_flips_name_the_metrics_where_one_seed_and_the_seed_mean_disagree():
    """The summary warns where the one-seed verdict and the seed-averaged one (same
    configuration, same dataset, reference protocol) differ, and only there."""
    from lib.movielens import report
    one_seed = [{"metric": "recall@10", "wins": False}, {"metric": "ndcg@10", "wins": False},
                {"metric": "hit_rate@10", "wins": False}]

    def table(dataset, protocol, params, wins):
        return {"dataset": dataset, "protocol": protocol,
                "verdicts": [{"metric": m, "wins": w, "two_tower_params": params, "two_tower_seeds": 3}
                             for m, w in zip(("recall@10", "ndcg@10", "hit_rate@10"), wins)]}
    tables = [table("ml-1m", "reference", "u11.yaml", (False, False, True)),
              table("ml-1m", "refit", "u11.yaml", (True, True, True)),         # another protocol
              table("ml-100k", "reference", "u11.yaml", (True, True, True)),   # another dataset
              table("ml-1m", "reference", "u5.yaml", (True, True, True))]      # another configuration
    assert report._seed_flips(one_seed, tables, "u11.yaml", "ml-1m", 0) == [
        {"metric": "hit_rate@10", "seed": 0, "one_seed_wins": False, "seed_mean_wins": True, "seeds": 3}]
    assert report._seed_flips(one_seed, tables[1:], "u11.yaml", "ml-1m", 0) == []
    assert report._seed_flips([{**v, "wins": True} for v in one_seed], tables, "u11.yaml", "ml-1m", 7) == [
        {"metric": m, "seed": 7, "one_seed_wins": True, "seed_mean_wins": False, "seeds": 3}
        for m in ("recall@10", "ndcg@10")]
