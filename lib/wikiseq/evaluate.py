"""Full-bank retrieval with FAISS and the metrics: Recall@K, MRR (over the top max(K)),
and the in-batch top-1 accuracy the training loss optimises."""
from __future__ import annotations

import math

import faiss
import numpy as np

INDEXES = ("exact", "ivf")


def set_threads(n: int) -> None:
    faiss.omp_set_num_threads(int(n))


def auto_nlist(n: int) -> int:
    """~4 sqrt(N) lists, at most N // 39 (FAISS wants >= 39 training points per list)."""
    return max(1, min(int(4 * math.sqrt(n)), n // 39))


def build_index(vectors: np.ndarray, kind: str = "exact", nlist: int | None = None,
                nprobe: int = 32, seed: int = 0) -> faiss.Index:
    """Inner-product index over L2-normalised vectors: exact (IndexFlatIP) or IVF-flat."""
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    d = x.shape[1]
    if kind == "exact":
        index = faiss.IndexFlatIP(d)
    elif kind == "ivf":
        nlist = nlist or auto_nlist(len(x))
        quant = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quant, d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        index.train(x)
        index.nprobe = min(nprobe, nlist)
    else:
        raise ValueError(f"unknown index {kind!r}; known: {INDEXES}")
    index.add(x)
    return index


def search(index: faiss.Index, queries: np.ndarray, k: int, batch: int = 1024) -> np.ndarray:
    q = np.ascontiguousarray(queries, dtype=np.float32)
    k = min(k, index.ntotal)
    out = np.empty((len(q), k), np.int64)
    for s in range(0, len(q), batch):
        _, ids = index.search(q[s:s + batch], k)
        out[s:s + batch] = ids
    return out


def ranks(ids: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """1-based rank of each target in its retrieved list; 0 where it was not retrieved."""
    hit = ids == np.asarray(targets)[:, None]
    found = hit.any(1)
    return np.where(found, hit.argmax(1) + 1, 0)


def metrics_from_ranks(r: np.ndarray, ks) -> dict:
    out = {f"recall@{k}": float(np.mean((r > 0) & (r <= k))) if len(r) else float("nan") for k in ks}
    out["mrr"] = float(np.mean(np.where(r > 0, 1.0 / np.maximum(r, 1), 0.0))) if len(r) else float("nan")
    return out


def brute_force_ranks(bank: np.ndarray, queries: np.ndarray, targets: np.ndarray, k: int) -> np.ndarray:
    """Reference implementation (numpy argsort over every bank vector) for tests."""
    scores = queries @ bank.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return ranks(order, targets)


def in_batch_top1(q: np.ndarray, d: np.ndarray, batch: int) -> float:
    """Share of queries whose own target scores highest among the targets of its batch
    (consecutive blocks of ``batch``): what the training loss rewards."""
    hits, n = 0, 0
    for s in range(0, len(q), batch):
        qb, db = q[s:s + batch], d[s:s + batch]
        if len(qb) < 2:
            continue
        sc = qb @ db.T
        hits += int(np.sum(sc.argmax(1) == np.arange(len(qb))))
        n += len(qb)
    return hits / n if n else float("nan")
