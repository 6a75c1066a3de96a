"""Data-parallel training (lib/movielens/distributed.py): two CPU processes under torchrun
(gloo) train the model one process trains, on the global batch."""
import pytest
import torch

from lib.core.params import ParamsError
from lib.core.runs import configure
from lib.movielens import steps


def _run(processes: int, **train):
    return configure(run=f"ddp{processes}", data={"dataset": "synthetic"},
                     model={"dropout": 0.0, "embedding_dim": 32, "hidden": [64]},
                     loss={"kind": "mixed", "num_negatives": 8, "remove_accidental_hits": True, "logq_correction": True},
                     train={"max_epochs": 3, "batch_size": 128, "processes": processes, **train},
                     evaluate={"bootstrap": 50}, seed=2)


@pytest.mark.e2e
@pytest.mark.slow
def test_two_processes_train_the_one_process_model(tmp_path, monkeypatch):
    """Without dropout, a step in two processes is the one-process step on the same global
    batch up to float summation order: the same per-epoch losses and validation NDCG@10
    (tolerance 1e-5 relative), weights within 1e-4, and the same stopping epoch. With
    in-batch negatives from the *global* batch: with each process's half only, the mixed
    loss's in-batch term would differ from the first step on."""
    monkeypatch.setenv("TWOTOWER_BUILD_DIR", str(tmp_path))
    one, two = _run(1), _run(2)
    assert one.model_dir != two.model_dir  # a model trained in two processes is cached apart
    rec1, rec2 = steps.train(one), steps.train(two)
    h1, h2 = rec1["history"], rec2["history"]
    assert len(h1) == len(h2) == 3
    for col in ("train_loss", "val_loss", "val_ndcg@10"):
        assert h2[col].tolist() == pytest.approx(h1[col].tolist(), rel=1e-5), col
    assert h1["train_loss"].iloc[-1] < h1["train_loss"].iloc[0]  # it trained
    w1 = torch.load(one.model_dir / "model.pt")
    w2 = torch.load(two.model_dir / "model.pt")
    assert w1.keys() == w2.keys()
    for k in w1:
        assert torch.allclose(w1[k].float(), w2[k].float(), atol=1e-4), k
    # the evaluation step reads the cached model like any other: the one-process figures
    t1, t2 = steps.evaluate(one)["test_metrics"], steps.evaluate(two)["test_metrics"]
    assert t2.set_index("metric")["@10"].to_dict() == pytest.approx(t1.set_index("metric")["@10"].to_dict(), abs=1e-6)


@pytest.mark.unit
def test_processes_need_interaction_batches_and_an_even_share():
    with pytest.raises(ParamsError, match="train.processes > 1 needs train.batching: interactions"):
        configure(loss={"kind": "full_softmax"}, train={"batching": "users", "processes": 2})
    with pytest.raises(ParamsError, match=r"train.batch_size \(1001\) must be a multiple of train.processes \(2\)"):
        configure(train={"batch_size": 1001, "processes": 2})
    with pytest.raises(ParamsError, match="the baselines fit in one process"):
        configure(model={"kind": "popularity"}, train={"processes": 2})


@pytest.mark.unit
def test_the_processes_output_is_printed_as_it_comes_and_a_failure_quotes_its_last_lines(tmp_path, monkeypatch):
    """launch streams torchrun's output: the child below prints a line, then waits for the
    parent to have printed it (a flag file) before it says whether it was seen in time; it
    fails without a result, so launch raises with the last lines."""
    import subprocess
    import sys

    from lib.movielens import distributed
    flag = tmp_path / "seen"
    child = (f"import pathlib, time\nprint('epoch 1: train_loss 1.0', flush=True)\nflag = pathlib.Path({str(flag)!r})\n"
             "for _ in range(200):\n    if flag.exists(): break\n    time.sleep(0.05)\n"
             "print('streamed' if flag.exists() else 'buffered', flush=True)\nraise SystemExit(3)\n")
    real_popen = subprocess.Popen
    monkeypatch.setattr(distributed.subprocess, "Popen",
                        lambda cmd, **kw: real_popen([sys.executable, "-c", child], **kw))
    printed = []

    def fake_print(*args, **kw):
        printed.append(" ".join(map(str, args)))
        if "epoch 1" in printed[-1]:
            flag.touch()
    monkeypatch.setattr(distributed, "print", fake_print, raising=False)
    cfg = {"train": {"processes": 2, "threads": 1}}
    with pytest.raises(RuntimeError, match=r"\(2 processes\) failed with status 3:\nepoch 1: train_loss 1.0\nstreamed$"):
        distributed.launch(cfg, tmp_path, tmp_path / "model.pt")
    assert [p.strip() for p in printed] == ["epoch 1: train_loss 1.0", "streamed"]
