"""Study `wikiseq`: the two-tower v1/v2 failure comparison on a real text-embedding bank.

A query tower reads ``ctx_len`` consecutive chunk vectors of an article and must retrieve the
next chunk from the whole bank. prepare -> train -> evaluate, each cached on disk; see
lib/seq/ for the pieces and lib/seq/report.py for the report.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import ParamsError, params_hash, require
from ..pipeline import build_root
from ..report import atomic_write_json
from ..seq import bank as bankmod
from ..seq import retrieval, windows
from ..seq.towers import HEURISTICS

SOURCES = ("builtin", "npz", "textdir", "synthetic")
TOWERS = ("gru", "residual")

DEFAULTS = {
    "data": {
        "source": "builtin",        # builtin | npz | textdir | synthetic
        "path": None,               # the .npz bank or the folder of .txt files
        "wiki_articles": None,      # cap on gensim wiki articles (None = all 106)
        "summaries": None,          # cap on ovos summaries (None = all, 0 = none)
        "min_words": 3,             # a chunk is a sentence of at least this many words
        "embed_batch": 64,
        "ctx_len": 100,
        "stride": 1,                # window stride for training/validation pairs
        "val_fraction": 0.1,        # share of long articles held out (split by article)
        "n_train": 1247,            # training pairs drawn from train articles (None = all)
        "n_val": 139,               # validation pairs drawn from val articles (None = all)
        "n_eval": 1000,             # common final evaluation queries (same for every run)
        "pair_cap": None,           # caps n_train (quick profiles)
        "split_seed": 0,            # article split, pair sampling, eval set, synthetic bank
        "synth_articles": 40,
        "synth_len": 160,
        "synth_dim": 32,
        "synth_distractors": 400,
    },
    "model": {
        "tower": "gru",             # gru (the reference's GRUPoolQuery) | residual
        "hidden": 512,
        "decay": 0.9,               # residual tower: decay of its exp-weighted base
    },
    "loss": {
        "temperature": 0.07,
        "hard_negatives": 0,        # per pair, mined from the bank (0 = in-batch only)
        "hard_pool": 50,            # mined among the top hard_pool of the heuristic query
    },
    "train": {
        "epochs": 8,
        "max_epochs": None,         # cap on epochs (quick profiles, smoke)
        "batch_size": 32,
        "accum_steps": 8,
        "lr": 2e-5,
        "weight_decay": 0.01,
        "threads": 1,               # torch + faiss threads (1: no OpenMP spin when the CPU is shared)
        "epoch_eval_queries": 200,  # validation queries scored over the bank after each epoch
    },
    "evaluate": {
        "ks": [10, 100, 500, 1000],
        "index": "exact",           # exact | ivf (the reference's IVF-flat)
        "nlist": None,              # IVF lists (None = ~4 sqrt(N))
        "nprobe": 32,
        "heuristic_decay": 0.9,
        "small_bank": 10000,        # Option 2: also score against a bank of this many chunks (0 = skip)
        "batch_size": 32,           # in-batch top-1 is measured in blocks of this size
    },
}
OPEN_KEYS: frozenset = frozenset()
BANK_KEYS = ("source", "path", "wiki_articles", "summaries", "min_words", "split_seed",
             "synth_articles", "synth_len", "synth_dim", "synth_distractors")


def validate(cfg: dict) -> None:
    d, m, lo, t, e = cfg["data"], cfg["model"], cfg["loss"], cfg["train"], cfg["evaluate"]
    require(d["source"] in SOURCES, f"data.source must be one of {SOURCES}, got {d['source']!r}")
    if d["source"] in ("npz", "textdir"):
        require(isinstance(d["path"], str) and d["path"], f"data.path is required for source {d['source']}")
    for key in ("ctx_len", "stride", "min_words", "embed_batch", "n_eval", "synth_articles",
                "synth_len", "synth_dim"):
        require(isinstance(d[key], int) and d[key] >= 1, f"data.{key} must be an integer >= 1, got {d[key]!r}")
    require(d["synth_distractors"] >= 0, "data.synth_distractors must be >= 0")
    for key in ("wiki_articles", "summaries", "n_train", "n_val", "pair_cap"):
        v = d[key]
        require(v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= (0 if key == "summaries" else 1)),
                f"data.{key} must be None or a positive integer, got {v!r}")
    require(0 < d["val_fraction"] < 1, f"data.val_fraction must be in (0, 1), got {d['val_fraction']}")
    require(m["tower"] in TOWERS, f"model.tower must be one of {TOWERS}, got {m['tower']!r}")
    require(m["hidden"] >= 1, "model.hidden must be >= 1")
    require(0 < m["decay"] <= 1, f"model.decay must be in (0, 1], got {m['decay']}")
    require(lo["temperature"] > 0, f"loss.temperature must be > 0, got {lo['temperature']}")
    require(lo["hard_negatives"] >= 0, "loss.hard_negatives must be >= 0")
    require(lo["hard_pool"] >= max(1, lo["hard_negatives"]), "loss.hard_pool must be >= loss.hard_negatives")
    require(t["epochs"] >= 0, "train.epochs must be >= 0")
    require(t["max_epochs"] is None or (isinstance(t["max_epochs"], int) and t["max_epochs"] >= 0),
            "train.max_epochs must be None or an integer >= 0")
    require(t["batch_size"] >= 2, "train.batch_size must be >= 2 (in-batch negatives)")
    require(t["accum_steps"] >= 1, "train.accum_steps must be >= 1")
    require(t["lr"] > 0, f"train.lr must be > 0, got {t['lr']}")
    require(t["weight_decay"] >= 0, "train.weight_decay must be >= 0")
    require(t["threads"] >= 1, "train.threads must be >= 1")
    require(t["epoch_eval_queries"] >= 1, "train.epoch_eval_queries must be >= 1")
    ks = e["ks"]
    require(len(ks) > 0 and all(isinstance(k, int) and k >= 1 for k in ks), f"evaluate.ks must be positive integers, got {ks}")
    require(list(ks) == sorted(set(ks)), f"evaluate.ks must be strictly increasing, got {ks}")
    require(e["index"] in retrieval.INDEXES, f"evaluate.index must be one of {retrieval.INDEXES}, got {e['index']!r}")
    require(e["nlist"] is None or e["nlist"] >= 1, "evaluate.nlist must be None or >= 1")
    require(e["nprobe"] >= 1, "evaluate.nprobe must be >= 1")
    require(0 < e["heuristic_decay"] <= 1, f"evaluate.heuristic_decay must be in (0, 1], got {e['heuristic_decay']}")
    require(e["small_bank"] >= 0, "evaluate.small_bank must be >= 0")
    require(e["batch_size"] >= 2, "evaluate.batch_size must be >= 2")


# -- shared helpers --------------------------------------------------------------------------
_MEMO: dict = {}


def _log(msg: str) -> None:
    print(msg, flush=True)


def _device(cfg: dict) -> str:
    import torch
    dev = cfg["device"]
    if dev == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if dev == "cuda" and not torch.cuda.is_available():
        raise ParamsError("device: cuda was asked for but no CUDA GPU is available (use cpu or auto)")
    return dev


def _threads(cfg: dict) -> None:
    import torch
    torch.set_num_threads(cfg["train"]["threads"])
    retrieval.set_threads(cfg["train"]["threads"])


def bank_key(cfg: dict) -> str:
    return params_hash({k: cfg["data"][k] for k in BANK_KEYS})


def load_bank(run) -> bankmod.Bank:
    cfg = run.cfg
    key = bank_key(cfg)
    if key in _MEMO:
        return _MEMO[key]
    folder = build_root() / "wikiseq" / "banks" / key
    bank = bankmod.load_saved(folder)
    if bank is None:
        t0 = time.perf_counter()
        bank = bankmod.build_bank(cfg["data"], build_root() / "cache", key, _device(cfg),
                                  cfg["data"]["split_seed"], log=_log)
        bankmod.save_bank(bank, folder)
        _log(f"bank {key}: {len(bank):,} chunks x {bank.dim} in {time.perf_counter() - t0:.1f} s")
    if len(_MEMO) > 8:   # one bank and its indexes at a time is enough
        _MEMO.clear()
    _MEMO[key] = bank
    return bank


def _index(bank: bankmod.Bank, kind: str, nlist, nprobe, seed=0, subset=None):
    sub = None if subset is None else hashlib.sha256(np.asarray(subset, np.int64).tobytes()).hexdigest()
    mkey = ("index", bank.key, kind, nlist, nprobe, sub)
    if mkey not in _MEMO:
        vecs = bank.vectors if subset is None else bank.vectors[subset]
        _MEMO[mkey] = retrieval.build_index(vecs, kind, nlist, nprobe, seed)
    return _MEMO[mkey]


# -- prepare -----------------------------------------------------------------------------------
def _prepared(run) -> tuple[bankmod.Bank, dict]:
    d = run.cfg["data"]
    bank = load_bank(run)
    path = run.data_dir / "pairs.npz"
    meta_path = run.data_dir / "prepared.json"
    if path.is_file() and meta_path.is_file():
        try:
            z = np.load(path)
            pairs = {k: z[k] for k in z.files}
            pairs["meta"] = json.loads(meta_path.read_text())
            if pairs["meta"].get("bank_key") == bank.key:
                return bank, pairs
        except (OSError, ValueError, KeyError):
            pass  # rebuilt below
    starts, lens = bank.article_start, bank.article_len
    ctx, seed = d["ctx_len"], d["split_seed"]
    train_art, val_art = windows.split_articles(lens, ctx, d["val_fraction"], seed)
    train_all = windows.article_windows(starts, lens, ctx, d["stride"], train_art)
    val_all = windows.article_windows(starts, lens, ctx, d["stride"], val_art)
    n_train = d["n_train"]
    if d["pair_cap"] is not None:
        n_train = min(d["pair_cap"], n_train or len(train_all), len(train_all))
    train_s = windows.sample(train_all, n_train, seed + 1, "data.n_train")
    val_s = windows.sample(val_all, d["n_val"], seed + 2, "data.n_val")
    # the common evaluation set: stride-1 windows of the validation articles, the same for
    # every run that shares the bank, the split and ctx_len
    eval_all = windows.article_windows(starts, lens, ctx, 1, val_art)
    eval_s = windows.sample(eval_all, min(d["n_eval"], len(eval_all)), seed + 3, "data.n_eval")
    # epoch evaluation takes a prefix of val_s and in-batch blocks are consecutive: mix articles
    val_s = val_s[np.random.default_rng(seed + 4).permutation(len(val_s))]
    eval_s = eval_s[np.random.default_rng(seed + 5).permutation(len(eval_s))]
    seq_articles = int(np.sum(lens > ctx))
    meta = {
        "bank_key": bank.key, "bank_size": len(bank), "dim": bank.dim, "articles": len(bank.titles),
        "sequence_articles": seq_articles, "train_articles": len(train_art), "val_articles": len(val_art),
        "train_windows_available": int(len(train_all)), "val_windows_available": int(len(val_all)),
        "n_train": int(len(train_s)), "n_val": int(len(val_s)), "n_eval": int(len(eval_s)),
        "eval_windows_available": int(len(eval_all)),
        "chunks_per_sequence_article_median": float(np.median(lens[lens > ctx])) if seq_articles else 0.0,
        "chunks_per_article_median": float(np.median(lens)),
        "source_sha256": bank.source_sha256,
        "eval_set_sha256": hashlib.sha256(np.ascontiguousarray(eval_s, dtype=np.int64).tobytes()).hexdigest()[:16],
    }
    run.data_dir.mkdir(parents=True, exist_ok=True)
    tmp = run.data_dir / ".pairs.tmp.npz"
    np.savez(tmp, train=train_s, val=val_s, eval=eval_s, train_articles=train_art, val_articles=val_art)
    tmp.replace(path)
    atomic_write_json(meta_path, meta)
    return bank, {"train": train_s, "val": val_s, "eval": eval_s, "train_articles": train_art,
                  "val_articles": val_art, "meta": meta}


def prepare(run) -> dict:
    bank, pairs = _prepared(run)
    meta = pairs["meta"]
    table = pd.DataFrame([{"quantity": k, "value": v} for k, v in meta.items() if k != "source_sha256"])
    lens = bank.article_len
    fig = None
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(6, 3))
        ax.hist(lens[lens > 0], bins=50, log=True)
        ax.axvline(run.cfg["data"]["ctx_len"], color="red", ls="--", label="ctx_len")
        ax.set_xlabel("chunks per article")
        ax.set_ylabel("articles")
        ax.legend()
        plt.close(fig)
    except ImportError:  # pragma: no cover
        pass
    return {"data": table, "chunks_per_article": fig}


# -- cache keys ----------------------------------------------------------------------------------
# Results are reused only for the same params *and* the same code that computes them: the
# training and retrieval code under lib/seq/ (not unrelated files, so that a change elsewhere in
# lib/ does not throw away an hour of training). A key is computed once per Run object, so a
# file edited while a run is training cannot split one run across two keys.
CODE_PATHS = ("lib/seq",)
KEY_CODE = ("lib/seq/bank.py", "lib/seq/windows.py", "lib/seq/towers.py", "lib/seq/train.py",
            "lib/seq/retrieval.py")


def code_hash() -> str:
    from ..pipeline import ROOT
    h = hashlib.sha256()
    for rel in KEY_CODE:
        h.update(rel.encode())
        h.update((ROOT / rel).read_bytes())
    return h.hexdigest()[:12]


def _train_key(run) -> str:
    if "_wikiseq_train_key" not in run.__dict__:
        cfg = run.cfg
        run.__dict__["_wikiseq_train_key"] = params_hash({
            "cfg": {k: cfg[k] for k in ("data", "model", "loss", "train", "seed")},
            "epoch_eval": [cfg["evaluate"]["ks"], cfg["evaluate"]["heuristic_decay"]],
            "code": code_hash()})
    return run.__dict__["_wikiseq_train_key"]


def metrics_key(run) -> str:
    if "_wikiseq_metrics_key" not in run.__dict__:
        run.__dict__["_wikiseq_metrics_key"] = params_hash({
            "cfg": {k: v for k, v in run.cfg.items() if k != "device"}, "train": _train_key(run)})
    return run.__dict__["_wikiseq_metrics_key"]


def is_up_to_date(run) -> bool:
    path = run.dir / "metrics.json"
    try:
        return path.is_file() and json.loads(path.read_text()).get("key") == metrics_key(run)
    except ValueError:
        return False


# -- train -------------------------------------------------------------------------------------


def _train_paths(run) -> tuple[Path, Path]:
    """Training artifacts live in a folder keyed by the training hash, so a quick profile and
    the full study of the same run name do not overwrite each other."""
    folder = run.dir / f"train-{_train_key(run)}"
    return folder / "train.json", folder / "model.pt"


def _load_tower(run, bank):
    import torch
    from ..seq.towers import build_query_tower
    torch.manual_seed(run.cfg["seed"])
    return build_query_tower(run.cfg["model"], bank.dim)


def _train_tables(rec: dict) -> dict:
    hist = pd.DataFrame(rec["history"])
    return {"summary": {k: rec[k] for k in ("updates", "epochs", "updates_per_epoch", "n_params",
                                             "train_seconds", "device")},
            "history": hist}


def train(run) -> dict:
    import torch
    from ..seq import train as trainer
    from ..seq.towers import n_params
    cfg = run.cfg
    key = _train_key(run)
    out, model_path = _train_paths(run)
    if out.is_file() and model_path.is_file():
        try:
            rec = json.loads(out.read_text())
            if rec.get("key") == key:
                return _train_tables(rec)
        except ValueError:
            pass
    _threads(cfg)
    bank, pairs = _prepared(run)
    dev = _device(cfg)
    tower = _load_tower(run, bank).to(dev)
    bank_t = torch.from_numpy(bank.vectors).to(dev)
    index = _index(bank, "exact", None, 0)
    t0 = time.perf_counter()
    _log(f"[{cfg['run']}] training {cfg['model']['tower']} tower on {len(pairs['train']):,} pairs "
         f"({dev}, {torch.get_num_threads()} threads)")
    res = trainer.fit(tower, bank_t, index, pairs["train"], pairs["val"], cfg, cfg["seed"], log=_log)
    rec = {"key": key, **res, "n_params": n_params(tower), "train_seconds": time.perf_counter() - t0,
           "device": dev, "n_train": int(len(pairs["train"])), "n_val": int(len(pairs["val"]))}
    model_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = model_path.with_name(".model.tmp.pt")
    torch.save(tower.state_dict(), tmp)
    tmp.replace(model_path)
    atomic_write_json(out, rec)
    return _train_tables(rec)


# -- evaluate ----------------------------------------------------------------------------------
def _score(index, queries, targets, ks, remap=None):
    ids = retrieval.search(index, queries, max(ks))
    if remap is not None:
        ids = np.where(ids >= 0, remap[np.maximum(ids, 0)], -1)
    r = retrieval.ranks(ids, targets)
    return r, retrieval.metrics_from_ranks(r, ks)


def _eval_tables(m: dict) -> dict:
    rows = [{"query": "model (" + m["model"]["tower"] + ")", **m["final"]["exact"]}]
    rows += [{"query": name, **v["exact"]} for name, v in m["heuristics"].items()]
    return {"final (common eval set, exact search over the whole bank)": pd.DataFrame(rows),
            "per-epoch (run's validation pairs)": pd.DataFrame(m["train"]["history"]),
            "summary": {"updates": m["train"]["updates"], "device": m["device"],
                        "wall_seconds": m["wall_seconds"]}}


def evaluate(run) -> dict:
    import torch
    from ..seq import train as trainer
    cfg = run.cfg
    path = run.dir / "metrics.json"
    key = metrics_key(run)
    keyed = run.dir / f"eval-{key}"
    if (keyed / "metrics.json").is_file() and (keyed / "ranks.npz").is_file():
        try:
            m = json.loads((keyed / "metrics.json").read_text())
            if m.get("key") == key:
                if not path.is_file() or path.read_text() != (keyed / "metrics.json").read_text():
                    atomic_write_json(path, m)
                return _eval_tables(m)
        except ValueError:
            pass
    t_start = time.perf_counter()
    t0 = time.perf_counter()
    bank, pairs = _prepared(run)
    t_prep = time.perf_counter() - t0
    t0 = time.perf_counter()
    train(run)
    t_train = time.perf_counter() - t0
    train_rec = json.loads(_train_paths(run)[0].read_text())
    t0 = time.perf_counter()
    _threads(cfg)
    dev = _device(cfg)
    e, d = cfg["evaluate"], cfg["data"]
    ks, ctx = e["ks"], d["ctx_len"]
    tower = _load_tower(run, bank)
    tower.load_state_dict(torch.load(_train_paths(run)[1], map_location="cpu"))
    tower.to(dev)
    bank_t = torch.from_numpy(bank.vectors).to(dev)
    starts = pairs["eval"]
    targets = starts + ctx
    exact = _index(bank, "exact", None, 0)
    ivf = _index(bank, "ivf", e["nlist"], e["nprobe"], cfg["seed"])
    small = remap = None
    if e["small_bank"] and e["small_bank"] < len(bank):
        rng = np.random.default_rng(d["split_seed"] + 5)
        others = np.setdiff1d(np.arange(len(bank)), targets)
        n_more = max(0, e["small_bank"] - len(np.unique(targets)))
        remap = np.sort(np.concatenate([np.unique(targets), rng.choice(others, n_more, replace=False)]))
        small = _index(bank, "exact", None, 0, subset=remap)

    t_q = time.perf_counter()
    queries = {"model": trainer.encode_queries(tower, bank_t, starts, ctx)}
    t_query_model = time.perf_counter() - t_q
    # heuristic results depend only on the bank, the query set and the evaluation settings:
    # computed once per process and shared by the runs of a report
    hkey = ("heuristics", bank.key, pairs["meta"]["eval_set_sha256"], ctx,
            params_hash({k: e[k] for k in ("ks", "nlist", "nprobe", "heuristic_decay", "small_bank", "batch_size")}))
    if hkey not in _MEMO:
        for h in HEURISTICS:
            queries[h] = trainer.encode_heuristic(bank_t, starts, ctx, h, e["heuristic_decay"])
        queries["oracle"] = bank.vectors[targets]
    docs = bank.vectors[targets]
    results, ranks = {}, {}
    if hkey in _MEMO:
        results, ranks = (dict(x) for x in _MEMO[hkey])
    search_seconds = None
    for name, q in queries.items():
        t_s = time.perf_counter()
        r_exact, m_exact = _score(exact, q, targets, ks)
        if name == "model":
            search_seconds = time.perf_counter() - t_s
        _, m_ivf = _score(ivf, q, targets, ks)
        res = {"exact": m_exact, "ivf": m_ivf, "inbatch_top1": retrieval.in_batch_top1(q, docs, e["batch_size"])}
        if small is not None:
            _, res["small_bank"] = _score(small, q, targets, ks, remap)
        results[name] = res
        ranks[name] = r_exact
    _MEMO[hkey] = ({n: v for n, v in results.items() if n != "model"},
                   {n: v for n, v in ranks.items() if n != "model"})
    model_res = results.pop("model")
    main = "ivf" if e["index"] == "ivf" else "exact"
    t_eval = time.perf_counter() - t0
    m = {
        "key": key, "study": "wikiseq", "run": cfg["run"], "cfg": cfg, "device": dev,
        "data": pairs["meta"],
        "model": {"tower": cfg["model"]["tower"], "n_params": train_rec["n_params"]},
        "train": {k: train_rec[k] for k in ("history", "updates", "epochs", "updates_per_epoch",
                                             "micro_batches_per_epoch", "train_seconds", "n_train", "n_val")},
        "final": {**model_res, "main": model_res[main], "index": main},
        "heuristics": results,
        "small_bank_size": int(len(remap)) if remap is not None else len(bank),
        "ivf": {"nlist": int(ivf.nlist), "nprobe": int(ivf.nprobe)},
        "timing": {"search_seconds_exact": search_seconds, "n_queries": int(len(starts)),
                   "query_encode_seconds": t_query_model},
        "wall_seconds": {"prepare": t_prep, "train": train_rec["train_seconds"], "train_step": t_train,
                         "evaluate": t_eval, "total_this_call": time.perf_counter() - t_start},
    }
    keyed.mkdir(parents=True, exist_ok=True)
    tmp = keyed / ".ranks.tmp.npz"
    np.savez(tmp, **ranks)
    tmp.replace(keyed / "ranks.npz")
    atomic_write_json(keyed / "metrics.json", m)
    atomic_write_json(path, m)
    return _eval_tables(m)


from ..seq.report import REPORT_DEFAULTS, render_report, report_config  # noqa: E402,F401
