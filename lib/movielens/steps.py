"""MovieLens study: data prep -> train -> evaluate for one run, and the report over runs.

A run's ``model.kind`` is ``two_tower`` or a key of ``lib.baselines.BASELINES``; baseline
hyperparameters go in ``model.params`` (checked by the baseline's own constructor), and
``model.select_on_validation`` maps a hyperparameter to candidate values chosen by
validation NDCG@10 (the test split is never looked at to choose).
"""
from __future__ import annotations

import json
import pickle
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .. import baselines, metrics, movielens, retrieval, stats
from ..config import ParamsError, params_hash, require
from ..pipeline import code_version, file_lock
from ..prepared import PreparedData, prepare as prepare_protocol
from ..report import atomic_write_json
from ..training import Trainer, build_model, embed_users, pick_device

DEFAULTS = {
    "data": {
        "dataset": "ml-1m",          # ml-1m | ml-100k | synthetic
        "path": None,                # local folder or zip; else $TWOTOWER_DATA_ROOT/<dataset>; else download
        "verify_checksums": True,
        "min_count": 5,              # k-core on users and items, repeated until stable
        "split": [0.8, 0.1, 0.1],    # global time split fractions
        "test_min_rating": 4,        # ground truth = held-out ratings >= this
        "synthetic": {"n_users": 300, "n_items": 200, "n_ratings": 12000},
    },
    "model": {
        "kind": "two_tower",
        "params": {},                # baseline hyperparameters (open mapping)
        "select_on_validation": {},  # hyperparameter -> list of candidates (open mapping)
        "embedding_dim": 128, "hidden": [256, 128], "dropout": 0.2,
        "feature_dim": 16, "id_dim": 32,
        "user_features": True, "item_features": True, "id_embeddings": False,
        "history": "none",           # none | mean | recency
        "history_half_life_days": 30.0,
        "item_popularity": False,    # item tower also sees training-period popularity (all, recent)
        "popularity_window_days": 30.0,
    },
    "loss": {
        "kind": "mixed",             # in_batch | explicit | mixed | full_softmax
        "temperature": 0.05, "num_negatives": 16, "explicit_weight": 0.7,
        "logq_correction": False, "remove_accidental_hits": False,
        "num_hard_negatives": 0, "hard_negative_pool": 100,
    },
    "train": {
        "batch_size": 1024, "learning_rate": 0.001, "weight_decay": 0.0,
        "max_epochs": 50, "patience": 5, "positive_min_rating": 0,
        "min_delta": 0.0,            # an epoch counts as better only if it beats the best by more than this
        "early_stopping_metric": "val_loss",  # val_loss | val_ndcg@10 | val_recall@10
        "batching": "interactions",  # interactions: one positive per row | users: all of a user's targets per row
        "user_batch_size": 128, "target_fraction": 0.2,  # users batching: share of history held out as targets
        "target_selection": "random",  # users batching: random (re-drawn each epoch) | latest (each user's most recent)
        "threads": 1,            # torch intra-op threads; 2 threads thrash when anything else shares 2 cores
    },
    "evaluate": {
        "splits": ["val", "test"], "k": 100, "diversity_k": 10,
        "bootstrap": 1000, "latency": False, "latency_repeats": 1000,
    },
}
# The code whose change invalidates cached data, models and metrics (lib.pipeline.code_version):
# what computes results. Report layout, the CLI and params checking are left out, so that
# editing them does not retrain every model.
KEY_CODE = tuple(f"lib/{name}.py" for name in (
    "movielens", "prepared", "towers", "losses", "training", "baselines", "metrics", "retrieval",
    "stats", "studies/movielens"))
OPEN_KEYS = frozenset({"model.params", "model.select_on_validation"})
MODEL_KINDS = ("two_tower", *baselines.BASELINES)
KS = metrics.KS


def validate(cfg: dict) -> None:
    d, m, lo, t, e = cfg["data"], cfg["model"], cfg["loss"], cfg["train"], cfg["evaluate"]
    require(d["dataset"] in ("ml-1m", "ml-100k", "synthetic"), f"data.dataset: unknown '{d['dataset']}'")
    require(len(d["split"]) == 3 and all(0 < f < 1 for f in d["split"]) and abs(sum(d["split"]) - 1) < 1e-9,
            f"data.split must be three fractions in (0, 1) summing to 1, got {d['split']}")
    require(d["min_count"] >= 1, "data.min_count must be >= 1")
    require(1 <= d["test_min_rating"] <= 5, "data.test_min_rating must be in 1..5")
    require(m["kind"] in MODEL_KINDS, f"model.kind: unknown '{m['kind']}'; known: {list(MODEL_KINDS)}")
    require(m["embedding_dim"] >= 1 and 0 <= m["dropout"] < 1, "model.embedding_dim >= 1 and 0 <= dropout < 1")
    require(all(isinstance(h, int) and h > 0 for h in m["hidden"]), "model.hidden: positive integers")
    require(m["history"] in ("none", "mean", "recency"), f"model.history: unknown '{m['history']}'")
    require(m["history_half_life_days"] > 0, "model.history_half_life_days must be > 0")
    require(m["popularity_window_days"] > 0, "model.popularity_window_days must be > 0")
    require(not m["item_popularity"] or m["item_features"],
            "model.item_popularity needs model.item_features (popularity is an item feature)")
    require(lo["kind"] in ("in_batch", "explicit", "mixed", "full_softmax"), f"loss.kind: unknown '{lo['kind']}'")
    require(lo["temperature"] > 0, f"loss.temperature must be > 0, got {lo['temperature']}")
    require(0 <= lo["explicit_weight"] <= 1, "loss.explicit_weight must be in [0, 1]")
    require(lo["num_negatives"] >= 1, "loss.num_negatives must be >= 1")
    require(lo["num_hard_negatives"] >= 0 and lo["hard_negative_pool"] >= max(1, lo["num_hard_negatives"]),
            "loss.num_hard_negatives >= 0 and hard_negative_pool >= num_hard_negatives")
    require(t["batch_size"] >= 2 and t["learning_rate"] > 0 and t["max_epochs"] >= 1 and t["patience"] >= 1,
            "train: batch_size >= 2, learning_rate > 0, max_epochs >= 1, patience >= 1")
    require(t["early_stopping_metric"] in ("val_loss", "val_ndcg@10", "val_recall@10"),
            f"train.early_stopping_metric: unknown '{t['early_stopping_metric']}'")
    require(t["min_delta"] >= 0, "train.min_delta must be >= 0")
    require(t["batching"] in ("interactions", "users"), f"train.batching: unknown '{t['batching']}'")
    require(t["batching"] == "interactions" or lo["kind"] == "full_softmax",
            "train.batching: users needs loss.kind: full_softmax (a softmax over the whole catalog per user)")
    require(t["target_selection"] in ("random", "latest"), f"train.target_selection: unknown '{t['target_selection']}'")
    require(0 < t["target_fraction"] < 1 and t["user_batch_size"] >= 1, "train.target_fraction in (0, 1), user_batch_size >= 1")
    require(set(e["splits"]) <= {"val", "test"} and e["splits"], "evaluate.splits: a subset of [val, test]")
    require(e["k"] >= max(KS), f"evaluate.k must be >= {max(KS)}")
    if m["kind"] != "two_tower":
        cls = baselines.BASELINES[m["kind"]]
        try:
            cls(**m["params"])
        except TypeError as exc:
            raise ParamsError(f"model.params for '{m['kind']}': {exc}") from exc
        for key, cands in m["select_on_validation"].items():
            require(isinstance(cands, list) and cands, f"model.select_on_validation.{key}: a non-empty list")
            try:
                cls(**{**m["params"], key: cands[0]})
            except TypeError as exc:
                raise ParamsError(f"model.select_on_validation for '{m['kind']}': {exc}") from exc


# -- data ----------------------------------------------------------------------------------
def load_data(run) -> PreparedData:
    folder = run.data_dir
    if (folder / "prepared.npz").is_file() and (folder / "meta.json").is_file():
        return PreparedData.load(folder)
    with file_lock(folder):  # parallel runs on the same data prepare it once
        if (folder / "prepared.npz").is_file() and (folder / "meta.json").is_file():
            return PreparedData.load(folder)
        return _prepare_data(run, folder)


def _prepare_data(run, folder: Path) -> PreparedData:
    d = run.cfg["data"]
    if d["dataset"] == "synthetic":
        src = movielens.write_synthetic_ml1m(folder / "synthetic", seed=run.cfg["seed"], **d["synthetic"])
        raw = movielens.parse_ml1m(src, verify=False)
        raw.name = "synthetic"
    else:
        raw = movielens.load(d["dataset"], d["path"], verify=d["verify_checksums"])
    data = prepare_protocol(raw, d["min_count"], tuple(d["split"]))
    data.save(folder)
    return data


def dataset_tables(data: PreparedData) -> dict:
    m = data.meta
    n = m["ratings"]
    overview = pd.DataFrame([
        ("ratings (raw)", m["raw_ratings"]), ("users (raw)", m["raw_users"]), ("items (raw)", m["raw_items"]),
        (f"ratings after {m['min_count']}-core", n), ("users", data.n_users), ("items", data.n_items),
        ("sparsity", f"{100 * (1 - n / (data.n_users * data.n_items)):.2f}%"),
    ], columns=["statistic", "value"])
    splits = pd.DataFrame([{"split": k, **{kk: vv for kk, vv in v.items() if kk != "period"},
                            "from": v["period"][0], "to": v["period"][1]} for k, v in m["splits"].items()])
    return {"dataset": overview, "splits": splits}


def prepare(run) -> dict:
    data = load_data(run)
    return dataset_tables(data)


# -- evaluation helpers ----------------------------------------------------------------------
def _truth(data, cfg, split):
    truth = data.matrix(split, min_rating=cfg["data"]["test_min_rating"])
    return truth, np.flatnonzero(np.diff(truth.indptr) > 0)


def rank(model_obj, data: PreparedData, users: np.ndarray, k: int, device) -> np.ndarray:
    """Top-k over the full catalog, training items excluded (reference protocol)."""
    seen = data.matrix("train")
    if isinstance(model_obj, torch.nn.Module):
        model_obj.eval()  # no dropout when scoring (callers in training switch back to train())
        with torch.no_grad():
            item_vec = model_obj.item_tower().cpu().numpy()
        user_vec = embed_users(model_obj, users, device)
        return retrieval.faiss_topk(retrieval.build_ip_index(item_vec), user_vec, users, seen, k)
    if hasattr(model_obj, "user_embeddings"):
        uv, iv = model_obj.user_embeddings(), model_obj.item_embeddings()
        return retrieval.faiss_topk(retrieval.build_ip_index(iv), uv[users], users, seen, k)
    return retrieval.dense_topk(model_obj.score, users, seen, k)


def split_metrics(model_obj, data, cfg, split: str, device, k: int | None = None) -> tuple[dict, dict, np.ndarray, np.ndarray]:
    truth, users = _truth(data, cfg, split)
    k = k or cfg["evaluate"]["k"]
    top = rank(model_obj, data, users, k, device)
    hits = metrics.hit_matrix(top, truth, users)
    per_user = metrics.per_user_metrics(hits, np.diff(truth[users].indptr), KS)
    return metrics.summarize(per_user), per_user, top, users


# -- training --------------------------------------------------------------------------------
def model_dir(run) -> Path:
    """Trained models are stored by what they depend on (data, model, loss, train, seed,
    code), so two runs that differ only in evaluation share one training."""
    d = run.dir.parent.parent / "models" / run.train_key
    d.mkdir(parents=True, exist_ok=True)
    return d


def _fit_baseline(cfg, data: PreparedData, hyper: dict):
    model = baselines.BASELINES[cfg["model"]["kind"]](**hyper)
    return model.fit(data.matrix("train"), data.train)


def train(run) -> dict:
    out = model_dir(run) / "train.json"
    if out.is_file() and json.loads(out.read_text()).get("key") == run.train_key:
        return _train_tables(json.loads(out.read_text()))
    with file_lock(model_dir(run)):  # two runs sharing one model (parallel): trained once
        if out.is_file() and json.loads(out.read_text()).get("key") == run.train_key:
            return _train_tables(json.loads(out.read_text()))
        return _train(run, out)


def _train(run, out: Path) -> dict:
    cfg = run.cfg
    data = load_data(run)
    torch.set_num_threads(cfg["train"]["threads"])
    device = pick_device(cfg["device"])
    t0 = time.perf_counter()
    record = {"key": run.train_key, "kind": cfg["model"]["kind"], "device": str(device)}
    if cfg["model"]["kind"] == "two_tower":
        trainer = Trainer(data, cfg["model"], cfg["loss"], cfg["train"], cfg["seed"], cfg["device"])

        def on_epoch(model):
            m, *_ = split_metrics(model, data, cfg, "val", device, k=max(KS))
            return {"val_recall@10": m["recall@10"], "val_ndcg@10": m["ndcg@10"], "val_hit_rate@10": m["hit_rate@10"]}

        result = trainer.fit(on_epoch=on_epoch)
        torch.save(trainer.model.state_dict(), model_dir(run) / "model.pt")
        record.update(history=result.history, best_epoch=result.best_epoch, stopped_epoch=result.stopped_epoch,
                      early_stopped=result.stopped_epoch < cfg["train"]["max_epochs"],
                      steps=result.steps, parameters=trainer.model.n_parameters(),
                      train_positives=int(len(trainer.train_users)))
    else:
        hyper = dict(cfg["model"]["params"])
        grid = []
        for key, cands in cfg["model"]["select_on_validation"].items():
            best = None
            for value in cands:
                model = _fit_baseline(cfg, data, {**hyper, key: value})
                m, *_ = split_metrics(model, data, cfg, "val", device, k=max(KS))
                grid.append({"param": key, "value": value, "val_ndcg@10": m["ndcg@10"], "val_recall@10": m["recall@10"]})
                if best is None or m["ndcg@10"] > best[1]:
                    best = (value, m["ndcg@10"])
            hyper[key] = best[0]
        model = _fit_baseline(cfg, data, hyper)
        with open(model_dir(run) / "model.pkl", "wb") as fh:
            pickle.dump(model, fh)
        record.update(hyperparameters=hyper, selection=grid)
    record["seconds"] = time.perf_counter() - t0
    atomic_write_json(out, record)
    return _train_tables(record)


def _train_tables(record: dict) -> dict:
    out = {"seconds": round(record["seconds"], 1)}
    if record.get("history"):
        out["history"] = pd.DataFrame(record["history"])
        out["parameters"] = record["parameters"]
    if record.get("selection"):
        out["selection"] = pd.DataFrame(record["selection"])
    if record.get("hyperparameters") is not None:
        out["hyperparameters"] = record["hyperparameters"]
    return out


def load_model(run, data: PreparedData):
    cfg = run.cfg
    if cfg["model"]["kind"] == "two_tower":
        model = build_model(data, cfg["model"])
        model.load_state_dict(torch.load(model_dir(run) / "model.pt", map_location="cpu"))
        model.eval()
        return model.to(pick_device(cfg["device"]))
    with open(model_dir(run) / "model.pkl", "rb") as fh:
        return pickle.load(fh)


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
        index = retrieval.build_ip_index(item_vec)
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


# -- evaluation ------------------------------------------------------------------------------
def metrics_key(run) -> str:
    return params_hash({"cfg": run.cfg, "code": code_version("movielens")})


def is_up_to_date(run) -> bool:
    path = run.dir / "metrics.json"
    return path.is_file() and json.loads(path.read_text()).get("key") == metrics_key(run)


def evaluate(run) -> dict:
    cfg = run.cfg
    metrics_path = run.dir / "metrics.json"
    key = metrics_key(run)
    if metrics_path.is_file() and json.loads(metrics_path.read_text()).get("key") == key:
        return _eval_tables(json.loads(metrics_path.read_text()))
    train(run)  # cached: trains only if this run's model is missing
    data = load_data(run)
    torch.set_num_threads(cfg["train"]["threads"])
    device = pick_device(cfg["device"])
    model = load_model(run, data)
    train_info = json.loads((model_dir(run) / "train.json").read_text())
    seen = data.matrix("train")
    has_history = np.diff(seen.indptr) > 0
    out = {"key": key, "run": cfg["run"], "config": cfg, "train": train_info, "splits": {},
           "data": {"name": data.name, "n_users": data.n_users, "n_items": data.n_items, **data.meta}}
    per_user_store = {}
    for split in cfg["evaluate"]["splits"]:
        t0 = time.perf_counter()
        summary, per_user, top, users = split_metrics(model, data, cfg, split, device)
        seconds = time.perf_counter() - t0
        dk = cfg["evaluate"]["diversity_k"]
        entry = {
            "metrics": summary, "rank_seconds": seconds, "n_users": int(len(users)),
            "n_users_without_train_history": int((~has_history[users]).sum()),
            "coverage@100": metrics.coverage(top[:, :100], data.n_items),
            f"genre_diversity@{dk}": metrics.intra_list_distance(top[:, :dk], data.item_genres, "jaccard"),
            "ci": {m: stats.bootstrap_ci(per_user[m], n_boot=cfg["evaluate"]["bootstrap"], seed=cfg["seed"])
                   for m in ("recall@10", "ndcg@10", "hit_rate@10")},
        }
        cold = ~has_history[users]
        if cold.any():
            entry["metrics_without_history"] = {m: float(per_user[m][cold].mean()) for m in ("recall@10", "ndcg@10", "hit_rate@10")}
        if isinstance(model, torch.nn.Module) or hasattr(model, "item_embeddings"):
            item_vec = (model.item_tower().detach().cpu().numpy() if isinstance(model, torch.nn.Module)
                        else model.item_embeddings())
            entry[f"embedding_diversity@{dk}"] = metrics.intra_list_distance(top[:, :dk], item_vec, "cosine")
            # FAISS top-k must equal exact brute force on the same embeddings.
            uv = (embed_users(model, users, device) if isinstance(model, torch.nn.Module)
                  else model.user_embeddings()[users])
            entry["faiss_equals_bruteforce@10"] = retrieval.agreement_with_bruteforce(uv, item_vec, users, seen, top[:, :10])
        out["splits"][split] = entry
        per_user_store.update({f"{split}/users": users, **{f"{split}/{m}": v for m, v in per_user.items()}})
    if cfg["evaluate"]["latency"] and isinstance(model, torch.nn.Module):
        out["latency"] = latency(model, data, cfg["evaluate"]["latency_repeats"], device)
    np.savez_compressed(run.dir / "per_user.npz", **per_user_store)
    atomic_write_json(metrics_path, out)
    return _eval_tables(out)


def _eval_tables(out: dict) -> dict:
    tables = {}
    for split, entry in out["splits"].items():
        m = entry["metrics"]
        rows = [{"metric": name, **{f"@{k}": m[f"{name}@{k}"] for k in KS}}
                for name in ("recall", "precision", "ndcg", "hit_rate")]
        tables[f"{split}_metrics"] = pd.DataFrame(rows)
        tables[f"{split}_global"] = pd.DataFrame([{kk: vv for kk, vv in entry.items() if isinstance(vv, (int, float))}
                                                  | {"mrr@100": m["mrr@100"], "map@100": m["map@100"]}])
    return tables


# -- report (lib/studies/movielens_report.py; imported only when a report is rendered, so
# that the run notebooks do not pay for matplotlib) ---------------------------------------------
def report_config(raw: dict) -> dict:
    from .movielens_report import report_config as configure_report
    return configure_report(raw)


def render_report(rcfg: dict) -> dict:
    from .movielens_report import render_report as render
    return render(rcfg)
