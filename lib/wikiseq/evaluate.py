"""Evaluation on the common evaluation set: the trained tower's queries and the heuristic
ones (last chunk, mean, exp-weighted average of the context; the oracle query is the target
vector itself), each scored over the whole bank by exact and IVF-flat FAISS search, over a
smaller bank (Option 2) and in-batch (top-1 among the targets of a block).

What the runs of one report share (the FAISS indexes over the bank, the heuristics'
results) is computed once per process and kept in a small in-memory cache (``shared``).
"""
from __future__ import annotations

import hashlib
import time

import numpy as np

from ..core import retrieval
from ..core.params import params_hash
from .towers import HEURISTICS
from .train import encode_heuristic, encode_queries

# The evaluate params the heuristics' results depend on (with the bank, the query set,
# ctx_len and the seed of the IVF index).
HEURISTIC_KEYS = ("cutoffs", "nlist", "nprobe", "heuristic_decay", "small_bank", "batch_size")

_SHARED: dict = {}
SHARED_MAX = 16


def shared(key: tuple, build):
    """In-process cache: the value of ``key`` (a tuple of plain values naming what it is
    computed from: the bank's identity and the settings), computed by ``build()`` when
    missing. Holds FAISS indexes and heuristic results, which every run of a report over
    the same bank needs; emptied when it reaches ``SHARED_MAX`` entries."""
    if key not in _SHARED:
        if len(_SHARED) >= SHARED_MAX:
            _SHARED.clear()
        _SHARED[key] = build()
    return _SHARED[key]


def bank_identity(bank) -> tuple:
    """What tells two banks apart in ``shared`` keys: the bank key and its sources' hashes."""
    return bank.key, params_hash(bank.source_sha256), len(bank), bank.dim


def index(bank, kind: str, nlist, nprobe, seed: int = 0, subset: np.ndarray | None = None):
    """The FAISS index (``exact`` or ``ivf``) over the bank, or over the rows ``subset``."""
    sub = None if subset is None else hashlib.sha256(np.asarray(subset, np.int64).tobytes()).hexdigest()

    def build():
        vecs = bank.vectors if subset is None else bank.vectors[subset]
        return retrieval.build_index(vecs, kind, nlist, nprobe, seed)

    return shared(("index", bank_identity(bank), kind, nlist, nprobe, seed, sub), build)


def score(idx, queries: np.ndarray, targets: np.ndarray, cutoffs, remap: np.ndarray | None = None):
    """(ranks of the targets, Recall@cutoffs and MRR) of ``queries`` searched in ``idx``;
    ``remap`` maps the ids of an index over a subset back to bank rows."""
    ids = retrieval.search(idx, queries, max(cutoffs))
    if remap is not None:
        ids = np.where(ids >= 0, remap[np.maximum(ids, 0)], -1)
    r = retrieval.ranks(ids, targets)
    return r, retrieval.metrics_from_ranks(r, cutoffs)


def small_bank_rows(n_bank: int, targets: np.ndarray, size: int, split_seed: int) -> np.ndarray | None:
    """Option 2's smaller bank: the evaluation targets plus random other chunks, ``size``
    rows in all (sorted bank rows); None when ``size`` is 0 or not below the bank size."""
    if not size or size >= n_bank:
        return None
    rng = np.random.default_rng(split_seed + 5)
    others = np.setdiff1d(np.arange(n_bank), targets)
    n_more = max(0, size - len(np.unique(targets)))
    return np.sort(np.concatenate([np.unique(targets), rng.choice(others, n_more, replace=False)]))


def score_queries(q: np.ndarray, targets: np.ndarray, docs: np.ndarray, exact, ivf, small,
                  remap, cutoffs, batch_size: int) -> tuple[dict, np.ndarray, float]:
    """One query set's results ``{exact, ivf, inbatch_top1[, small_bank]}``, its exact ranks
    and the seconds the exact search took."""
    t0 = time.perf_counter()
    r_exact, m_exact = score(exact, q, targets, cutoffs)
    search_seconds = time.perf_counter() - t0
    _, m_ivf = score(ivf, q, targets, cutoffs)
    res = {"exact": m_exact, "ivf": m_ivf, "inbatch_top1": retrieval.in_batch_top1(q, docs, batch_size)}
    if small is not None:
        _, res["small_bank"] = score(small, q, targets, cutoffs, remap)
    return res, r_exact, search_seconds


def evaluate_tower(tower, bank, bank_t, starts: np.ndarray, eval_set_sha256: str, ctx_len: int,
                   e: dict, seed: int, split_seed: int) -> dict:
    """The tower and the heuristics on the evaluation windows ``starts``. ``e``: the
    ``evaluate`` params; ``seed`` seeds the IVF index, ``split_seed`` the smaller bank.
    Returns ``model`` and ``heuristics`` results, their exact ``ranks`` (by query name),
    ``small_bank_size``, the ``ivf`` settings and ``timing``."""
    cutoffs = e["cutoffs"]
    targets = starts + ctx_len
    exact = index(bank, "exact", None, 0)
    ivf = index(bank, "ivf", e["nlist"], e["nprobe"], seed)
    remap = small_bank_rows(len(bank), targets, e["small_bank"], split_seed)
    small = None if remap is None else index(bank, "exact", None, 0, subset=remap)
    docs = bank.vectors[targets]

    t0 = time.perf_counter()
    q_model = encode_queries(tower, bank_t, starts, ctx_len)
    query_seconds = time.perf_counter() - t0
    model_res, model_ranks, search_seconds = score_queries(q_model, targets, docs, exact, ivf, small, remap,
                                                           cutoffs, e["batch_size"])

    def heuristics():
        queries = {h: encode_heuristic(bank_t, starts, ctx_len, h, e["heuristic_decay"]) for h in HEURISTICS}
        queries["oracle"] = bank.vectors[targets]
        results, ranks = {}, {}
        for name, q in queries.items():
            results[name], ranks[name], _ = score_queries(q, targets, docs, exact, ivf, small, remap,
                                                          cutoffs, e["batch_size"])
        return results, ranks

    hkey = ("heuristics", bank_identity(bank), eval_set_sha256, ctx_len, seed,
            params_hash({k: e[k] for k in HEURISTIC_KEYS}))
    h_results, h_ranks = shared(hkey, heuristics)
    return {
        "model": model_res, "heuristics": dict(h_results),
        "ranks": {"model": model_ranks, **h_ranks},
        "small_bank_size": int(len(remap)) if remap is not None else len(bank),
        "ivf": {"nlist": int(ivf.nlist), "nprobe": int(ivf.nprobe)},
        "timing": {"search_seconds_exact": search_seconds, "n_queries": int(len(starts)),
                   "query_encode_seconds": query_seconds},
    }
