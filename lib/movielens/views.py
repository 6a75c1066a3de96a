"""What the notebooks show of a MovieLens run: its data, model, training, metrics, one
user's recommendations, and the rendered report.

Each function takes a ``Run`` (04: the result of ``render_report``) and returns a dict of
named results (tables, figures, short values) that ``lib.core.pipeline.show`` displays.
They read the cached steps and the stored model only: nothing here writes an artifact or
changes a computed figure (the cached steps they call are no-ops once the run is done).
Figures are closed once drawn, so a notebook displays each once (through ``show``).
"""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ..core import retrieval
from ..core.device import pick_device
from ..core.files import read_json
from . import evaluate as evaluation
from . import steps
from .data import PreparedData
from .train import Trainer

SPLIT_COLORS = {"train": "C0", "val": "C1", "test": "C2"}


def _date(ts) -> pd.Series:
    return pd.to_datetime(pd.Series(ts), unit="s").dt.strftime("%Y-%m-%d %H:%M")


def _tokens(data: PreparedData, item: int) -> str:
    """An item's tokens of its first multi-categorical feature (MovieLens: genres)."""
    f = next((f for f in data.item_features if f.kind == "multi_categorical"), None)
    return "" if f is None else "|".join(f.vocabulary[t] for t in f.tokens[item].indices)


def _titled(data: PreparedData, df: pd.DataFrame) -> pd.DataFrame:
    """Rows of (dense) user/item indices with the original ids, titles and dates."""
    out = pd.DataFrame({"user_id": data.user_ids[df["user"].to_numpy()],
                        "title": [data.item_labels[i] for i in df["item"]],
                        "genres": [_tokens(data, i) for i in df["item"]]})
    if "rating" in df:
        out["rating"] = df["rating"].to_numpy()
    if "timestamp" in df:
        out["time"] = _date(df["timestamp"].to_numpy()).to_numpy()
    return out


def _done(fig):
    fig.tight_layout()
    plt.close(fig)
    return fig


def _cols(df: pd.DataFrame, first: list[str]) -> pd.DataFrame:
    """``df`` with the columns ``first`` (those it has) first."""
    head = [c for c in first if c in df]
    return df[head + [c for c in df if c not in head]]


# -- 01: data --------------------------------------------------------------------------------
def data_overview(run, n_sample: int = 4) -> dict:
    """The dataset's statistics (after the k-core filter), the global time split as a
    figure (ratings per week, coloured by split), and a few rows of each split."""
    tables = steps.prepare(run)  # cached
    data = steps.load_data(run)
    fig, ax = plt.subplots(figsize=(10, 3.4))
    parts = {s: getattr(data, s) for s in ("train", "val", "test")}
    all_ts = np.sort(np.concatenate([p["timestamp"].to_numpy() for p in parts.values()]))
    week = 7 * 86400
    bins = pd.to_datetime(np.arange(all_ts.min(), all_ts.max() + week, week), unit="s")
    shown = {s: p for s, p in parts.items() if len(p)}
    ax.hist([pd.to_datetime(p["timestamp"], unit="s") for p in shown.values()], bins=bins, stacked=True,
            color=[SPLIT_COLORS[s] for s in shown], label=[f"{s}: {len(p):,} ratings" for s, p in shown.items()])
    for part in (parts["val"], parts["test"]):
        if len(part):
            ax.axvline(pd.to_datetime(part["timestamp"].min(), unit="s"), color="k", lw=0.8, ls="--")
    share = ax.twinx()
    share.plot(pd.to_datetime(all_ts, unit="s"), np.arange(1, len(all_ts) + 1) / len(all_ts), color="k", lw=1)
    share.set(ylabel="cumulative share of ratings", ylim=(0, 1.02))
    ax.set(yscale="log", ylabel="ratings per week (log)",
           title=f"{data.name}: one global time split ({' / '.join(f'{f:g}' for f in data.meta['fractions'])} "
                 "of the ratings, in time order)")
    ax.legend(fontsize=8, loc="upper left")
    sample = pd.concat([_titled(data, part.sample(min(n_sample, len(part)), random_state=run.cfg["seed"])
                                .sort_values("timestamp")).assign(split=split)
                        for split, part in parts.items() if len(part)], ignore_index=True)
    return {"dataset": tables["dataset"], "splits": tables["splits"], "time_split": _done(fig),
            "sample_rows": sample}


# -- 02: model, one batch, training curves ------------------------------------------------------
def _train_record(run) -> dict:
    steps.train(run)  # cached
    return read_json(run.model_dir / "train.json")


def model_overview(run) -> dict:
    """The trained model: its towers and parameter count (a two-tower), or the baseline's
    (selected) hyperparameters."""
    rec = _train_record(run)
    m = run.cfg["model"]
    if m["kind"] != "two_tower":
        out = {"model": m["kind"], "hyperparameters": rec.get("hyperparameters")}
        if rec.get("selection"):
            out["selection on validation"] = _cols(pd.DataFrame(rec["selection"]), ["param", "value"])
        return out
    data = steps.load_data(run)
    model = steps.load_model(run, data)
    counts = model.n_parameters()
    parts = pd.DataFrame([{"part": k, "parameters": v} for k, v in counts.items()])
    if m["architecture"] in ("sasrec", "gru4rec"):
        encoder = (f"{m['attention_blocks']} causal self-attention blocks ({m['attention_heads']} head(s))"
                   if m["architecture"] == "sasrec" else "one GRU layer")
        return {"model": f"two-tower, {m['architecture']}: {encoder} over the last {m['max_sequence_length']} "
                         f"training items in time order, {m['embedding_dim']}-d item embeddings shared by both towers",
                "parameters": parts, "architecture": str(model)}
    if m["architecture"] == "linear":
        return {"model": f"two-tower, linear: the mean of the history items' {m['embedding_dim']}-d embeddings (history "
                         f"{m['history']}) . the item's output embedding + the item's bias",
                "parameters": parts, "architecture": str(model)}
    inputs = {"user tower": ", ".join([*(["gender, age, occupation"] if m["user_features"] else []),
                                       *(["user id"] if m["id_embeddings"] else []),
                                       *([f"history ({m['history']})"] if m["history"] != "none" else [])]),
              "item tower": ", ".join([*(["genres, year"] if m["item_features"] else []),
                                       *(["item id"] if m["id_embeddings"] else []),
                                       *(["popularity"] if m["item_popularity"] else [])])}
    return {"model": f"two-tower, {m['embedding_dim']}-d L2-normalised embeddings, MLP {m['hidden']}",
            "inputs": pd.DataFrame([{"tower": k, "inputs": v} for k, v in inputs.items()]),
            "parameters": parts,
            "architecture": str(model)}


def training_batch(run, n_rows: int = 8, n_negatives: int = 3) -> dict:
    """The first batch training drew (the same generator and seed as the trainer): its
    first rows, with titles, and the sampled negatives of each."""
    cfg = run.cfg
    if cfg["model"]["kind"] != "two_tower":
        return {"batch": f"{cfg['model']['kind']} is fit on the whole training matrix at once (no batches)"}
    data = steps.load_data(run)
    trainer = Trainer(data, cfg["model"], cfg["loss"], cfg["train"], cfg["seed"], "cpu")
    batch = next(iter(trainer.batches.epoch()))
    title = data.item_labels.__getitem__
    lo = cfg["loss"]
    if cfg["train"]["batching"] == "users":
        users, inputs, targets = batch
        rows = [{"user_id": data.user_ids[u], "input items": inputs[u].nnz, "targets": targets[u].nnz,
                 "some targets": "; ".join(title(i) for i in targets[u].indices[:3])} for u in users[:n_rows]]
        return {"batch": f"{len(users)} users; each user's training items split into inputs and targets "
                         f"({cfg['train']['target_selection']}, {cfg['train']['target_fraction']:.0%} targets); "
                         f"loss: softmax over the whole catalog per target",
                "first rows": pd.DataFrame(rows)}
    if cfg["train"]["batching"] == "sequences":
        windows = trainer.sequence_loss.windows.cpu().numpy()
        n_items = data.n_items
        rows = []
        for u in batch[:n_rows]:
            codes = [int(c) for c in windows[u] if c > 0]
            items = [c - 1 for c in codes if c <= n_items]
            rows.append({"user_id": data.user_ids[u], "positions": len(codes) - 1,
                         "starts with": "the start code" if codes and codes[0] == n_items + 1 else "a cut history",
                         "last items": "; ".join(title(i) for i in items[-3:])})
        ahead = cfg["train"]["next_items"]
        return {"batch": f"{len(batch)} users; each user's last {cfg['model']['max_sequence_length']} training items "
                         f"in time order, read by the {cfg['model']['architecture']} encoder; at every position the "
                         f"target is the next {'item' if ahead == 1 else f'{ahead} items'}, scored by a softmax over "
                         f"the whole catalog",
                "first rows": pd.DataFrame(rows)}
    users, items = batch
    negatives = trainer.negatives(users, trainer.sample_generator)
    users, items = users.cpu().numpy(), items.cpu().numpy()
    negatives = None if negatives is None else negatives.cpu().numpy()
    rows = pd.DataFrame({"user": users[:n_rows], "item": items[:n_rows]})
    table = _titled(data, rows).drop(columns="genres")
    table.insert(1, "positive", table.pop("title"))
    if negatives is not None:
        table["sampled negatives (first %d of %d)" % (min(n_negatives, negatives.shape[1]), negatives.shape[1])] = [
            "; ".join(title(i) for i in negs[:n_negatives]) for negs in negatives[:n_rows]]
    note = {"in_batch": "the other positives of the batch are each row's negatives",
            "explicit": f"{lo['num_negatives']} sampled negatives per row (never a training item of the user)",
            "mixed": f"{lo['explicit_weight']:g} x sampled-negatives loss + {1 - lo['explicit_weight']:g} x in-batch loss",
            "full_softmax": "a softmax over the whole catalog"}[lo["kind"]]
    if lo["num_hard_negatives"]:
        note += f"; plus {lo['num_hard_negatives']} hard negatives mined from the current model at each step"
    return {"batch": f"{len(users)} (user, positive item) pairs of {len(trainer.batches)} batches per epoch; "
                     f"loss {lo['kind']}: {note}",
            "first rows": table}


def training_curves(run) -> dict:
    """Training and validation loss, and the validation ranking metrics, per epoch (the
    training record); a baseline: its hyperparameter selection on validation."""
    rec = _train_record(run)
    if not rec.get("history"):
        out = {"training": f"{rec['kind']}: fit in one pass in {rec['seconds']:.1f}s (no epochs)"}
        if rec.get("selection"):
            sel = pd.DataFrame(rec["selection"])
            params = list(dict.fromkeys(sel["param"]))
            fig, axes = plt.subplots(1, len(params), figsize=(4.5 * len(params), 3.2), squeeze=False)
            for ax, p in zip(axes[0], params):
                s = sel[sel["param"] == p]
                ax.plot(range(len(s)), s["val_ndcg@10"], marker="o")
                ax.set_xticks(range(len(s)), [str(v) for v in s["value"]])
                ax.set(xlabel=p, ylabel="validation NDCG@10", title=f"chosen: {rec['hyperparameters'][p]}")
            out["selection"] = _done(fig)
        return out
    hist = pd.DataFrame(rec["history"])
    first = [c for c in ("epoch", "train_loss", "val_loss", "val_recall@10", "val_ndcg@10", "val_hit_rate@10")
             if c in hist]
    hist = hist[first + [c for c in hist if c not in first]]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.5))
    ax1.plot(hist["epoch"], hist["train_loss"], marker="o", label="training")
    ax1.plot(hist["epoch"], hist["val_loss"], marker="o", ls="--", label="validation")
    ax1.set(xlabel="epoch", ylabel=f"{run.cfg['loss']['kind']} loss", title="Loss per epoch")
    for name in ("val_recall@10", "val_ndcg@10", "val_hit_rate@10"):
        if name in hist:
            ax2.plot(hist["epoch"], hist[name], marker="o", label=name.removeprefix("val_"))
    ax2.set(xlabel="epoch", title="Validation metrics per epoch")
    for ax in (ax1, ax2):
        ax.axvline(rec["best_epoch"], color="grey", lw=0.8, ls=":", label=f"best epoch ({rec['best_epoch']})")
        ax.legend(fontsize=8)
        ax.set_xticks(hist["epoch"])
    stop = run.cfg["train"]["early_stopping_metric"]
    return {"training": f"{rec['stopped_epoch']} epochs ({'early stopped' if rec['early_stopped'] else 'max_epochs'}, "
                        f"on {stop}), best epoch {rec['best_epoch']} kept; {rec['steps']:,} steps in {rec['seconds']:.1f}s",
            "curves": _done(fig), "history": hist}


# -- 03: metrics, the FAISS check, one user --------------------------------------------------------
def _metrics(run) -> dict:
    """metrics.json, its splits in the run's order (the file stores keys sorted)."""
    steps.evaluate(run)  # cached
    m = read_json(run.dir / "metrics.json")
    m["splits"] = {s: m["splits"][s] for s in run.cfg["evaluate"]["splits"]}
    return m


def metrics_overview(run) -> dict:
    """Recall/NDCG/HitRate at K for each evaluated split, with the 95% bootstrap CIs over
    users (at K=10) as error bars; the metrics tables, coverage and diversity, latency."""
    m = _metrics(run)
    ks = list(evaluation.KS)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.5))
    ci_rows = []
    for split, entry in m["splits"].items():
        for ax, name in zip(axes, ("recall", "ndcg", "hit_rate")):
            ax.plot(ks, [entry["metrics"][f"{name}@{k}"] for k in ks], marker="o", ms=4, label=split,
                    color=SPLIT_COLORS[split])
            ci = entry["ci"][f"{name}@10"]
            ax.errorbar([10 * (1.04 if split == "test" else 0.96)], [ci["mean"]], yerr=[[ci["mean"] - ci["low"]], [ci["high"] - ci["mean"]]],
                        color=SPLIT_COLORS[split], capsize=5, lw=2)
            ci_rows.append({"split": split, "metric": f"{name}@10", "mean": ci["mean"], "95% CI low": ci["low"],
                            "95% CI high": ci["high"], "users": entry["n_users"]})
    for ax, name in zip(axes, ("Recall@K", "NDCG@K", "HitRate@K")):
        ax.set(xscale="log", xlabel="K", title=f"{name} (bar: 95% CI at K=10)")
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.grid(alpha=0.3)
    axes[0].legend()
    out = {"metrics_at_k": _done(fig), "bootstrap_ci": pd.DataFrame(ci_rows)}
    for split, entry in m["splits"].items():
        out[f"{split} metrics"] = pd.DataFrame(
            [{"metric": name, **{f"@{k}": entry["metrics"][f"{name}@{k}"] for k in ks}}
             for name in ("recall", "precision", "ndcg", "hit_rate")])
    other = [{"split": split, "users": e["n_users"], "without training history": e["n_users_without_train_history"],
              "coverage@100": e["coverage@100"], "diversity@10": e.get("diversity@10"),
              "mrr@100": e["metrics"]["mrr@100"], "rank_seconds": e["rank_seconds"]} for split, e in m["splits"].items()]
    out["beyond accuracy"] = pd.DataFrame(other)
    if m.get("latency"):
        lat = m["latency"]
        out["latency (ms)"] = pd.DataFrame([{"step": k, **v} for k, v in lat.items() if isinstance(v, dict)])
    return out


def retrieval_check(run, n_check: int = 200) -> dict:
    """FAISS top-10 against exact brute force on the same embeddings: the share of users
    whose list is the same, as the evaluation stored it for every evaluated user, and
    re-checked here on the first ``n_check`` users of the last split (the stored model)."""
    m = _metrics(run)
    cfg = run.cfg
    stored = {split: e.get("faiss_equals_bruteforce@10") for split, e in m["splits"].items()}
    if all(v is None for v in stored.values()):
        return {"faiss_vs_bruteforce": f"{cfg['model']['kind']} scores every item exactly (no FAISS index)"}
    data = steps.load_data(run)
    model = steps.load_model(run, data)
    split = cfg["evaluate"]["splits"][-1]
    _, users = evaluation.ground_truth(data, cfg, split)
    users = users[:n_check]
    device = pick_device(cfg["device"])
    top = evaluation.rank(model, data, users, 10, device)
    user_vec, item_vec = evaluation.embeddings(model, users, device)
    seen = data.matrix("train")
    again = retrieval.agreement_with_bruteforce(user_vec, item_vec, users, seen, top)
    rows = [{"check": f"stored by the evaluation, {s}", "users": m["splits"][s]["n_users"],
             "same top-10 (FAISS vs exact brute force)": v} for s, v in stored.items()]
    rows.append({"check": f"re-checked here, {split}", "users": len(users),
                 "same top-10 (FAISS vs exact brute force)": again})
    return {"index": f"exact inner-product FAISS index (IndexFlatIP) over {data.n_items:,} item vectors; "
                     "each user's training items excluded",
            "faiss_vs_bruteforce": pd.DataFrame(rows)}


def example_query(run, user: int | None = None, n_history: int = 10) -> dict:
    """One evaluated user of the last split: their latest training ratings, their held-out
    relevant items, and the model's top-10 (training items excluded), with titles. The user
    (a dense index) defaults to the one with the median training history among the
    evaluated users who have one: a typical user, not a picked success."""
    _metrics(run)  # evaluated (cached): per_user.npz is there
    cfg = run.cfg
    split = cfg["evaluate"]["splits"][-1]
    data = steps.load_data(run)
    truth, users = evaluation.ground_truth(data, cfg, split)
    seen = data.matrix("train")
    n_seen = np.diff(seen.indptr)
    if user is None:
        cand = users[n_seen[users] > 0] if (n_seen[users] > 0).any() else users
        order = cand[np.argsort(n_seen[cand], kind="stable")]
        user = int(order[len(order) // 2])
    model = steps.load_model(run, data)
    top = evaluation.rank(model, data, np.array([user]), 10, pick_device(cfg["device"]))[0]
    relevant = set(truth[user].indices)
    hist = data.train[data.train["user"] == user].sort_values("timestamp").tail(n_history)
    held = getattr(data, split)
    held = held[(held["user"] == user) & (held["rating"] >= data.rating_threshold(cfg["data"]["test_min_rating"]))]
    held = held.sort_values("timestamp")
    recs = pd.DataFrame({"rank": range(1, len(top) + 1), "title": [data.item_labels[i] for i in top],
                         "genres": [_tokens(data, i) for i in top],
                         f"relevant in {split}": ["yes" if i in relevant else "" for i in top]})
    hits = sum(i in relevant for i in top)
    stored = ""
    z = np.load(run.dir / "per_user.npz")
    pos = np.flatnonzero(z[f"{split}/users"] == user)
    if len(pos):
        stored = f" (the evaluation stored recall@10 {z[f'{split}/recall@10'][pos[0]]:.3f} for this user)"
    return {"user": f"user {data.user_ids[user]}: {n_seen[user]} training ratings, {len(relevant)} relevant "
                    f"in {split}; {hits} of them in the top-10, recall@10 {hits / max(len(relevant), 1):.3f}{stored}",
            f"last {len(hist)} training ratings": _titled(data, hist).drop(columns="user_id"),
            f"relevant in {split} (rating >= {cfg['data']['test_min_rating']})": _titled(data, held).drop(columns="user_id"),
            "top-10": recs}


# -- 04: the report ------------------------------------------------------------------------------
FIG_ORDER = ["loss", "at_k", "ci"]


def report_overview(result: dict) -> dict:
    """The rendered report's figures and its main tables (from its JSON companion)."""
    md = Path(result["report"])
    ctx = json.loads(md.with_suffix(".json").read_text())
    out: dict = {"report": str(md)}
    figs = ctx["figs"]  # loss curves, metrics at K, CIs (the JSON stores keys sorted)
    out.update({f"figure: {k}": md.parent / figs[k] for k in sorted(figs, key=lambda k: (FIG_ORDER + [k]).index(k))})

    def table(rows):
        return pd.DataFrame([{"model": r["label"], **{k: r["m"][k] for k in ctx["cmp_metrics"]},
                              "ndcg@10 95% CI": "[{low:.4f}, {high:.4f}]".format(**r["ci"]["ndcg@10"])
                              if r.get("ci") else "", "coverage@100": r["coverage"],
                              "train_seconds": r["train_seconds"]} for r in rows])

    out["comparison (test)"] = table(ctx["comparison"])
    if ctx["verdicts"]:
        out["best two-tower vs best baseline"] = _cols(pd.DataFrame(ctx["verdicts"]),
                                                       ["metric", "best_baseline", "baseline", "two_tower", "wins"])
    if ctx["paired"]:
        out["paired bootstrap (best two-tower - best baseline)"] = _cols(pd.DataFrame(
            [{"metric": k, **v} for k, v in ctx["paired"].items()]), ["metric", "mean_diff", "low", "high", "p_value"])
    if ctx.get("fix"):  # the MovieLens report (a dataset report has none)
        out["fix progression (test)"] = table(ctx["fix"])
    if ctx["variants"]:
        out["two-tower variants (validation)"] = pd.DataFrame(
            [{"variant": v["label"], **{k: v["m"][k] for k in ctx["cmp_metrics"]}, "best_epoch": v["best_epoch"]}
             for v in ctx["variants"]])
    if ctx.get("targets"):
        out["targets"] = _cols(pd.DataFrame(ctx["targets"]), ["metric", "min", "good", "reference_config", "best"])
    return out
