"""What the notebooks show of a wikiseq run: the bank and its article split, the query
tower, one training batch, the training curves, the metrics with bootstrap CIs, one
evaluation query with its retrieved chunks, and the rendered report.

Each function takes a ``Run`` (04: the result of ``render_report``) and returns a dict of
named results (tables, figures, short values) that ``lib.core.pipeline.show`` displays.
They read the cached steps, the stored tower and the stored ranks only: nothing here
writes an artifact or changes a computed figure (the CIs and the brute-force check are
computed here, for display, from what the evaluation stored). Figures are closed once
drawn, so a notebook displays each once (through ``show``). Chunk texts are shown where the
bank has them (a synthetic bank has none).
"""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
import numpy as np
import pandas as pd

from ..core import retrieval, stats
from . import evaluate as evaluation
from . import steps
from .towers import n_params
from .train import encode_queries, epochs_to_run

TEXT_WIDTH = 160  # characters of a chunk's text shown in a table cell
N_BOOT = 1000     # bootstrap resamples of the displayed CIs


def _done(fig):
    fig.tight_layout()
    plt.close(fig)
    return fig


def _text(bank, row: int) -> str:
    if bank.texts is None:
        return ""
    t = bank.texts[int(row)]
    return t if len(t) <= TEXT_WIDTH else t[:TEXT_WIDTH - 1] + "…"


def _chunk(bank, row: int) -> dict:
    out = {"article": bank.titles[int(bank.article[row])], "position": int(bank.position[row])}
    if bank.texts is not None:
        out["text"] = _text(bank, row)
    return out


def _pairs_table(bank, starts: np.ndarray, ctx_len: int) -> pd.DataFrame:
    """One row per (context, next chunk) pair: its article, the context's positions, the
    last context chunk and the target (texts where the bank has them), and their cosine."""
    rows = []
    for s in np.asarray(starts, np.int64):
        t = s + ctx_len
        row = {"article": bank.titles[int(bank.article[s])],
               "context positions": f"{int(bank.position[s])}-{int(bank.position[t - 1])}",
               "target position": int(bank.position[t]),
               "cos(last context chunk, target)": float(bank.vectors[t - 1] @ bank.vectors[t])}
        if bank.texts is not None:
            row["last context chunk"] = _text(bank, t - 1)
            row["target (next chunk)"] = _text(bank, t)
        rows.append(row)
    return pd.DataFrame(rows)


# -- 01: the bank and the article split -----------------------------------------------------------
def data_overview(run, n_sample: int = 4) -> dict:
    """The bank's statistics, the split by article (chunks per article; which articles
    are long enough for a context, and which of them train or validate), and a few
    context/target pairs of the training and evaluation sets."""
    tables = steps.prepare(run)  # cached
    bank, pairs = steps.load_pairs(run)
    d = run.cfg["data"]
    ctx = d["ctx_len"]
    lens = bank.article_len
    train_art, val_art = pairs["train_articles"], pairs["val_articles"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 3.6), gridspec_kw={"width_ratios": [1, 2]})
    ax1.hist(lens[lens > 0], bins=50, log=True, color="grey")
    ax1.axvline(ctx, color="red", ls="--", label=f"ctx_len {ctx}: longer articles give windows")
    ax1.set(xlabel="chunks per article", ylabel="articles (log)", title=f"{len(bank.titles):,} articles")
    ax1.legend(fontsize=7)
    seq = np.concatenate([train_art, val_art])
    order = seq[np.argsort(-lens[seq], kind="stable")]
    is_val = np.isin(order, val_art)
    ax2.bar(np.arange(len(order)), lens[order], width=1.0,
            color=np.where(is_val, "C1", "C0"))
    ax2.axhline(ctx, color="red", ls="--", lw=0.8)
    if len(order) <= 30:
        ax2.set_xticks(np.arange(len(order)), [bank.titles[a][:24] for a in order], rotation=60, ha="right",
                       fontsize=7)
    ax2.legend(handles=[Patch(color="C0", label=f"train articles: {len(train_art)}"),
                        Patch(color="C1", label=f"validation articles: {len(val_art)} (validation, evaluation pairs)"),
                        Line2D([], [], color="red", ls="--", lw=0.8, label="ctx_len")], fontsize=7, loc="upper right")
    ax2.set(xlabel="" if len(order) <= 30 else "articles longer than ctx_len, by length", ylabel="chunks",
            title=f"Split by article ({d['val_fraction']:g} held out, split_seed {d['split_seed']})")
    meta = pairs["meta"]
    split = pd.DataFrame([
        {"pairs": "train", "from articles": "train", "articles": len(train_art), "chunks": int(lens[train_art].sum()),
         "windows available": meta["train_windows_available"], "pairs used": meta["n_train"]},
        {"pairs": "val (per-epoch validation)", "from articles": "validation", "articles": len(val_art),
         "chunks": int(lens[val_art].sum()), "windows available": meta["val_windows_available"],
         "pairs used": meta["n_val"]},
        {"pairs": "eval (final, common to every run)", "from articles": "validation", "articles": len(val_art),
         "chunks": int(lens[val_art].sum()), "windows available": meta["eval_windows_available"],
         "pairs used": meta["n_eval"]},
    ])
    sample = pd.concat([_pairs_table(bank, pairs[name][:n_sample], ctx).assign(pairs=name)
                        for name in ("train", "eval")], ignore_index=True)
    out = {"bank": tables["data"], "article_split": _done(fig), "pairs": split, "sample_pairs": sample}
    if bank.texts is None:
        out["texts"] = "this bank has no chunk texts (generated vectors): pairs are shown by article and position"
    return out


# -- 02: the tower, one batch, training curves --------------------------------------------------------
def model_overview(run) -> dict:
    """The trained query tower: its kind, parameter count and modules; the document tower is
    the identity (a chunk's own vector, L2-normalised)."""
    rec = steps.trained(run)  # cached
    bank = steps.load_bank(run)
    tower = steps.load_tower(run, bank)
    m = run.cfg["model"]
    kind = {"gru": f"bidirectional GRU ({m['gru_hidden']} per direction), mean-pooled, linear projection, L2 norm",
            "residual": f"exp-weighted context average (decay {m['decay']}) + a learned GRU correction "
                        f"(last layer zero at start), L2 norm"}[m["tower"]]
    parts = [{"part": name, "parameters": n_params(mod)} for name, mod in tower.named_modules()
             if name and not any(True for _ in mod.children())]
    parts.append({"part": "total", "parameters": rec["n_params"]})
    return {"query tower": f"{m['tower']}: {kind}; reads {run.cfg['data']['ctx_len']} chunk vectors of {bank.dim} dims",
            "document tower": "identity: a chunk's own (L2-normalised) vector; the bank is never re-embedded",
            "parameters": pd.DataFrame(parts), "architecture": str(tower)}


def training_batch(run, n_rows: int = 8) -> dict:
    """The first micro-batch of training (the same generator and seed as ``train.fit``):
    its first pairs, with the texts where the bank has them."""
    bank, pairs = steps.load_pairs(run)
    cfg = run.cfg
    t, lo = cfg["train"], cfg["loss"]
    train_starts = pairs["train"]
    order = np.random.default_rng(cfg["seed"]).permutation(len(train_starts))  # as train.fit draws it
    batch = train_starts[order[:t["batch_size"]]]
    micro = -(-len(train_starts) // t["batch_size"])
    note = (f"{len(batch)} (context, next chunk) pairs of {micro} micro-batches per epoch; in-batch InfoNCE "
            f"(temperature {lo['temperature']}): each context's negatives are the other {len(batch) - 1} targets")
    if lo["hard_negatives"]:
        note += f", plus {lo['hard_negatives']} hard negatives mined from the bank per pair"
    note += f"; one optimizer update every {t['accum_steps']} micro-batches (and at the end of an epoch)"
    return {"batch": note, "first pairs": _pairs_table(bank, batch[:n_rows], cfg["data"]["ctx_len"])}


def training_curves(run) -> dict:
    """Training and validation loss, and validation Recall@cutoffs over the whole bank, per
    epoch (epoch 0: before training); the training record."""
    rec = steps.trained(run)  # cached
    hist = pd.DataFrame(rec["history"])
    first = ["epoch", "updates", "train_loss", "val_loss"]
    hist = hist[first + [c for c in hist if c not in first]]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.5))
    ax1.plot(hist["epoch"], hist["train_loss"], marker="o", label="training (mean over the epoch)")
    ax1.plot(hist["epoch"], hist["val_loss"], marker="o", ls="--", label="validation (in-batch InfoNCE)")
    ax1.set(xlabel="epoch", ylabel="loss", title="Loss per epoch")
    for k in run.cfg["evaluate"]["cutoffs"]:
        ax2.plot(hist["epoch"], hist[f"recall@{k}"], marker="o", label=f"Recall@{k}")
    ax2.set(xlabel="epoch", ylim=(0, 1.02),
            title=f"Validation recall over the whole bank ({run.cfg['train']['epoch_eval_queries']} queries)")
    for ax in (ax1, ax2):
        ax.legend(fontsize=8)
        ax.set_xticks(hist["epoch"], [f"{e}\n({u} upd)" for e, u in zip(hist["epoch"], hist["updates"])])
    return {"training": f"{rec['epochs']} epochs (train.max_epochs {run.cfg['train']['max_epochs']}, "
                        f"epoch_cap {run.cfg['train']['epoch_cap']}: {epochs_to_run(run.cfg['train'])} run; "
                        f"no early stopping), {rec['updates']:,} optimizer updates on {rec['n_train']:,} pairs "
                        f"in {rec['train_seconds']:.1f}s",
            "curves": _done(fig), "history": hist}


# -- 03: metrics, the FAISS check, one query ---------------------------------------------------------------
def _query_names(ranks: dict) -> list[str]:
    return ["model", *[n for n in ranks if n not in ("model", "oracle")], *(["oracle"] if "oracle" in ranks else [])]


def metrics_overview(run) -> dict:
    """Recall@cutoffs on the common evaluation set, exact search over the whole bank, of the
    trained tower and of the heuristic queries (oracle: the target's own vector), each with
    a 95% bootstrap CI over queries (computed here from the stored ranks)."""
    m, ranks = steps.results(run)  # cached
    cutoffs = run.cfg["evaluate"]["cutoffs"]
    rows = []
    fig, ax = plt.subplots(figsize=(8, 3.8))
    names = _query_names(ranks)
    for j, name in enumerate(names):
        r = ranks[name]
        cis = [stats.bootstrap_ci(((r > 0) & (r <= k)).astype(float), n_boot=N_BOOT, seed=run.cfg["seed"])
               for k in cutoffs]
        label = f"model ({run.cfg['model']['tower']})" if name == "model" else name
        x = np.array(cutoffs) * (1 + 0.03 * (j - len(names) / 2))
        ax.errorbar(x, [c["mean"] for c in cis], yerr=[[c["mean"] - c["low"] for c in cis],
                                                       [c["high"] - c["mean"] for c in cis]],
                    marker="o", ms=4, capsize=3, lw=2.5 if name == "model" else 1,
                    ls=":" if name == "oracle" else "-", label=label)
        for k, c in zip(cutoffs, cis):
            rows.append({"query": label, "metric": f"recall@{k}", "mean": c["mean"], "95% CI low": c["low"],
                         "95% CI high": c["high"]})
    ax.set(xscale="log", xlabel="K (bank rows retrieved)", ylabel="Recall@K", ylim=(-0.02, 1.02),
           title=f"Next-chunk recall over the whole bank ({len(ranks['model'])} queries, 95% bootstrap CIs)")
    ax.set_xticks(cutoffs, [str(k) for k in cutoffs])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    out = {"recall_at_k": _done(fig), "bootstrap_ci": pd.DataFrame(rows)}
    final = [{"query": f"model ({run.cfg['model']['tower']})", **m["final"]["exact"],
              "inbatch_top1": m["final"]["inbatch_top1"]}]
    final += [{"query": n, **v["exact"], "inbatch_top1": v["inbatch_top1"]} for n, v in m["heuristics"].items()]
    out["final metrics (exact search)"] = pd.DataFrame(final)
    return out


def retrieval_check(run, n_check: int = 200) -> dict:
    """The model's metrics under exact FAISS search, IVF-flat search and over the smaller
    bank; and the stored exact ranks of the first ``n_check`` evaluation queries against
    numpy brute force over every bank vector (queries re-encoded by the stored tower)."""
    m, ranks = steps.results(run)  # cached
    search = [{"search": f"exact (IndexFlatIP, {m['data']['bank_size']:,} rows)", **m["final"]["exact"]},
              {"search": f"IVF-flat (nlist {m['ivf']['nlist']}, nprobe {m['ivf']['nprobe']})", **m["final"]["ivf"]}]
    if "small_bank" in m["final"]:
        search.append({"search": f"exact, smaller bank ({m['small_bank_size']:,} rows)", **m["final"]["small_bank"]})
    return {"model: exact vs IVF search": pd.DataFrame(search),
            "faiss_vs_bruteforce": _bruteforce_check(run, ranks["model"], n_check)}


def _bruteforce_check(run, stored: np.ndarray, n_check: int) -> pd.DataFrame:
    """The stored exact (FAISS) ranks of the first ``n_check`` evaluation queries against
    numpy brute force over every bank vector, with the queries re-encoded by the stored tower."""
    import torch
    bank, pairs = steps.load_pairs(run)
    ctx, cutoffs = run.cfg["data"]["ctx_len"], run.cfg["evaluate"]["cutoffs"]
    starts = pairs["eval"][:n_check]
    q = encode_queries(steps.load_tower(run, bank), torch.from_numpy(bank.vectors), starts, ctx)
    brute = retrieval.brute_force_ranks(bank.vectors, q, starts + ctx, max(cutoffs))
    got = stored[:len(starts)]
    return pd.DataFrame([{"queries checked": len(starts), "same rank (FAISS exact vs numpy brute force)":
                          float(np.mean(brute == got)),
                          "largest rank difference": int(np.abs(brute - got).max()) if len(got) else 0}])


def example_query(run, query: int = 0, n_context: int = 3) -> dict:
    """One evaluation query (``query``: its index in the evaluation set, shuffled with the
    split seed; 0 by default): the last chunks of its context, its true next chunk, and the
    tower's top-10 chunks over the whole bank (exact search), with texts where the bank has
    them; and where each query kind ranked the true chunk (the stored ranks)."""
    import torch
    m, ranks = steps.results(run)  # cached
    bank, pairs = steps.load_pairs(run)
    ctx = run.cfg["data"]["ctx_len"]
    s = int(pairs["eval"][query])
    target = s + ctx
    q = encode_queries(steps.load_tower(run, bank), torch.from_numpy(bank.vectors), np.array([s]), ctx)
    ids = retrieval.search(evaluation.index(bank, "exact", None, 0), q, 10)[0]
    context = pd.DataFrame([_chunk(bank, r) for r in range(target - n_context, target)])
    top = pd.DataFrame([{"rank": i + 1, **_chunk(bank, r), "score": float(q[0] @ bank.vectors[r]),
                         "true next chunk": "yes" if r == target else ""} for i, r in enumerate(ids)])
    where = pd.DataFrame([{"query": n, "rank of the true next chunk":
                           int(ranks[n][query]) if ranks[n][query] > 0 else f"> {max(run.cfg['evaluate']['cutoffs'])}"}
                          for n in _query_names(ranks)])
    title = bank.titles[int(bank.article[s])]
    return {"query": f"evaluation query {query}: article '{title}', context = chunks {int(bank.position[s])}-"
                     f"{int(bank.position[target - 1])} ({ctx} chunks), target = chunk {int(bank.position[target])}",
            f"last {n_context} context chunks": context,
            "true next chunk": pd.DataFrame([_chunk(bank, target)]),
            "model top-10 (whole bank, exact search)": top,
            "where each query ranks the true next chunk": where}


# -- 04: the report -----------------------------------------------------------------------------------------
def report_overview(result: dict) -> dict:
    """The rendered report's verdict, figures and main tables (from its JSON companion)."""
    md = Path(result["report"])
    ctx = json.loads(md.with_suffix(".json").read_text())
    k = ctx["cutoff"]
    out: dict = {"report": str(md), "verdict": result.get("statement", ctx["verdict"].get("statement", ""))}
    out.update({f"figure: {name}": md.parent / rel for name, rel in ctx["figs"].items()})
    runs = ctx["runs"]
    out["runs (common evaluation set, exact search)"] = pd.DataFrame(
        [{"role": role, "tower": runs[role]["model"]["tower"], "pairs": runs[role]["train"]["n_train"],
          "updates": runs[role]["train"]["updates"], f"recall@{k}": runs[role]["final"]["exact"][f"recall@{k}"],
          "mrr": runs[role]["final"]["exact"]["mrr"]} for role in ctx["roles"] if role in runs])
    out["heuristic queries"] = pd.DataFrame([{"query": n, **v["exact"]} for n, v in ctx["H"].items()])
    cmp = pd.DataFrame([{"comparison": name, **{kk: vv for kk, vv in c.items() if not isinstance(vv, (dict, list))}}
                        for name, c in ctx["cmp"].items()])
    head = [c for c in ("comparison", "a", "b", "mean_diff", "low", "high", "p_value", "clear_gain", "clear_loss")
            if c in cmp]
    out[f"paired comparisons (Recall@{k} of a - b, bootstrap over queries)"] = cmp[head + [c for c in cmp if c not in head]]
    return out
