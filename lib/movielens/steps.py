"""MovieLens study, the steps of a run: data prep -> train -> evaluate, each cached.

A run's ``model.kind`` is ``two_tower`` or a key of ``lib.baselines.BASELINES``; baseline
hyperparameters go in ``model.params`` (checked by the baseline's own constructor), and
``model.select_on_validation`` maps a hyperparameter to candidate values chosen by
validation NDCG@10 (the test split is never looked at to choose).
"""
from __future__ import annotations

import copy
import pickle
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..core.device import pick_device, set_threads
from ..core.files import atomic_path, atomic_write_json, built_once, read_json
from ..core.params import ParamsError, require
from . import baselines, evaluate as evaluation
from .data import DataError, PreparedData, date_seconds, prepared_data, source_fingerprint
from .features import normalise_schema
from .train import DivergedError, Trainer, build_model, history_weights

DEFAULTS = {
    "data": {
        "dataset": "ml-1m",          # ml-1m | ml-100k | synthetic | interactions (your log: columns, *_features)
        "path": None,                # MovieLens: folder or zip, else $TWOTOWER_DATA_ROOT/<dataset>, else download;
                                     # interactions: the log (CSV, TSV, Parquet; .gz for text)
        "verify_checksums": True,    # MovieLens: the official files' sha256
        "min_count": 5,              # k-core on users and items, repeated until stable
        "split": [0.8, 0.1, 0.1],    # global time split fractions (the reference protocol)
        "split_dates": None,         # [val_start, test_start] ISO dates: a global split at cut-off dates instead
        "leave_last": None,          # N: per-user leave-last-N instead (each user's last N to test, N before to val)
        "test_min_rating": 4,        # ground truth = held-out ratings >= this (a log without ratings: every interaction)
        "synthetic": {"n_users": 300, "n_items": 200, "n_ratings": 12000},
        # interactions only: the log's column names, timestamp unit, the rule for repeated pairs, side tables
        "columns": {"user": "user_id", "item": "item_id", "timestamp": "timestamp", "rating": "rating"},
        "timestamp_unit": "auto",    # auto (epoch s or ms by magnitude, ISO strings) | s | ms | iso
        "duplicates": "first",       # a (user, item) pair given more than once: keep first | last | all
        "user_features": None,       # {path, key, columns: {name: categorical | numeric | {type: ..., ...}}}
        "item_features": None,       # the same for items (multi_categorical: {type: multi_categorical, sep: "|"})
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
        "splits": ["val", "test"], "top_k": 100, "diversity_k": 10,
        "bootstrap": 1000, "latency": False, "latency_repeats": 1000,
        # the protocol at test time (validation is always scored on the training history):
        "query_history": "train",   # train (reference) | train+val: queries read history through validation
        "refit": False,             # refit every model on train+val with what validation chose, then test
    },
}
# The code whose change invalidates cached data, models and metrics (lib.core.runs.code_version):
# what computes results. Report layout, the CLI and params checking are left out, so that
# editing them does not retrain every model.
KEY_CODE = (*(f"lib/movielens/{name}.py" for name in ("data", "towers", "losses", "train", "baselines",
                                                      "evaluate", "steps")),
            *(f"lib/core/{name}.py" for name in ("metrics", "retrieval", "stats")))
TRAIN_EVALUATE_KEYS = ()  # training reads no evaluate setting (per-epoch figures are fixed)
OPEN_KEYS = frozenset({"model.params", "model.select_on_validation"})
RENAMED_KEYS = {"evaluate.k": "evaluate.top_k"}  # old -> new (one vocabulary across studies)
NULLABLE_KEYS = frozenset({"data.columns.rating"})  # a log without ratings
PATH_KEYS = ("data.path", "data.user_features.path", "data.item_features.path")
MOVIELENS_DATASETS = ("ml-1m", "ml-100k", "synthetic")
INTERACTIONS_ONLY = ("columns", "timestamp_unit", "duplicates", "user_features", "item_features")
MODEL_KINDS = ("two_tower", *baselines.BASELINES)
KS = evaluation.KS


def validate(cfg: dict) -> None:
    d, m, lo, t, e = cfg["data"], cfg["model"], cfg["loss"], cfg["train"], cfg["evaluate"]
    require(d["dataset"] in (*MOVIELENS_DATASETS, "interactions"),
            f"data.dataset: unknown '{d['dataset']}'; known: {[*MOVIELENS_DATASETS, 'interactions']}")
    require(len(d["split"]) == 3 and all(0 < f < 1 for f in d["split"]) and abs(sum(d["split"]) - 1) < 1e-9,
            f"data.split must be three fractions in (0, 1) summing to 1, got {d['split']}")
    _validate_protocol(d)
    require(d["min_count"] >= 1, "data.min_count must be >= 1")
    if d["dataset"] == "interactions":
        _validate_interactions(d)
    else:
        require(1 <= d["test_min_rating"] <= 5, "data.test_min_rating must be in 1..5")
        given = [k for k in INTERACTIONS_ONLY if d[k] != DEFAULTS["data"][k]]
        require(not given, f"data.{given[0] if given else ''} applies to data.dataset: interactions only "
                           f"(this run reads {d['dataset']}, whose columns and features are fixed)")
    require(m["kind"] in MODEL_KINDS, f"model.kind: unknown '{m['kind']}'; known: {list(MODEL_KINDS)}")
    syn = d["synthetic"]
    require(d["dataset"] != "synthetic" or syn["n_ratings"] <= 0.8 * syn["n_users"] * syn["n_items"],
            f"data.synthetic.n_ratings must be at most 80% of n_users x n_items ({syn['n_users']} x {syn['n_items']}), "
            f"got {syn['n_ratings']}")
    require(m["kind"] != "two_tower" or not (m["params"] or m["select_on_validation"]),
            "model.params and model.select_on_validation are a baseline's hyperparameters; a two-tower takes "
            "model.embedding_dim, model.hidden, ... (they would be ignored)")
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
    require(e["top_k"] >= max(KS), f"evaluate.top_k must be >= {max(KS)}")
    require(t["threads"] >= 1, f"train.threads must be >= 1, got {t['threads']}")
    require(d["dataset"] == "interactions" or 0 <= t["positive_min_rating"] <= 5,
            f"train.positive_min_rating must be in 0..5, got {t['positive_min_rating']}")
    require(e["bootstrap"] >= 20, f"evaluate.bootstrap must be >= 20 resamples, got {e['bootstrap']}")
    require(e["latency_repeats"] >= 1, f"evaluate.latency_repeats must be >= 1, got {e['latency_repeats']}")
    require(2 <= e["diversity_k"] <= e["top_k"], f"evaluate.diversity_k must be in 2..top_k, got {e['diversity_k']}")
    require(e["query_history"] in ("train", "train+val"),
            f"evaluate.query_history: train | train+val, got {e['query_history']!r}")
    require(not e["refit"] or e["query_history"] == "train+val",
            "evaluate.refit trains on train+val, so its queries read that history: set evaluate.query_history: train+val")
    if m["kind"] != "two_tower":
        cls = baselines.BASELINES[m["kind"]]
        try:
            cls(**m["params"])
        except (TypeError, ValueError) as exc:
            raise ParamsError(f"model.params for '{m['kind']}': {exc}") from exc
        for key, cands in m["select_on_validation"].items():
            require(isinstance(cands, list) and cands, f"model.select_on_validation.{key}: a non-empty list")
            for value in cands:
                try:
                    cls(**{**m["params"], key: value})
                except (TypeError, ValueError) as exc:
                    raise ParamsError(f"model.select_on_validation.{key} = {value!r} for '{m['kind']}': {exc}") from exc


def _validate_protocol(d: dict) -> None:
    require(d["split_dates"] is None or d["leave_last"] is None,
            "data.split_dates and data.leave_last are two protocols: set one (or neither, for data.split)")
    if d["split_dates"] is not None:
        dates = d["split_dates"]
        require(isinstance(dates, list) and len(dates) == 2 and all(isinstance(x, str) for x in dates),
                f"data.split_dates: [validation start, test start] as ISO dates, e.g. ['2000-11-01', '2000-12-01'], "
                f"got {dates!r}")
        try:
            seconds = [date_seconds(x) for x in dates]
        except ValueError as exc:
            raise ParamsError(f"data.split_dates: not an ISO date ({exc})") from exc
        require(seconds[0] < seconds[1], f"data.split_dates: the validation start must come before the test start, "
                                         f"got {dates}")
    if d["leave_last"] is not None:
        require(isinstance(d["leave_last"], int) and not isinstance(d["leave_last"], bool) and d["leave_last"] >= 1,
                f"data.leave_last: a number of interactions >= 1, got {d['leave_last']!r}")


def _validate_interactions(d: dict) -> None:
    from .interactions import file_format
    # Files are named here and opened when the data is prepared (a missing one is a DataError
    # naming it then): a params file can be checked before its data exists (e.g. the example's).
    require(isinstance(d["path"], str) and d["path"], "data.path: the interactions file (CSV, TSV or Parquet)")
    try:
        file_format(d["path"])
    except DataError as exc:
        raise ParamsError(f"data.path: {exc}") from exc
    for role in ("user", "item", "timestamp"):
        require(isinstance(d["columns"][role], str) and d["columns"][role],
                f"data.columns.{role}: the name of the log's {role} column")
    require(d["columns"]["rating"] is None or isinstance(d["columns"]["rating"], str),
            "data.columns.rating: a column name, or null for a log without ratings")
    require(d["timestamp_unit"] in ("auto", "s", "ms", "iso"),
            f"data.timestamp_unit: auto | s | ms | iso, got {d['timestamp_unit']!r}")
    require(d["duplicates"] in ("first", "last", "all"), f"data.duplicates: first | last | all, got {d['duplicates']!r}")
    for side in ("user", "item"):
        spec = d[f"{side}_features"]
        if spec is None:
            continue
        where = f"data.{side}_features"
        require(isinstance(spec, dict) and set(spec) == {"path", "key", "columns"},
                f"{where}: a mapping with exactly path, key and columns, got {spec!r}")
        require(isinstance(spec["path"], str) and spec["path"], f"{where}.path: the {side} feature file")
        require(isinstance(spec["key"], str) and spec["key"], f"{where}.key: the column holding the {side} id")
        normalise_schema(f"{where}.columns", spec["columns"])
        require(bool(spec["columns"]), f"{where}.columns: at least one feature")


def data_key_extra(cfg: dict) -> dict:
    """What prepared data depends on besides the data section (lib.core.runs.Run.data_key):
    the run's seed for generated data; with checksums off, the files' sizes and times."""
    d = cfg["data"]
    if d["dataset"] == "synthetic":
        return {"seed": cfg["seed"]}
    if d["dataset"] == "interactions":  # a user's files: their sizes and times (sha256 in the report)
        paths = [d["path"]] + [d[f"{s}_features"]["path"] for s in ("user", "item") if d[f"{s}_features"]]
        return {"files": {p: [Path(p).stat().st_size, Path(p).stat().st_mtime_ns] for p in paths if Path(p).exists()}}
    return {} if d["verify_checksums"] else {"files": source_fingerprint(d["dataset"], d["path"])}


# -- data ----------------------------------------------------------------------------------
def load_data(run) -> PreparedData:
    return prepared_data(run.cfg["data"], run.cfg["seed"], run.data_dir)


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
    return dataset_tables(load_data(run))


# -- training --------------------------------------------------------------------------------
def _fit_baseline(cfg, data: PreparedData, hyper: dict):
    model = baselines.BASELINES[cfg["model"]["kind"]](**hyper)
    return model.fit(data.matrix("train"), data.train)


def train(run) -> dict:
    """Train the run's model unless the model store holds it (keyed by data, model, loss,
    train, seed and code: runs that differ only in evaluation share one training)."""
    return _train_tables(built_once(run.model_dir / "train.json", run.train_key, lambda: _train(run)))


def _train(run) -> dict:
    cfg = run.cfg
    data = load_data(run)
    set_threads(cfg["train"]["threads"])
    device = pick_device(cfg["device"])
    t0 = time.perf_counter()
    folder = run.model_dir
    record = {"key": run.train_key, "kind": cfg["model"]["kind"], "device": str(device)}
    if cfg["model"]["kind"] == "two_tower":
        trainer = Trainer(data, cfg["model"], cfg["loss"], cfg["train"], cfg["seed"], cfg["device"])
        try:
            result = trainer.fit(on_epoch=lambda model: evaluation.validation_figures(model, data, cfg, device))
        except DivergedError as exc:
            raise DivergedError(f"run {cfg['run']}: {exc}; nothing was cached") from exc
        with atomic_path(folder / "model.pt") as tmp:
            torch.save(trainer.model.state_dict(), tmp)
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
                m, *_ = evaluation.split_metrics(model, data, cfg, "val", device, k=max(KS))
                grid.append({"param": key, "value": value, "val_ndcg@10": m["ndcg@10"], "val_recall@10": m["recall@10"]})
                if best is None or m["ndcg@10"] > best[1]:
                    best = (value, m["ndcg@10"])
            hyper[key] = best[0]
        model = _fit_baseline(cfg, data, hyper)
        with atomic_path(folder / "model.pkl") as tmp, open(tmp, "wb") as fh:
            pickle.dump(model, fh)
        record.update(hyperparameters=hyper, selection=grid)
    record["seconds"] = time.perf_counter() - t0
    atomic_write_json(folder / "train.json", record)  # written last: the entry is complete
    return record


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


def load_model(run, data: PreparedData, stem: str = "model"):
    """The run's trained model (``stem`` ``refit``: the one refit on train+val, with ``data``
    its ``through_validation``)."""
    cfg = run.cfg
    if cfg["model"]["kind"] == "two_tower":
        model = build_model(data, cfg["model"])
        model.load_state_dict(torch.load(run.model_dir / f"{stem}.pt", map_location="cpu"))
        model.eval()
        return model.to(pick_device(cfg["device"]))
    with open(run.model_dir / f"{stem}.pkl", "rb") as fh:
        return pickle.load(fh)


# -- the test-time protocols ---------------------------------------------------------------------
def with_history(model, data: PreparedData, model_cfg: dict):
    """A copy of a trained model whose queries read ``data``'s training split as history
    (``through_validation``: history up to the test period, no retraining). What reads a
    history: a two-tower's pooled history, ItemKNN's and EASE's user rows; a factor
    model's user vectors and the popularity counts stay as trained."""
    if isinstance(model, torch.nn.Module):
        model = copy.deepcopy(model)
        tower = model.user_tower
        if tower.history != "none":
            tower.set_history(history_weights(data, tower.history, model_cfg["history_half_life_days"]))
        return model
    return model.with_history(data.matrix("train")) if hasattr(model, "with_history") else model


def refit(run, data: PreparedData, record: dict):
    """The run's model refit on train+val (``data`` is ``through_validation``) with what
    validation chose: a baseline's selected hyperparameters, a two-tower's best epoch count
    (no early stopping: nothing is held out). Cached beside the model (``refit.*``)."""
    done = built_once(run.model_dir / "refit.json", run.train_key, lambda: _refit(run, data, record),
                      lock=run.model_dir / "refit")
    return load_model(run, data, "refit"), {"seconds": done["seconds"], "epochs": done.get("epochs")}


def _refit(run, data: PreparedData, record: dict) -> dict:
    cfg = run.cfg
    set_threads(cfg["train"]["threads"])
    t0 = time.perf_counter()
    folder = run.model_dir
    out = {"key": run.train_key}
    if cfg["model"]["kind"] == "two_tower":
        epochs = int(record["best_epoch"])
        train_cfg = dict(cfg["train"], max_epochs=epochs, patience=epochs + 1, early_stopping_metric="val_loss")
        trainer = Trainer(data, cfg["model"], cfg["loss"], train_cfg, cfg["seed"], cfg["device"])
        try:
            trainer.fit()
        except DivergedError as exc:
            raise DivergedError(f"run {cfg['run']} (refit on train+val): {exc}; nothing was cached") from exc
        with atomic_path(folder / "refit.pt") as tmp:
            torch.save(trainer.model.state_dict(), tmp)
        out["epochs"] = epochs
    else:
        model = _fit_baseline(cfg, data, record["hyperparameters"])
        with atomic_path(folder / "refit.pkl") as tmp, open(tmp, "wb") as fh:
            pickle.dump(model, fh)
    out["seconds"] = time.perf_counter() - t0
    atomic_write_json(folder / "refit.json", out)  # written last: the entry is complete
    return out


# -- evaluation ------------------------------------------------------------------------------
def evaluate(run) -> dict:
    """Evaluate the run's model on its splits unless ``metrics.json`` holds this run's key;
    writes ``metrics.json`` (last) and ``per_user.npz`` in the run folder."""
    cfg = run.cfg
    metrics_path = run.dir / "metrics.json"
    key = run.metrics_key
    cached = read_json(metrics_path)
    if cached and cached.get("key") == key:
        return _eval_tables(cached)
    train(run)  # cached: trains only if this run's model is missing
    data = load_data(run)
    set_threads(cfg["train"]["threads"])
    device = pick_device(cfg["device"])
    model = load_model(run, data)
    e = cfg["evaluate"]
    out = {"key": key, "run": cfg["run"], "config": cfg, "train": read_json(run.model_dir / "train.json"),
           "splits": {}, "data": {"name": data.name, "n_users": data.n_users, "n_items": data.n_items, **data.meta},
           "protocol": {"query_history": e["query_history"], "refit": e["refit"]}}
    per_user_store = {}
    for split in e["splits"]:
        split_model, split_data = model, data
        if split == "test" and e["query_history"] == "train+val":
            split_data = data.through_validation()
            if e["refit"]:
                split_model, out["refit"] = refit(run, split_data, out["train"])
            else:
                split_model = with_history(model, split_data, cfg["model"])
        out["splits"][split], per_user = evaluation.evaluate_split(split_model, split_data, cfg, split, device)
        per_user_store.update({f"{split}/{m}": v for m, v in per_user.items()})
    if cfg["evaluate"]["latency"] and isinstance(model, torch.nn.Module):
        out["latency"] = evaluation.latency(model, data, cfg["evaluate"]["latency_repeats"], device)
    with atomic_path(run.dir / "per_user.npz") as tmp:
        np.savez_compressed(tmp, **per_user_store)
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
