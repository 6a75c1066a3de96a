"""Study `wikiseq`: params (defaults, validation) and the cached steps prepare -> train ->
evaluate that the notebooks run.

A query tower reads ``ctx_len`` consecutive chunk vectors of an article and must retrieve the
next chunk from the whole bank. Cache (under ``build/``, see ``lib.core.runs``): the bank in
``wikiseq/banks/<bank key>`` (shared by every run on it), the pairs in ``run.data_dir``, the
trained tower in ``run.model_dir`` (``train.json`` + ``model.pt``), the evaluation in
``run.dir`` (``metrics.json``, keyed by ``run.metrics_key``, + ``ranks.npz``). Each entry is
built under a lock (parallel runs build it once) and written complete or absent; one that
cannot be read is rebuilt.
"""
from __future__ import annotations

import time
import zipfile

import numpy as np
import pandas as pd

from ..core.device import pick_device, set_threads
from ..core.files import atomic_folder, atomic_path, atomic_write_json, file_lock, read_json
from ..core.schema import check, defaults, nullable_keys, open_keys
from ..core.runs import build_root
from . import bank as bankmod
from . import data
from . import evaluate as evaluation
from .schema import RunParams

# Every params key, its default, type, range and rules: lib/wikiseq/schema.py, declared once.
SCHEMA = RunParams
DEFAULTS = defaults(RunParams)
OPEN_KEYS = open_keys(RunParams)          # none
NULLABLE_KEYS = nullable_keys(RunParams)  # data.n_train, data.n_val: null = every window
# Keys renamed when the studies took one vocabulary (old -> new; all at once: the old
# train.max_epochs, a cap, is now train.epoch_cap, and the old train.epochs is max_epochs).
# An old key in a params file is an error that names the new one; reports rendered from
# files in the old names are checked against them (tests/test_reports_fresh.py).
RENAMED_KEYS = {"train.lr": "train.learning_rate", "train.epochs": "train.max_epochs",
                "train.max_epochs": "train.epoch_cap", "model.hidden": "model.gru_hidden",
                "evaluate.ks": "evaluate.cutoffs", "report.k": "report.cutoff"}
# The code whose change invalidates cached pairs, models and metrics (lib.core.runs.code_version):
# what computes results, this module included (it assembles the metrics record). The report, the
# views and the bench are left out, so that editing them does not retrain every model.
KEY_CODE = ("lib/wikiseq/bank.py", "lib/wikiseq/data.py", "lib/wikiseq/towers.py", "lib/wikiseq/train.py",
            "lib/wikiseq/evaluate.py", "lib/wikiseq/steps.py", "lib/core/retrieval.py")
# Training evaluates on the validation pairs after every epoch (Recall@cutoffs) and mines hard
# negatives with the exp-weighted heuristic: a model depends on these evaluate keys.
TRAIN_EVALUATE_KEYS = ("cutoffs", "heuristic_decay")



def validate(cfg: dict) -> None:
    """Raise ``ParamsError`` on an impossible value or combination (the schema's rules)."""
    check(RunParams, cfg)


def _log(msg: str) -> None:
    print(msg, flush=True)


def _threads(cfg: dict) -> None:
    """torch and FAISS intra-op threads: ``train.threads`` each."""
    set_threads(cfg["train"]["threads"], cfg["train"]["threads"])


# -- prepare -----------------------------------------------------------------------------------
def load_bank(run) -> bankmod.Bank:
    """The run's bank (shared by every run with the same ``bankmod.BANK_KEYS``)."""
    return bankmod.load(run.cfg["data"], build_root(), str(pick_device(run.cfg["device"])), log=_log)


def load_pairs(run) -> tuple[bankmod.Bank, dict]:
    """The run's bank and its pairs (``data.make_pairs``), cached in ``run.data_dir``."""
    bank = load_bank(run)
    return bank, data.pairs(bank, run.cfg["data"], run.data_dir)


def prepare(run) -> dict:
    bank, pairs = load_pairs(run)
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


# -- train -------------------------------------------------------------------------------------
def _new_tower(run, bank):
    import torch
    from .towers import build_query_tower
    torch.manual_seed(run.cfg["seed"])
    return build_query_tower(run.cfg["model"], bank.dim)


def _read_trained(run) -> dict | None:
    rec = read_json(run.model_dir / "train.json")
    if isinstance(rec, dict) and rec.get("key") == run.train_key and (run.model_dir / "model.pt").is_file():
        return rec
    return None


def trained(run) -> dict:
    """The training record (``train.json``) of the run's model, trained if missing."""
    rec = _read_trained(run)
    if rec is not None:
        return rec
    with file_lock(run.model_dir):  # runs that differ only in evaluation train one model
        rec = _read_trained(run)
        if rec is None:
            rec = _train(run)
    return rec


def _train(run) -> dict:
    import torch
    from . import train as trainer
    from .towers import n_params
    cfg = run.cfg
    _threads(cfg)
    bank, pairs = load_pairs(run)
    dev = pick_device(cfg["device"])
    tower = _new_tower(run, bank).to(dev)
    bank_t = torch.from_numpy(bank.vectors).to(dev)
    index = evaluation.index(bank, "exact", None, 0)
    t0 = time.perf_counter()
    _log(f"[{cfg['run']}] training {cfg['model']['tower']} tower on {len(pairs['train']):,} pairs "
         f"({dev}, {torch.get_num_threads()} threads)")
    try:
        res = trainer.fit(tower, bank_t, index, pairs["train"], pairs["val"], cfg, cfg["seed"], log=_log)
    except trainer.DivergedError as exc:
        raise trainer.DivergedError(f"run {cfg['run']}: {exc}") from exc
    rec = {"key": run.train_key, **res, "n_params": n_params(tower), "train_seconds": time.perf_counter() - t0,
           "device": str(dev), "n_train": int(len(pairs["train"])), "n_val": int(len(pairs["val"]))}
    with atomic_folder(run.model_dir) as tmp:  # train.json and model.pt together or not at all
        torch.save(tower.state_dict(), tmp / "model.pt")
        atomic_write_json(tmp / "train.json", rec)
    return rec


def _train_tables(rec: dict) -> dict:
    hist = pd.DataFrame(rec["history"])
    return {"summary": {k: rec[k] for k in ("updates", "epochs", "updates_per_epoch", "n_params",
                                             "train_seconds", "device")},
            "history": hist}


def train(run) -> dict:
    return _train_tables(trained(run))


def load_tower(run, bank):
    """The run's trained query tower (on CPU, eval mode)."""
    import torch
    tower = _new_tower(run, bank)
    tower.load_state_dict(torch.load(run.model_dir / "model.pt", map_location="cpu"))
    return tower.eval()


# -- evaluate ----------------------------------------------------------------------------------
def _read_results(run) -> tuple[dict, dict] | None:
    m = read_json(run.dir / "metrics.json")
    if not isinstance(m, dict) or m.get("key") != run.metrics_key:
        return None
    try:
        with np.load(run.dir / "ranks.npz") as z:
            ranks = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return None
    return (m, ranks) if "model" in ranks else None


def results(run) -> tuple[dict, dict]:
    """The run's metrics (``metrics.json``) and the exact-search ranks of every query set on
    the evaluation queries (``ranks.npz``: ``model`` and each heuristic), evaluated if missing."""
    out = _read_results(run)
    if out is not None:
        return out
    with file_lock(run.dir / "metrics.json"):
        out = _read_results(run)
        if out is None:
            _evaluate(run)
            out = _read_results(run)  # as every later call reads it
    if out is None:
        raise RuntimeError(f"{run.dir}: the evaluation just written cannot be read back")
    return out


def _evaluate(run) -> None:
    import torch
    cfg = run.cfg
    t_start = time.perf_counter()
    t0 = time.perf_counter()
    bank, pairs = load_pairs(run)
    t_prep = time.perf_counter() - t0
    t0 = time.perf_counter()
    train_rec = trained(run)
    t_train = time.perf_counter() - t0
    t0 = time.perf_counter()
    _threads(cfg)
    dev = pick_device(cfg["device"])
    e, d = cfg["evaluate"], cfg["data"]
    tower = load_tower(run, bank).to(dev)
    bank_t = torch.from_numpy(bank.vectors).to(dev)
    ev = evaluation.evaluate_tower(tower, bank, bank_t, pairs["eval"], pairs["meta"]["eval_set_sha256"],
                                   d["ctx_len"], e, cfg["seed"], d["split_seed"])
    model_res = ev["model"]
    main = "ivf" if e["index"] == "ivf" else "exact"
    t_eval = time.perf_counter() - t0
    m = {
        "key": run.metrics_key, "study": "wikiseq", "run": cfg["run"], "cfg": cfg, "device": str(dev),
        "data": pairs["meta"],
        "model": {"tower": cfg["model"]["tower"], "n_params": train_rec["n_params"]},
        "train": {k: train_rec[k] for k in ("history", "updates", "epochs", "updates_per_epoch",
                                             "micro_batches_per_epoch", "train_seconds", "n_train", "n_val")},
        "final": {**model_res, "main": model_res[main], "index": main},
        "heuristics": ev["heuristics"],
        "small_bank_size": ev["small_bank_size"],
        "ivf": ev["ivf"],
        "timing": ev["timing"],
        "wall_seconds": {"prepare": t_prep, "train": train_rec["train_seconds"], "train_step": t_train,
                         "evaluate": t_eval, "total_this_call": time.perf_counter() - t_start},
    }
    with atomic_path(run.dir / "ranks.npz") as tmp:  # ranks first: metrics.json marks the entry complete
        np.savez(tmp, **ev["ranks"])
    atomic_write_json(run.dir / "metrics.json", m)


def _eval_tables(m: dict) -> dict:
    rows = [{"query": "model (" + m["model"]["tower"] + ")", **m["final"]["exact"]}]
    rows += [{"query": name, **v["exact"]} for name, v in m["heuristics"].items()]
    return {"final (common eval set, exact search over the whole bank)": pd.DataFrame(rows),
            "per-epoch (run's validation pairs)": pd.DataFrame(m["train"]["history"]),
            "summary": {"updates": m["train"]["updates"], "device": m["device"],
                        "wall_seconds": m["wall_seconds"]}}


def evaluate(run) -> dict:
    return _eval_tables(results(run)[0])
