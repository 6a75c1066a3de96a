"""The sequence study's benchmark (python -m lib.wikiseq.bench) at a tiny size: the search
figures are those of the retrieval code, the training step is timed and projected."""
import pytest

from lib.wikiseq import bench


@pytest.mark.unit
def test_bench_times_search_and_a_training_step(capsys):
    out = bench.main(["--synthetic", "--queries", "50", "--repeats", "1", "--train-steps", "3",
                      "--hidden", "8", "--threads", "1"])
    assert (out["bank"], out["queries"]) == (61749, 50)
    # the synthetic queries are seeded: the same recall every time
    assert (out["recall@10"], out["recall@1000"]) == (pytest.approx(0.04), pytest.approx(0.36))
    t = out["train"]
    assert t["device"] == "cpu" and t["steps"] == 3 and t["step_seconds"] > 0
    assert t["implied_seconds"] == pytest.approx({run: micro * t["step_seconds"]
                                                  for run, micro in bench.RUN_MICRO_BATCHES.items()})
    printed = capsys.readouterr().out
    assert "training micro-batch (32 x 100 x 384, GRU 8 each way, cpu, 1 threads): median" in printed
    assert "312 micro-batches" in printed and "448 micro-batches" in printed


@pytest.mark.unit
def test_bench_can_skip_the_training_step():
    out = bench.main(["--synthetic", "--queries", "20", "--repeats", "1", "--train-steps", "0", "--threads", "1"])
    assert "train" not in out and out["queries"] == 20
