"""The test-time protocols: queries that read history through validation, and a refit on
train+val with what validation chose; validation itself never changes."""
import json

import numpy as np
import pytest
import torch

from lib.core.params import ParamsError
from lib.core.runs import configure
from lib.movielens import baselines, evaluate as evaluation, steps
from lib.movielens.train import build_model, history_weights

SMALL = {"dataset": "synthetic", "synthetic": {"n_users": 120, "n_items": 80, "n_ratings": 4000}}
QUICK = {"bootstrap": 20}


def _run(model, evaluate=None, train=None):
    return configure(data=SMALL, model=model, train=train or {}, evaluate={**QUICK, **(evaluate or {})})


def test_through_validation_moves_val_into_training_only():
    run = _run({"kind": "popularity"})
    data = steps.load_data(run)
    view = data.through_validation()
    assert len(view.train) == len(data.train) + len(data.val) and len(view.val) == 0
    assert view.test.equals(data.test)
    assert view.train["timestamp"].is_monotonic_increasing
    assert view.train["timestamp"].max() <= data.test["timestamp"].min()  # nothing of the test period


def test_history_through_validation_is_read_and_excluded_at_test():
    run = _run({"kind": "itemknn", "params": {"k": 20}})
    data = steps.load_data(run)
    view = data.through_validation()
    model = baselines.ItemKNN(k=20).fit(data.matrix("train"), data.train)
    reading = steps.with_history(model, view, run.cfg["model"])
    users = np.arange(data.n_users)
    want = (view.matrix("train")[users] @ model.similarity_).toarray()
    cold = np.diff(view.matrix("train").indptr) == 0
    np.testing.assert_allclose(reading.score(users)[~cold], want[~cold], rtol=1e-6)
    assert reading.score(users).tolist() != model.score(users).tolist()  # validation items moved the scores
    # the original model is untouched (validation is scored on the training history)
    warm = np.diff(data.matrix("train").indptr) > 0
    np.testing.assert_allclose(model.score(users)[warm], (data.matrix("train") @ model.similarity_).toarray()[warm],
                               rtol=1e-6)
    # a user's validation items are never ranked at test time
    truth, test_users = evaluation.ground_truth(view, run.cfg, "test")
    top = evaluation.rank(reading, view, test_users, 20, "cpu")
    val = data.matrix("val")
    for row, u in zip(top, test_users):
        assert not set(row) & set(val[u].indices)


def test_a_two_tower_reads_the_longer_history_without_retraining():
    run = _run({"kind": "two_tower", "id_embeddings": True, "history": "recency", "embedding_dim": 16,
                "hidden": [16]})
    data = steps.load_data(run)
    torch.manual_seed(0)
    model = build_model(data, run.cfg["model"]).eval()
    view = data.through_validation()
    reading = steps.with_history(model, view, run.cfg["model"])
    want = history_weights(view, "recency", run.cfg["model"]["history_half_life_days"])
    assert (reading.user_tower.hist != want).nnz == 0
    assert (model.user_tower.hist != history_weights(data, "recency", 30.0)).nnz == 0  # a copy: the model is as trained
    for name, p in model.state_dict().items():  # same weights, same trained-ID mask
        assert torch.equal(p, reading.state_dict()[name])
    users = torch.arange(data.n_users)
    moved = (reading.user_tower(users) - model.user_tower(users)).abs().sum(1) > 1e-6
    has_val = torch.as_tensor(np.diff(data.matrix("val").indptr) > 0)
    assert moved.any() and not (moved & ~has_val).any()  # only users with validation interactions move


def test_refit_baseline_equals_a_fit_on_train_and_val_with_the_chosen_value():
    run = _run({"kind": "ease", "select_on_validation": {"l2": [10.0, 300.0]}},
               evaluate={"query_history": "train+val", "refit": True})
    steps.evaluate(run)
    out = json.loads((run.dir / "metrics.json").read_text())
    chosen = out["train"]["hyperparameters"]["l2"]
    view = steps.load_data(run).through_validation()
    direct = baselines.EASE(l2=chosen).fit(view.matrix("train"), view.train)
    entry, _ = evaluation.evaluate_split(direct, view, run.cfg, "test", "cpu")
    assert out["splits"]["test"]["metrics"] == entry["metrics"]
    assert out["protocol"] == {"query_history": "train+val", "refit": True}
    # validation is the same as under the reference protocol: it is where the choice was made
    ref = _run({"kind": "ease", "select_on_validation": {"l2": [10.0, 300.0]}})
    steps.evaluate(ref)
    ref_val = json.loads((ref.dir / "metrics.json").read_text())["splits"]["val"]
    assert (ref_val["metrics"], ref_val["ci"]) == (out["splits"]["val"]["metrics"], out["splits"]["val"]["ci"])


def test_refit_two_tower_trains_the_best_epoch_count_on_train_and_val():
    run = _run({"kind": "two_tower", "id_embeddings": True, "history": "mean", "embedding_dim": 16, "hidden": [16]},
               evaluate={"query_history": "train+val", "refit": True},
               train={"max_epochs": 3, "batch_size": 256, "patience": 2})
    steps.evaluate(run)
    out = json.loads((run.dir / "metrics.json").read_text())
    assert out["refit"]["epochs"] == out["train"]["best_epoch"] >= 1
    refit = json.loads((run.model_dir / "refit.json").read_text())
    assert refit["key"] == run.train_key
    # cached: a second evaluation with another bootstrap reuses the refit model
    again = _run(run.cfg["model"], evaluate={"query_history": "train+val", "refit": True, "bootstrap": 30},
                 train=run.cfg["train"])
    steps.evaluate(again)
    assert json.loads((again.dir / "metrics.json").read_text())["splits"]["test"]["metrics"] == \
        out["splits"]["test"]["metrics"]
    assert json.loads((run.model_dir / "refit.json").read_text()) == refit


def test_refit_needs_the_longer_history():
    with pytest.raises(ParamsError, match="set evaluate.query_history: train\\+val"):
        _run({"kind": "popularity"}, evaluate={"refit": True})
    with pytest.raises(ParamsError, match="evaluate.query_history: unknown 'all'; known: 'train' or 'train\\+val'"):
        _run({"kind": "popularity"}, evaluate={"query_history": "all"})
