"""Top-K retrieval over the full catalog, never returning an excluded (already seen) item.
When a user has fewer than K unseen items (tiny catalogs), the list is padded with -1.

Two paths with one contract:
- ``faiss_topk``: embedding models. An exact inner-product FAISS index over all item
  vectors; each batch asks for k + (most exclusions of a user in the batch) neighbours and
  drops excluded items, so the result equals exact brute force with masking.
- ``dense_topk``: models that produce a score per (user, item) (popularity, EASE, ...):
  scores are masked to -inf and ``torch.topk`` picks the list.
"""
from __future__ import annotations

from typing import Callable

import faiss
import numpy as np
import scipy.sparse as sp
import torch


def build_ip_index(item_vectors: np.ndarray) -> faiss.Index:
    vecs = np.ascontiguousarray(item_vectors, dtype=np.float32)
    index = faiss.IndexFlatIP(vecs.shape[1])
    index.add(vecs)
    return index


def _filter_excluded(ids: np.ndarray, rows: sp.csr_matrix, k: int) -> np.ndarray:
    n = ids.shape[0]
    out = np.empty((n, k), np.int64)
    for r in range(n):
        seen = rows.indices[rows.indptr[r]:rows.indptr[r + 1]]
        cand = ids[r]
        cand = cand[cand >= 0]
        if len(seen):
            cand = cand[~np.isin(cand, seen, assume_unique=False)]
        out[r] = -1  # a small catalog can run out of unseen items: pad, never a hit
        out[r, :min(k, len(cand))] = cand[:k]
    return out


def faiss_topk(index: faiss.Index, user_vectors: np.ndarray, users: np.ndarray,
               exclude: sp.csr_matrix | None, k: int, batch_size: int = 2048) -> np.ndarray:
    """(len(users), k) item indices by inner product, excluded items removed."""
    n_items = index.ntotal
    out = np.empty((len(users), k), np.int64)
    for start in range(0, len(users), batch_size):
        sl = slice(start, start + batch_size)
        q = np.ascontiguousarray(user_vectors[sl], dtype=np.float32)
        if exclude is None:
            _, ids = index.search(q, k)
            out[sl] = ids
            continue
        rows = exclude[users[sl]]
        extra = int(np.diff(rows.indptr).max()) if rows.nnz else 0
        kk = min(n_items, k + extra)
        _, ids = index.search(q, kk)
        out[sl] = _filter_excluded(ids, rows, k)
    return out


def dense_topk(score_fn: Callable[[np.ndarray], np.ndarray], users: np.ndarray,
               exclude: sp.csr_matrix | None, k: int, batch_size: int = 1024) -> np.ndarray:
    out = np.empty((len(users), k), np.int64)
    for start in range(0, len(users), batch_size):
        ub = users[start:start + batch_size]
        scores = torch.as_tensor(np.asarray(score_fn(ub), dtype=np.float32)).clone()
        if exclude is not None:
            rows = exclude[ub].tocoo()
            scores[torch.as_tensor(rows.row, dtype=torch.long), torch.as_tensor(rows.col, dtype=torch.long)] = -torch.inf
        top = torch.topk(scores, min(k, scores.shape[1]), dim=1)
        ids = np.full((len(ub), k), -1, np.int64)
        ids[:, :top.indices.shape[1]] = np.where(torch.isinf(top.values).numpy(), -1, top.indices.numpy())
        out[start:start + len(ub)] = ids
    return out


def brute_force_topk(user_vectors: np.ndarray, item_vectors: np.ndarray, users: np.ndarray,
                     exclude: sp.csr_matrix | None, k: int) -> np.ndarray:
    """Exact reference for tests: full score matrix, masked, argsort."""
    scores = user_vectors.astype(np.float64) @ item_vectors.astype(np.float64).T
    if exclude is not None:
        scores[exclude[users].toarray() > 0] = -np.inf
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def agreement_with_bruteforce(user_vectors: np.ndarray, item_vectors: np.ndarray, users: np.ndarray,
                              exclude: sp.csr_matrix | None, topk: np.ndarray, tol: float = 1e-5) -> float:
    """Share of users whose retrieved list equals exact float64 top-k, rank by rank, where
    two items count as equal if their exact scores differ by < ``tol`` (float32 ties)."""
    k = topk.shape[1]
    exact = brute_force_topk(user_vectors, item_vectors, users, exclude, k)
    u = user_vectors.astype(np.float64)
    v = item_vectors.astype(np.float64)
    s_exact = np.einsum("nd,nkd->nk", u, v[exact])
    s_got = np.einsum("nd,nkd->nk", u, v[topk])
    return float((np.abs(s_exact - s_got) < tol).all(axis=1).mean())
