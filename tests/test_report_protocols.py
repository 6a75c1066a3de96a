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
