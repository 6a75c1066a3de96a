"""What the notebooks show agrees with what the run computed: the views read the cached
steps, they do not recompute figures their own way."""
import numpy as np
import pytest

from lib.core import runs
from lib.movielens import evaluate as evaluation, steps, views

pytestmark = pytest.mark.unit


@pytest.fixture
def run():
    r = runs.configure(data={"dataset": "synthetic"}, model={"kind": "itemknn"},
                       evaluate={"bootstrap": 50}, run="views")
    steps.evaluate(r)
    return r


def test_example_user_top10_matches_the_stored_evaluation(run):
    out = views.example_query(run)
    data = steps.load_data(run)
    user = int(np.flatnonzero(data.user_ids == int(out["user"].split()[1].rstrip(":")))[0])
    top = out["top-10"]
    seen_titles = {data.item_labels[i] for i in data.matrix("train")[user].indices}
    assert len(top) == 10 and not set(top["title"]) & seen_titles  # training items never recommended
    truth, _ = evaluation.ground_truth(data, run.cfg, "test")
    z = np.load(run.dir / "per_user.npz")
    stored = z["test/recall@10"][np.flatnonzero(z["test/users"] == user)[0]]
    assert (top["relevant in test"] == "yes").sum() == pytest.approx(stored * truth[user].nnz)


def test_metrics_overview_shows_the_stored_ci(run):
    import json
    out = views.metrics_overview(run)
    stored = json.loads((run.dir / "metrics.json").read_text())["splits"]["test"]["ci"]["ndcg@10"]
    table = out["bootstrap_ci"]
    row = table[(table["split"] == "test") & (table["metric"] == "ndcg@10")].iloc[0]
    assert (row["95% CI low"], row["95% CI high"]) == pytest.approx((stored["low"], stored["high"]))


@pytest.mark.parametrize("model,loss,train", [
    ({"architecture": "sasrec", "embedding_dim": 16, "max_sequence_length": 10}, {"kind": "full_softmax"},
     {"batching": "sequences", "next_items": 2, "max_epochs": 1}),
    ({"architecture": "gru4rec", "embedding_dim": 16, "max_sequence_length": 10}, {"kind": "full_softmax"},
     {"batching": "sequences", "max_epochs": 1}),
    ({"architecture": "linear", "history": "mean", "embedding_dim": 16}, {"kind": "full_softmax"},
     {"batching": "users", "max_epochs": 1}),
])
def test_every_view_shows_the_linear_and_sequence_towers(model, loss, train):
    """The notebooks' views of a run of each new architecture (what notebooks 02 and 03 show)."""
    r = runs.configure(data={"dataset": "synthetic"}, model=model, loss=loss, train=train,
                       evaluate={"bootstrap": 50}, run=f"views_{model['architecture']}")
    steps.evaluate(r)
    assert model["architecture"] in views.model_overview(r)["model"]
    batch = views.training_batch(r)
    data = steps.load_data(r)
    rows = batch["first rows"]
    assert len(rows) == 8 and set(rows["user_id"]) <= set(data.user_ids)
    if train["batching"] == "sequences":  # each shown history: the user's latest training items, in time order
        row = rows.iloc[0]
        user = int(np.flatnonzero(data.user_ids == row["user_id"])[0])
        n, window = int((data.train["user"] == user).sum()), model["max_sequence_length"] + 1
        # the window holds the last L + 1 items, after a start code if the history fits whole
        assert row["positions"] == min(n, window) + (n < window) - 1
        assert row["starts with"] == ("the start code" if n < window else "a cut history")
    assert len(views.training_curves(r)["history"]) == 1
    assert len(views.example_query(r)["top-10"]) == 10
    assert views.retrieval_check(r)["faiss_vs_bruteforce"]["same top-10 (FAISS vs exact brute force)"].min() == 1.0
