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
