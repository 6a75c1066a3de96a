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
from ..core.schema import check, defaults, nullable_keys, open_keys
from . import baselines, evaluate as evaluation
from .data import PreparedData, prepared_data, source_fingerprint
from .schema import RunParams
from .train import DivergedError, Trainer, build_model, set_query_history

# Every params key, its default, type, range and rules: lib/movielens/schema.py, declared once.
SCHEMA = RunParams
DEFAULTS = defaults(RunParams)
# The code whose change invalidates cached data, models and metrics (lib.core.runs.code_version):
# what computes results. Report layout, the CLI and params checking are left out, so that
# editing them does not retrain every model.
KEY_CODE = (*(f"lib/movielens/{name}.py" for name in ("data", "towers", "losses", "train", "baselines",
                                                      "evaluate", "steps", "distributed", "sequences")),
            *(f"lib/core/{name}.py" for name in ("metrics", "retrieval", "stats")))
TRAIN_EVALUATE_KEYS = ()  # training reads no evaluate setting (per-epoch figures are fixed)
OPEN_KEYS = open_keys(RunParams)          # model.params, model.select_on_validation
RENAMED_KEYS = {"evaluate.k": "evaluate.top_k"}  # old -> new (one vocabulary across studies)
NULLABLE_KEYS = nullable_keys(RunParams)  # data.columns.rating (a log without ratings)
PATH_KEYS = ("data.path", "data.user_features.path", "data.item_features.path")
KS = evaluation.KS


def validate(cfg: dict) -> None:
    """Raise ``ParamsError`` on an impossible value or combination (the schema's rules)."""
    check(RunParams, cfg)


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
    if cfg["model"]["kind"] == "two_tower" and cfg["train"]["processes"] > 1:
        from . import distributed  # torchrun, DistributedDataParallel
        with atomic_path(folder / "model.pt") as tmp:
            result = distributed.launch(cfg, run.data_dir, tmp)
        record.update(result, early_stopped=result["stopped_epoch"] < cfg["train"]["max_epochs"])
    elif cfg["model"]["kind"] == "two_tower":
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
        set_query_history(model.user_tower, data, model_cfg)
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
