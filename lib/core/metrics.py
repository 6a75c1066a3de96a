"""Ranking metrics over full-catalog top-K lists, vectorised over users.

Definitions (binary relevance; ``R_u`` = user's relevant test items, ``hit_i`` = 1 if the
item at rank i is relevant):
- Recall@k = |top-k ∩ R_u| / |R_u|;  Precision@k = |top-k ∩ R_u| / k
- NDCG@k = DCG@k / IDCG@k, DCG = Σ hit_i / log2(i + 1), IDCG over min(|R_u|, k) hits
- HitRate@k = 1 if any hit in the top k
- MRR@K = 1 / rank of the first hit within the top K (0 if none)
- MAP@K = Σ_{i<=K} hit_i · Precision@i / |R_u|   (trec_eval's map_cut: the denominator is
  the number of relevant items, not the number retrieved)
Each is averaged over evaluated users. These match trec_eval (tests check pytrec_eval).
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

KS = (5, 10, 20, 50, 100)


def hit_matrix(topk: np.ndarray, truth: sp.csr_matrix, users: np.ndarray) -> np.ndarray:
    """Bool (n_eval_users, K): is the item at each rank a relevant item for that user."""
    rows = truth[users]
    n, k = topk.shape
    # Membership test by sorted keys: row * n_items + item.
    n_items = truth.shape[1]
    r_idx = np.repeat(np.arange(n), np.diff(rows.indptr))
    keys = np.sort(r_idx.astype(np.int64) * n_items + rows.indices)
    query = np.arange(n, dtype=np.int64)[:, None] * n_items + topk.astype(np.int64)
    pos = np.searchsorted(keys, query)
    pos = np.minimum(pos, max(len(keys) - 1, 0))
    found = (keys[pos] == query) if len(keys) else np.zeros((n, k), bool)
    return found & (topk >= 0)  # -1 pads a list that ran out of unseen items


def per_user_metrics(hits: np.ndarray, n_relevant: np.ndarray, ks=KS) -> dict[str, np.ndarray]:
    """Per-user values of every metric (arrays of length n_users)."""
    n, kmax = hits.shape
    n_relevant = np.asarray(n_relevant, dtype=np.float64)
    if np.any(n_relevant <= 0):
        raise ValueError("every evaluated user needs at least one relevant item")
    h = hits.astype(np.float64)
    cum = np.cumsum(h, axis=1)
    discount = 1.0 / np.log2(np.arange(2, kmax + 2))
    dcg = np.cumsum(h * discount, axis=1)
    ideal = np.cumsum(discount)
    out: dict[str, np.ndarray] = {}
    for k in ks:
        if k > kmax:
            raise ValueError(f"cut-off {k} exceeds list length {kmax}")
        n_hit = cum[:, k - 1]
        out[f"recall@{k}"] = n_hit / n_relevant
        out[f"precision@{k}"] = n_hit / k
        idcg = ideal[np.minimum(n_relevant, k).astype(int) - 1]
        out[f"ndcg@{k}"] = dcg[:, k - 1] / idcg
        out[f"hit_rate@{k}"] = (n_hit > 0).astype(np.float64)
    first = np.where(hits.any(axis=1), hits.argmax(axis=1) + 1, 0)
    out[f"mrr@{kmax}"] = np.where(first > 0, 1.0 / np.maximum(first, 1), 0.0)
    prec_at_i = cum / np.arange(1, kmax + 1)
    out[f"map@{kmax}"] = (prec_at_i * h).sum(axis=1) / n_relevant
    return out


def summarize(per_user: dict[str, np.ndarray]) -> dict[str, float]:
    return {k: float(v.mean()) for k, v in per_user.items()}


def coverage(topk: np.ndarray, n_items: int) -> float:
    """Distinct items in all evaluated users' lists / catalog size."""
    return float(len(np.setdiff1d(np.unique(topk), [-1])) / n_items)


def intra_list_distance(topk: np.ndarray, item_vectors: np.ndarray, metric: str = "jaccard") -> float:
    """Mean pairwise distance of the items in each list, averaged over lists.

    ``jaccard`` on multi-hot metadata (genres) is model-independent, so it compares
    across models; ``cosine`` on a model's own embeddings is the reference's definition
    and only compares a model with itself.
    """
    if (topk < 0).any():
        raise ValueError("diversity needs full lists (no -1 padding)")
    v = item_vectors[topk].astype(np.float64)  # (n, k, d)
    n, k, _ = v.shape
    if metric == "jaccard":
        inter = np.einsum("nid,njd->nij", v, v)
        sizes = v.sum(-1)
        union = sizes[:, :, None] + sizes[:, None, :] - inter
        sim = np.divide(inter, union, out=np.ones_like(inter), where=union > 0)
    elif metric == "cosine":
        v = v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)
        sim = np.einsum("nid,njd->nij", v, v)
    else:
        raise ValueError(metric)
    iu = np.triu_indices(k, 1)
    return float((1.0 - sim[:, iu[0], iu[1]]).mean())
