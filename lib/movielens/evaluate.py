"""Evaluating a MovieLens model: the full-catalog top-K of every evaluated user (training
items excluded), the metrics and their bootstrap CIs, the FAISS-against-brute-force check,
and serving latency.

Protocol: a user is evaluated on a split if they have at least one rating >=
``data.test_min_rating`` in it (the ground truth); their training items are never ranked,
so they cannot count as hits; users without training history are kept (the models fall
back to what they can do without it) and reported apart.
"""
from __future__ import annotations

import time

import numpy as np
import scipy.sparse as sp
import torch

from ..core import metrics, retrieval, stats
from .data import PreparedData
from .features import multi_hot
from .train import embed_users

KS = metrics.KS
CI_METRICS = ("recall@10", "ndcg@10", "hit_rate@10")


def ground_truth(data: PreparedData, cfg: dict, split: str) -> tuple[sp.csr_matrix, np.ndarray]:
    """The split's relevant (user, item) pairs and the users that have any. A pair the user
    already has in training is not relevant (it is never ranked; only a log read with
    ``data.duplicates: all`` has such repeats)."""
    truth = data.matrix(split, min_rating=cfg["data"]["test_min_rating"])  # none for a log without ratings
    repeats = truth.multiply(data.matrix("train"))
    if repeats.nnz:
        truth = (truth - repeats).tocsr()
        truth.eliminate_zeros()
    return truth, np.flatnonzero(np.diff(truth.indptr) > 0)


def is_embedding_model(model) -> bool:
    return isinstance(model, torch.nn.Module) or hasattr(model, "item_embeddings")


def embeddings(model, users: np.ndarray, device) -> tuple[np.ndarray, np.ndarray]:
    """(user vectors of ``users``, item vectors) of an embedding model (a two-tower, or a
    factor model with ``user_embeddings``/``item_embeddings``)."""
    if isinstance(model, torch.nn.Module):
        model.eval()  # no dropout when scoring (callers in training switch back to train())
        with torch.no_grad():
            item_vec = model.item_tower().cpu().numpy()
        return embed_users(model, users, device), item_vec
    return model.user_embeddings()[users], model.item_embeddings()


def rank(model, data: PreparedData, users: np.ndarray, k: int, device) -> np.ndarray:
    """Top-k over the full catalog, training items excluded (reference protocol)."""
    seen = data.matrix("train")
    if is_embedding_model(model):
        user_vec, item_vec = embeddings(model, users, device)
        return retrieval.faiss_topk(retrieval.build_index(item_vec), user_vec, users, seen, k)
    return retrieval.dense_topk(model.score, users, seen, k)


def split_metrics(model, data: PreparedData, cfg: dict, split: str, device,
                  k: int | None = None) -> tuple[dict, dict, np.ndarray, np.ndarray]:
    """(mean metrics, per-user metrics, top-k lists, users) of one split."""
    truth, users = ground_truth(data, cfg, split)
    k = k or cfg["evaluate"]["top_k"]
    top = rank(model, data, users, k, device)
    hits = metrics.hit_matrix(top, truth, users)
    per_user = metrics.per_user_metrics(hits, np.diff(truth[users].indptr), KS)
    return metrics.summarize(per_user), per_user, top, users


def validation_figures(model, data: PreparedData, cfg: dict, device) -> dict:
    """The per-epoch validation figures of a two-tower's training history."""
    m, *_ = split_metrics(model, data, cfg, "val", device, k=max(KS))
    return {"val_recall@10": m["recall@10"], "val_ndcg@10": m["ndcg@10"], "val_hit_rate@10": m["hit_rate@10"]}


def diversity_feature(data: PreparedData):
    """The item feature list diversity is measured on: the first multi-hot multi-categorical
    item feature (MovieLens: genres), or None."""
    return next((f for f in data.item_features if multi_hot(f)), None)


def evaluate_split(model, data: PreparedData, cfg: dict, split: str, device) -> tuple[dict, dict]:
    """A split's metrics.json entry and its per-user metrics (for paired tests)."""
    seen = data.matrix("train")
    has_history = np.diff(seen.indptr) > 0
    t0 = time.perf_counter()
    summary, per_user, top, users = split_metrics(model, data, cfg, split, device)
    seconds = time.perf_counter() - t0
    dk = cfg["evaluate"]["diversity_k"]
    entry = {
        "metrics": summary, "rank_seconds": seconds, "n_users": int(len(users)),
        "n_users_without_train_history": int((~has_history[users]).sum()),
        "coverage@100": metrics.coverage(top[:, :100], data.n_items),
        "ci": {m: stats.bootstrap_ci(per_user[m], n_boot=cfg["evaluate"]["bootstrap"], seed=cfg["seed"])
               for m in CI_METRICS},
    }
    tokens = diversity_feature(data)
    if tokens is not None:  # model-independent: Jaccard distance of the items' tokens (MovieLens: genres)
        entry[f"diversity@{dk}"] = metrics.intra_list_distance(top[:, :dk], tokens.tokens.toarray(), "jaccard")
        entry["diversity_feature"] = tokens.name
    cold = ~has_history[users]
    if cold.any():
        entry["metrics_without_history"] = {m: float(per_user[m][cold].mean()) for m in CI_METRICS}
    if is_embedding_model(model):
        user_vec, item_vec = embeddings(model, users, device)
        entry[f"embedding_diversity@{dk}"] = metrics.intra_list_distance(top[:, :dk], item_vec, "cosine")
        # FAISS top-k must equal exact brute force on the same embeddings.
        entry["faiss_equals_bruteforce@10"] = retrieval.agreement_with_bruteforce(user_vec, item_vec, users, seen,
                                                                                  top[:, :10])
    return entry, {"users": users, **per_user}


# -- latency ---------------------------------------------------------------------------------
def _timings(fn, repeats: int) -> dict:
    for _ in range(min(20, repeats)):
        fn()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t) * 1000)
    ts = np.array(ts)
    return {"mean_ms": float(ts.mean()), "p95_ms": float(np.percentile(ts, 95)), "p99_ms": float(np.percentile(ts, 99))}


def latency(model: torch.nn.Module, data: PreparedData, repeats: int, device) -> dict:
    """User embedding (batch 1, 1000), FAISS search k=50 over the full catalog, end to end."""
    with torch.inference_mode():
        item_vec = model.item_tower().cpu().numpy()
        index = retrieval.build_index(item_vec)
        rng = np.random.default_rng(0)
        one = torch.as_tensor(rng.integers(0, data.n_users, 1), device=device)
        many = torch.as_tensor(rng.integers(0, data.n_users, 1000), device=device)
        q = model.user_tower(one).cpu().numpy()

        def e2e():
            index.search(model.user_tower(one).cpu().numpy(), 50)

        return {
            "user_embedding_batch1": _timings(lambda: model.user_tower(one), repeats),
            "user_embedding_batch1000": _timings(lambda: model.user_tower(many), max(50, repeats // 10)),
            "faiss_search_k50": _timings(lambda: index.search(q, 50), repeats),
            "end_to_end": _timings(e2e, repeats),
            "catalog_size": int(index.ntotal), "device": str(device), "torch_threads": torch.get_num_threads(),
        }
