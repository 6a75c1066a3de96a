"""Ranking metrics against an independent implementation (trec_eval via pytrec_eval)."""
import numpy as np
import pytest
import pytrec_eval
import scipy.sparse as sp
from hypothesis import given, settings, strategies as st

from lib.core import metrics


def _random_case(seed, n_users=40, n_items=300, k=100):
    rng = np.random.default_rng(seed)
    topk = np.stack([rng.permutation(n_items)[:k] for _ in range(n_users)])
    rel = sp.lil_matrix((n_users, n_items), dtype=np.float32)
    for u in range(n_users):
        n_rel = int(rng.integers(1, 30))
        # bias relevance towards the user's list so that hits occur at many ranks
        cand = np.concatenate([topk[u, :60], rng.integers(0, n_items, 40)])
        rel[u, rng.choice(cand, n_rel, replace=False)] = 1
    return topk, rel.tocsr()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_match_trec_eval(seed):
    topk, truth = _random_case(seed)
    users = np.arange(truth.shape[0])
    hits = metrics.hit_matrix(topk, truth, users)
    ours = metrics.per_user_metrics(hits, np.diff(truth.indptr))
    qrel = {str(u): {str(i): 1 for i in truth[u].indices} for u in users}
    # strictly decreasing scores: no ties, so trec_eval ranks exactly as the list
    run = {str(u): {str(i): float(100 - r) for r, i in enumerate(topk[u])} for u in users}
    measures = {"recall.5", "recall.10", "recall.20", "recall.50", "recall.100", "P.5", "P.10", "P.100",
                "ndcg_cut.5", "ndcg_cut.10", "ndcg_cut.20", "ndcg_cut.100", "recip_rank", "success.10",
                "map_cut.100"}
    oracle = pytrec_eval.RelevanceEvaluator(qrel, measures).evaluate(run)
    mapping = {"recall@5": "recall_5", "recall@10": "recall_10", "recall@20": "recall_20", "recall@50": "recall_50",
               "recall@100": "recall_100", "precision@5": "P_5", "precision@10": "P_10", "precision@100": "P_100",
               "ndcg@5": "ndcg_cut_5", "ndcg@10": "ndcg_cut_10", "ndcg@20": "ndcg_cut_20",
               "ndcg@100": "ndcg_cut_100", "mrr@100": "recip_rank", "hit_rate@10": "success_10",
               "map@100": "map_cut_100"}
    for ours_name, trec_name in mapping.items():
        expected = np.array([oracle[str(u)][trec_name] for u in users])
        np.testing.assert_allclose(ours[ours_name], expected, atol=1e-4, err_msg=ours_name)


def test_perfect_ranking_scores_one():
    truth = sp.csr_matrix(np.eye(5, 200, dtype=np.float32))
    topk = np.stack([np.r_[u, np.setdiff1d(np.arange(200), [u])[:99]] for u in range(5)])
    m = metrics.summarize(metrics.per_user_metrics(metrics.hit_matrix(topk, truth, np.arange(5)), np.ones(5)))
    for name in ("recall@5", "ndcg@10", "hit_rate@5", "mrr@100", "map@100"):
        assert m[name] == pytest.approx(1.0)
    assert m["precision@5"] == pytest.approx(0.2)


def test_no_relevant_item_is_an_error():
    with pytest.raises(ValueError):
        metrics.per_user_metrics(np.zeros((2, 100), bool), np.array([1, 0]))


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_metrics_bounded_and_monotone(seed):
    topk, truth = _random_case(seed, n_users=8)
    m = metrics.per_user_metrics(metrics.hit_matrix(topk, truth, np.arange(8)), np.diff(truth.indptr))
    for v in m.values():
        assert np.all((v >= 0) & (v <= 1 + 1e-12))
    for a, b in ((5, 10), (10, 20), (20, 50), (50, 100)):
        assert np.all(m[f"recall@{a}"] <= m[f"recall@{b}"] + 1e-12)
        assert np.all(m[f"hit_rate@{a}"] <= m[f"hit_rate@{b}"])


def test_diversity_and_coverage():
    genres = np.array([[1, 0], [1, 0], [0, 1], [1, 1]], np.float32)
    same = np.array([[0, 1]])
    assert metrics.intra_list_distance(same, genres) == 0.0
    assert metrics.intra_list_distance(np.array([[0, 2]]), genres) == 1.0
    assert metrics.intra_list_distance(np.array([[0, 3]]), genres) == pytest.approx(0.5)
    assert metrics.coverage(np.array([[0, 1], [1, 2]]), 4) == 0.75


def test_padding_is_never_a_hit():
    truth = sp.csr_matrix(np.array([[0, 0, 1], [1, 0, 0]], np.float32))
    topk = np.array([[2, -1], [-1, -1]])
    assert metrics.hit_matrix(topk, truth, np.arange(2)).tolist() == [[True, False], [False, False]]
