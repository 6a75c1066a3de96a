"""FAISS retrieval against brute force, metrics, IVF."""
import numpy as np
import pytest

from lib.core import retrieval

pytestmark = pytest.mark.unit


def _data(n=3000, d=24, q=200, seed=0):
    rng = np.random.default_rng(seed)
    bank = rng.standard_normal((n, d)).astype(np.float32)
    bank /= np.linalg.norm(bank, axis=1, keepdims=True)
    targets = rng.integers(0, n, q)
    queries = bank[targets] + 0.9 * rng.standard_normal((q, d)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    return bank, queries, targets


def test_exact_faiss_equals_brute_force():
    bank, queries, targets = _data()
    ks = [1, 10, 100, 500]
    idx = retrieval.build_index(bank, "exact")
    r = retrieval.ranks(retrieval.search(idx, queries, max(ks)), targets)
    rb = retrieval.brute_force_ranks(bank, queries, targets, max(ks))
    np.testing.assert_array_equal(r, rb)
    m = retrieval.metrics_from_ranks(r, ks)
    for k in ks:
        assert m[f"recall@{k}"] == pytest.approx(np.mean((rb > 0) & (rb <= k)))
    assert m["mrr"] == pytest.approx(np.mean(np.where(rb > 0, 1 / np.maximum(rb, 1), 0)))
    assert 0 < m["recall@10"] < m["recall@500"] <= 1


def test_oracle_and_ivf_recall_not_above_exact():
    bank, queries, targets = _data()
    exact = retrieval.build_index(bank, "exact")
    ivf = retrieval.build_index(bank, "ivf", nlist=32, nprobe=4)
    assert retrieval.metrics_from_ranks(retrieval.ranks(retrieval.search(exact, bank[targets], 10), targets), [1])["recall@1"] == 1.0
    r_e = retrieval.metrics_from_ranks(retrieval.ranks(retrieval.search(exact, queries, 100), targets), [100])
    r_i = retrieval.metrics_from_ranks(retrieval.ranks(retrieval.search(ivf, queries, 100), targets), [100])
    assert r_i["recall@100"] <= r_e["recall@100"]


def test_in_batch_top1():
    d = np.eye(8, dtype=np.float32)
    assert retrieval.in_batch_top1(d, d, 4) == 1.0
    assert retrieval.in_batch_top1(d, d[::-1].copy(), 8) == 0.0
