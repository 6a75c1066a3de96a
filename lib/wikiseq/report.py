"""Gather the wikiseq runs into reports/TWO_TOWER_V1_V2_COMPARISON.md (+ .json, + figures).

Rendered by ``python -m lib.run --report params/wikiseq/report.yaml`` (notebook 04), which
executes the runs first; a run not yet evaluated is evaluated here (cached).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from ..core.files import atomic_write_json, atomic_write_text
from ..core.params import ParamsError, deep_merge, merge_checked
from ..core.rendering import is_smoke_render, provenance, prune_figures, render, report_wall, save_figures
from ..core.runs import ROOT, build_root, resolve_path, run_from_file
from . import analysis, steps
from . import bank as bankmod

ROLES = ("v1_faithful", "v2_faithful", "v1_updates", "v2_updates", "v1_residual", "v2_residual",
         "all_faithful", "all_updates", "all_residual", "v2_hardneg")
REPORT_DEFAULTS = {
    "output": "reports/TWO_TOWER_V1_V2_COMPARISON.md",
    "title": "Two-tower v1 vs v2 failure comparison, reproduced and explained",
    "roles": {role: f"params/wikiseq/{role}.yaml" for role in ROLES},  # role -> run params file
    "run_overrides": {},
    "report_file": None,
    "bootstrap": 1000,
    "cutoff": 500,            # the headline cut-off (the reference's Recall@500)
    # seconds: this study's whole make report (from a fresh clone, the bank embedding included)
    "speed_targets": {"report": 3600.0},
}
REPORT_OPEN = frozenset({"report.run_overrides"})
RUN_KEYS = {"data", "model", "loss", "train", "evaluate", "seed", "device"}


def report_config(raw: dict) -> dict:
    """Validate a report section (or a whole report file {study, report}) against
    REPORT_DEFAULTS; adds what ``lib.run --report`` executes: ``runs``, the sorted list of run
    params files, or, when the report file has ``run_overrides`` (a quick profile),
    ``derived_runs``, each file with those overrides."""
    raw = dict(raw or {})
    for derived in ("runs", "derived_runs"):  # present when a validated config comes back
        raw.pop(derived, None)
    if "report" in raw:            # a report file: {study: wikiseq, report: {...}}
        study = raw.pop("study", "wikiseq")
        if study != "wikiseq":
            raise ParamsError(f"report file is for study {study!r}, not wikiseq")
        inner = raw.pop("report")
        if raw:
            raise ParamsError(f"unknown top-level keys in report file: {sorted(raw)}")
        raw = dict(inner or {})
    cfg = merge_checked(REPORT_DEFAULTS, raw, "report", open_keys=REPORT_OPEN)
    if set(cfg["roles"]) != set(ROLES):
        raise ParamsError(f"report.roles must name exactly the roles {list(ROLES)}")
    files = sorted(set(cfg["roles"].values()))
    if cfg["run_overrides"]:
        cfg["runs"], cfg["derived_runs"] = [], [(f, cfg["run_overrides"]) for f in files]
    else:
        cfg["runs"] = files
    unknown = set(cfg["run_overrides"]) - RUN_KEYS
    if unknown:
        raise ParamsError(f"report.run_overrides: unknown keys {sorted(unknown)}; allowed {sorted(RUN_KEYS)}")
    if cfg["bootstrap"] < 100:
        raise ParamsError("report.bootstrap must be >= 100")
    return cfg


# Training pairs when data.n_train is null (every window): about this many on the builtin bank
# (14,309 at ctx_len 100); a guess for scheduling only, the bank is not read for it.
EVERY_WINDOW_PAIRS = 15_000


def expected_cost(cfg: dict) -> float:
    """A run's rough cost, about seconds on one CPU thread (``lib.core.runner`` starts the
    longest runs first and estimates the time left from it): a training micro-batch of 32
    windows of 100 chunks through the 512-wide GRU costs about a second, the evaluation about
    half a minute."""
    from .train import epochs_to_run  # torch, imported only when a cost is asked for
    d, m, t = cfg["data"], cfg["model"], cfg["train"]
    pairs = d["n_train"] or EVERY_WINDOW_PAIRS
    if d["pair_cap"] is not None:
        pairs = min(pairs, d["pair_cap"])
    micro = -(-pairs // t["batch_size"]) * t["batch_size"] / 32
    scale = d["ctx_len"] / 100 * (m["gru_hidden"] / 512) ** 2
    epochs = epochs_to_run(t)
    return micro * epochs * scale + epochs * 2.0 + 30.0


def _ensure(path: str, overrides: dict) -> dict:
    """A run's metrics (evaluated if needed), its ranks under ``_ranks``, its params file
    under ``_params`` and its folder under ``_dir``."""
    p = resolve_path(path).resolve()
    run = run_from_file(p, overrides)
    m, ranks = steps.results(run)
    return {**m, "_ranks": ranks, "_params": str(p), "_dir": str(run.dir)}


def _curve_fig(res: dict, k: int):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for role, m in res.items():
        h = m["train"]["history"]
        ep = [r["epoch"] for r in h]
        axes[0].plot(ep[1:], [r["train_loss"] for r in h[1:]], marker=".", label=role)
        axes[1].plot(ep, [r["val_loss"] for r in h], marker=".", label=role)
        axes[2].plot([r["updates"] for r in h], [r[f"recall@{k}"] for r in h], marker=".", label=role)
    axes[0].set(xlabel="epoch", ylabel="train InfoNCE loss (in-batch)", title="training loss")
    axes[1].set(xlabel="epoch", ylabel="val InfoNCE loss (in-batch)", title="validation loss")
    axes[2].set(xlabel="optimizer updates", ylabel=f"val Recall@{k} (whole bank)", title="full-bank recall",
                xscale="symlog")
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    plt.close(fig)
    return fig


def _scaling_fig(scaling: list, heur: float, k: int):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for row in scaling:
        xs = [c["pairs"] for c in row["cells"]]
        ys = [c["recall"] for c in row["cells"]]
        axes[0].plot(xs, ys, marker="o", label=row["label"])
        axes[1].scatter([c["updates"] for c in row["cells"]], ys, label=row["label"])
    from matplotlib.ticker import NullFormatter
    for ax in axes:
        ax.axhline(heur, color="gray", ls="--", label="exp-weighted heuristic")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_ylim(0, 1)
        ax.set_ylabel(f"Recall@{k} (common eval set)")
    axes[0].set_xlabel("training pairs")
    axes[1].set_xlabel("optimizer updates")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    plt.close(fig)
    return fig


def _clean(obj):
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items() if not str(k).startswith("_")}
    if isinstance(obj, list):
        return [_clean(v) for v in obj]
    return obj


def render_report(report_cfg: dict) -> dict:
    """Render the report of a ``report_config`` result (or a report section). Its runs take
    the report file's ``run_overrides`` (kept in ``derived_runs``) with ``run_overrides``
    (a smoke render's, set by the caller) merged over them."""
    t0 = time.perf_counter()
    file_ov = next((ov for _, ov in report_cfg.get("derived_runs") or []), {})
    rcfg = report_config(report_cfg)
    ov = deep_merge(file_ov, rcfg["run_overrides"])
    k, nb = rcfg["cutoff"], rcfg["bootstrap"]
    out_md = Path(rcfg["output"])
    out_md = out_md if out_md.is_absolute() else ROOT / out_md
    res = {role: _ensure(path, ov) for role, path in rcfg["roles"].items()}
    for m in res.values():
        if f"recall@{k}" not in m["final"]["exact"]:
            raise ParamsError(f"report.cutoff={k} is not among the evaluate.cutoffs of run {m['run']}")
    base = res["v2_faithful"]
    # every run must share the evaluation queries, or paired comparisons are meaningless
    for role, m in res.items():
        if (m["data"]["bank_key"], m["data"]["eval_set_sha256"]) != \
                (base["data"]["bank_key"], base["data"]["eval_set_sha256"]):
            raise ParamsError(f"run {role} was evaluated on a different bank or query set than v2_faithful")
    heur_ranks = base["_ranks"]
    H = {name: analysis.hits(r, k) for name, r in heur_ranks.items() if name != "model"}
    M = {role: analysis.hits(m["_ranks"]["model"], k) for role, m in res.items()}
    learned = [r for r in ROLES]
    best_role = max(learned, key=lambda r: M[r].mean())
    cmp = {
        "updates_vs_faithful_v1": analysis.paired(M["v1_updates"], M["v1_faithful"], nb),
        "updates_vs_faithful_v2": analysis.paired(M["v2_updates"], M["v2_faithful"], nb),
        "all_vs_v2_faithful": analysis.paired(M["all_faithful"], M["v2_faithful"], nb),
        "all_vs_v2_updates": analysis.paired(M["all_updates"], M["v2_updates"], nb),
        "best_learned_vs_heuristic": analysis.paired(M[best_role], H["exp_weighted"], nb),
        "faithful_v1_vs_heuristic": analysis.paired(M["v1_faithful"], H["exp_weighted"], nb),
        "faithful_v2_vs_heuristic": analysis.paired(M["v2_faithful"], H["exp_weighted"], nb),
        "residual_vs_heuristic_v1": analysis.paired(M["v1_residual"], H["exp_weighted"], nb),
        "residual_vs_heuristic_v2": analysis.paired(M["v2_residual"], H["exp_weighted"], nb),
        "residual_vs_heuristic_all": analysis.paired(M["all_residual"], H["exp_weighted"], nb),
        "updates_all_vs_heuristic": analysis.paired(M["all_updates"], H["exp_weighted"], nb),
        "hardneg_vs_updates_v2": analysis.paired(M["v2_hardneg"], M["v2_updates"], nb),
    }
    v = analysis.verdict(cmp, {f"{a}_{o}": {"pairs": res[f"{a}_{o}"]["train"]["n_train"],
                                             "updates": res[f"{a}_{o}"]["train"]["updates"]}
                               for a in ("v1", "v2", "all") for o in ("faithful", "updates")})
    losers = [r for r in ROLES if analysis.paired(M[r], H["exp_weighted"], nb)["clear_loss"]]
    scaling = []
    for label, roles in (("GRU tower, reference optimiser (lr 2e-5, accum 8)", ("v1_faithful", "v2_faithful", "all_faithful")),
                         ("GRU tower, enough updates", ("v1_updates", "v2_updates", "all_updates")),
                         ("residual tower (heuristic + learned correction)", ("v1_residual", "v2_residual", "all_residual"))):
        scaling.append({"label": label, "cells": [
            {"role": r, "pairs": res[r]["train"]["n_train"], "updates": res[r]["train"]["updates"],
             "recall": res[r]["final"]["exact"][f"recall@{k}"]} for r in roles]})
    heur_rec = base["heuristics"]["exp_weighted"]["exact"][f"recall@{k}"]
    small_rows = [res[r]["final"] for r in ("v1_faithful", "v2_faithful", "v2_updates", "v2_residual")] + \
        [base["heuristics"][h] for h in ("exp_weighted", "last", "oracle")]
    small_same_order = all("small_bank" in x for x in small_rows) and \
        list(np.argsort([-x["exact"][f"recall@{k}"] for x in small_rows], kind="stable")) == \
        list(np.argsort([-x["small_bank"][f"recall@{k}"] for x in small_rows], kind="stable"))
    figs = save_figures({"curves": _curve_fig({r: res[r] for r in ("v1_faithful", "v2_faithful", "v1_updates",
                                                                   "v2_updates", "v1_residual", "v2_residual")}, k),
                         "scaling": _scaling_fig(scaling, heur_rec, k)}, out_md)

    params_files = [Path(m["_params"]) for m in res.values()]
    if rcfg["report_file"]:
        params_files.append(Path(rcfg["report_file"]))
    checks = {f"{name}": digest for name, digest in base["data"]["source_sha256"].items()}
    wall = {role: {"device": m["device"], "train_s": round(m["wall_seconds"]["train"], 1),
                   "evaluate_s": round(m["wall_seconds"]["evaluate"], 1)} for role, m in res.items()}
    prov = provenance(params_files, checks, wall)
    prov["report_seconds"] = round(time.perf_counter() - t0, 1)
    total_train = sum(m["wall_seconds"]["train"] for m in res.values())
    speed = {**report_wall(m["_dir"] for m in res.values()), "targets": rcfg["speed_targets"],
             **bankmod.build_record(bankmod.bank_folder(build_root(), base["data"]["bank_key"]))}
    # the bank made by this invocation as from a fresh clone: built, and its texts embedded when
    # its source has texts (a user's .npz bank and generated vectors have none to embed)
    has_texts = base["cfg"]["data"]["source"] in ("builtin", "textdir")
    built_here = bool(speed["started_at"] and speed["built_at"] and speed["built_at"] >= speed["started_at"])
    speed["bank_embedded_here"] = built_here and bool(speed["embed_seconds"])
    speed["bank_made_here"] = speed["bank_embedded_here"] or (built_here and not has_texts)
    context = {
        "title": rcfg["title"], "cutoff": k, "runs": res, "roles": ROLES, "H": base["heuristics"],
        "data": base["data"], "cmp": cmp, "verdict": v, "best_role": best_role, "losers": losers,
        "scaling": scaling, "heur_rec": heur_rec, "smoke": is_smoke_render(ov), "cutoffs": base["cfg"]["evaluate"]["cutoffs"],
        "figs": figs, "provenance": prov,
        "total_train_seconds": total_train, "speed": speed, "ivf": base["ivf"], "small_bank_size": base["small_bank_size"],
        "timing": base["timing"], "n_boot": nb, "small_same_order": bool(small_same_order),
    }
    md = render("two_tower_v1_v2.md.j2", context)
    companion = _clean({k2: v2 for k2, v2 in context.items() if k2 != "runs"})
    companion["runs"] = {role: _clean(m) for role, m in res.items()}
    atomic_write_json(out_md.with_suffix(".json"), json.loads(json.dumps(companion, default=float)))
    atomic_write_text(out_md, md)
    prune_figures(out_md, figs)
    return {"report": str(out_md), "cause": v["cause"], "statement": v["statement"],
            "seconds": round(time.perf_counter() - t0, 1)}
