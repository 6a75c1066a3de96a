"""Gather MovieLens runs into reports/EVALUATION_REPORT.md (+ .json, + figures)."""
from __future__ import annotations

import difflib
import inspect
import json
import time
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..core import stats  # noqa: E402
from ..core.files import atomic_write_json, atomic_write_text  # noqa: E402
from ..core.params import ParamsError, deep_merge, load_yaml, merge_checked  # noqa: E402
from ..core.rendering import (is_smoke_render, provenance, prune_figures, render, report_wall,  # noqa: E402
                              save_figures, written_since_start)
from ..core.runs import ROOT, run_from_file  # noqa: E402
from . import baselines, steps  # noqa: E402

REPORT_DEFAULTS = {
    "output": "reports/EVALUATION_REPORT.md",
    "title": "Two-tower retrieval on MovieLens-1M",
    "main_run": "",                 # the reference configuration (per-epoch table, latency)
    "fix_progression": [],          # [{label, params}]
    "baselines": [],                # [{label, params}]
    "two_tower_variants": [],       # [{label, params}] ablations, chosen on validation
    # params files of two_tower_variants with the same towers (model section) and different
    # losses: the loss's part of the gap, with the query tower fixed
    "loss_sweep": [],
    "best_two_tower": "",           # params file, or "auto": the variant with the best validation NDCG@10
    "other_datasets": [],           # [{label, dataset, two_tower, baselines: [{label, params}]}]
    "targets": {},                  # metric -> {min, good}
    "test_results": "build/test-results.xml",
    "bootstrap": 1000,
    # seconds: the reference epoch (2 torch threads; make bench), ranking, the whole make report
    "speed_targets": {"epoch": 10.0, "rank": 5.0, "report": 1200.0},
    # the verdict per test-time protocol (names of PROTOCOLS), every compared model trained with
    # each of ``seeds`` (the randomised ones; a deterministic model is the same at every seed)
    "protocols": [],
    "seeds": [0],
    # make tune's tables (<folder>/<dataset>.json), shown when present
    "tuning": "",
}
PROTOCOLS = {
    "reference": ("Reference: queries read their training history", {}),
    "history_through_validation": ("History through validation: queries read train + validation, no retraining",
                                   {"evaluate": {"query_history": "train+val"}}),
    "refit": ("Refit on train + validation with what validation chose, then test",
              {"evaluate": {"query_history": "train+val", "refit": True}}),
}
OPEN = frozenset({"report.targets"})
CMP_METRICS = ("recall@10", "ndcg@10", "hit_rate@10")


# Rough training seconds on one CPU thread on ML-1M, by what a run trains (measured here: the
# reference family 215-575 s, the in-batch variants 28-91 s, user batches 8-44 s, the
# sequence towers 65-103 s, BPR 34-38 s, EASE 9 s, the other baselines 0-2 s).
_TWO_TOWER_SECONDS = {"interactions": 60.0, "users": 20.0, "sequences": 80.0}
_SAMPLED_SECONDS = 300.0   # interaction batches with sampled negatives (explicit, mixed losses)
_ID_TOWER_INTERACTION_SECONDS = 500.0  # interaction batches through ID or history towers (the loss sweep: 310-490 s)
_BASELINE_SECONDS = {"bpr": 35.0, "ease": 9.0}
_RUN_SECONDS = 4.0         # a run's evaluation and notebooks beside its training


def expected_cost(cfg: dict) -> float:
    """A run's rough cost, about seconds on one CPU thread (``lib.core.runner`` starts the
    longest runs first and estimates the time left from it): what it trains, scaled by the
    size of its dataset (ML-100K: a tenth of ML-1M; a log of your own counts as ML-1M)."""
    model, train, loss = cfg["model"], cfg["train"], cfg["loss"]
    if model["kind"] != "two_tower":
        seconds = _BASELINE_SECONDS.get(model["kind"], 1.0)
    elif train["batching"] == "interactions" and (model["id_embeddings"] or model["history"] != "none"):
        seconds = _ID_TOWER_INTERACTION_SECONDS
    elif train["batching"] == "interactions" and loss["kind"] in ("explicit", "mixed"):
        seconds = _SAMPLED_SECONDS
    else:
        seconds = _TWO_TOWER_SECONDS[train["batching"]]
    return seconds * (0.1 if cfg["data"]["dataset"] == "ml-100k" else 1.0) + _RUN_SECONDS


def report_config(raw: dict) -> dict:
    cfg = merge_checked(REPORT_DEFAULTS, raw, "report", open_keys=OPEN)
    for key in ("fix_progression", "baselines", "two_tower_variants"):
        for entry in cfg[key]:
            if not isinstance(entry, dict) or set(entry) != {"label", "params"}:
                raise ParamsError(f"report.{key}: each entry needs exactly 'label' and 'params', got {entry!r}")
    variant_files = [e["params"] for e in cfg["two_tower_variants"]]
    for path in cfg["loss_sweep"]:
        if path not in variant_files:
            raise ParamsError(f"report.loss_sweep: {path!r} is not one of report.two_tower_variants' params files")
    if len(set(cfg["loss_sweep"])) != len(cfg["loss_sweep"]) or len(cfg["loss_sweep"]) == 1:
        raise ParamsError(f"report.loss_sweep: at least two distinct params files, got {cfg['loss_sweep']!r}")
    for entry in cfg["other_datasets"]:
        if not {"label", "dataset", "two_tower", "baselines"} <= set(entry) <= \
                {"label", "dataset", "two_tower", "baselines", "two_tower_candidates"}:
            raise ParamsError(f"report.other_datasets: entries need label, dataset, two_tower, baselines (and "
                              f"optionally two_tower_candidates: [{{label, params}}]); got {sorted(entry)}")
    for metric, t in cfg["targets"].items():
        if not isinstance(t, dict) or set(t) != {"min", "good"}:
            raise ParamsError(f"report.targets.{metric}: needs exactly 'min' and 'good'")
    for name in cfg["protocols"]:
        if name not in PROTOCOLS:
            close = difflib.get_close_matches(str(name), list(PROTOCOLS), n=1)
            raise ParamsError(f"report.protocols: unknown protocol {name!r}"
                              + (f" (did you mean '{close[0]}'?)" if close else "") + f"; known: {list(PROTOCOLS)}")
    if not cfg["seeds"] or len(set(cfg["seeds"])) != len(cfg["seeds"]) or \
            not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in cfg["seeds"]):
        raise ParamsError(f"report.seeds: distinct non-negative integers, got {cfg['seeds']!r}")
    cfg["runs"] = sorted(set(_all_params(cfg)))
    # runs that are a variant's params file on another dataset (other_datasets with
    # two_tower: auto): lib.run executes them with the runs above, as (file, overrides)
    cfg["derived_runs"] = [(e["params"], _on_dataset(entry["dataset"])) for entry in cfg["other_datasets"]
                           if entry["two_tower"] == "auto" for e in cfg["two_tower_variants"]]
    # the baselines under each protocol and seed (the chosen two-tower is known only once its
    # variants are scored on validation: the report runs it)
    for entries, dataset in [(cfg["baselines"], None)] + [(o["baselines"], o["dataset"]) for o in cfg["other_datasets"]]:
        for e in entries:
            for overrides in _protocol_seed_overrides(cfg, e["params"]):
                if overrides:
                    cfg["derived_runs"].append((e["params"], deep_merge(overrides, _on_dataset(dataset) if dataset else {})))
    return cfg


def _seed_override(params: str, seed: int) -> dict | None:
    """The overrides that train ``params`` with ``seed``: {} for its own seed, None for a
    model without randomness (the same at every seed)."""
    raw = load_yaml(ROOT / params)
    kind = (raw.get("model") or {}).get("kind", "two_tower")
    if kind == "two_tower":
        return {} if seed == raw.get("seed", 0) else {"seed": seed}
    if "seed" not in inspect.signature(baselines.BASELINES[kind]).parameters:
        return None
    own = ((raw.get("model") or {}).get("params") or {}).get("seed", 0)
    return {} if seed == own else {"model": {"params": {"seed": seed}}}


def _protocol_seed_overrides(cfg: dict, params: str) -> list[dict]:
    """Every (protocol, seed) run of ``params`` as overrides, the deterministic models once per protocol."""
    out = []
    for name in cfg["protocols"]:
        for seed in cfg["seeds"]:
            seeded = _seed_override(params, seed)
            if seeded is None:
                if seed != cfg["seeds"][0]:
                    continue
                seeded = {}
            out.append(deep_merge(seeded, PROTOCOLS[name][1]))
    return out


def _on_dataset(dataset: str) -> dict:
    return {"data": {"dataset": dataset}}


def _all_params(cfg):
    for key in ("main_run", "best_two_tower"):
        if cfg[key] and cfg[key] != "auto":
            yield cfg[key]
    for key in ("fix_progression", "baselines", "two_tower_variants"):
        yield from (e["params"] for e in cfg[key])
    for entry in cfg["other_datasets"]:
        if entry["two_tower"] != "auto":
            yield entry["two_tower"]
        yield from (e["params"] for e in entry["baselines"] + entry.get("two_tower_candidates", []))


def _ensure(path: str, overrides: dict) -> dict:
    """Evaluate a run (cached) and return its metrics.json content."""
    run = run_from_file(ROOT / path, overrides or None)
    steps.evaluate(run)
    out = json.loads((run.dir / "metrics.json").read_text())
    out["_dir"] = str(run.dir)
    out["_params"] = path
    return out


def _per_user(result: dict, split: str, metric: str) -> tuple[np.ndarray, np.ndarray]:
    z = np.load(Path(result["_dir"]) / "per_user.npz")
    return z[f"{split}/users"], z[f"{split}/{metric}"]


def _row(label: str, result: dict, split: str = "test") -> dict:
    e = result["splits"][split]
    val = result["splits"].get("val", {}).get("metrics") if split != "val" else None
    return {"label": label, "m": e["metrics"], "val_m": val, "ci": e.get("ci", {}), "coverage": e["coverage@100"],
            "diversity": e.get("diversity@10"), "n_users": e["n_users"],
            "train_seconds": result["train"]["seconds"], "kind": result["config"]["model"]["kind"],
            "params": result["_params"]}


def _history_rows(result: dict) -> list[dict]:
    return result["train"].get("history", [])


def _fig_loss(curves: dict[str, dict]):
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for label, res in curves.items():
        h = _history_rows(res)
        if not h:
            continue
        ep = [r["epoch"] for r in h]
        line, = axes[0].plot(ep, [r["train_loss"] for r in h], marker="o", ms=3, label=f"{label} train")
        axes[0].plot(ep, [r["val_loss"] for r in h], ls="--", color=line.get_color(), label=f"{label} val")
        axes[1].plot(ep, [r["val_ndcg@10"] for r in h], marker="o", ms=3, color=line.get_color(), label=label)
    axes[0].set(xlabel="epoch", ylabel="loss (each run's own loss)", title="Training and validation loss")
    axes[1].set(xlabel="epoch", ylabel="validation NDCG@10", title="Validation NDCG@10 per epoch")
    axes[0].legend(fontsize=6)
    axes[1].legend(fontsize=6)
    plt.close(fig)
    return fig


def _fig_at_k(rows: list[dict]):
    ks = [5, 10, 20, 50, 100]
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for r in rows:
        for ax, name in zip(axes, ("recall", "ndcg", "hit_rate")):
            ax.plot(ks, [r["m"][f"{name}@{k}"] for k in ks], marker="o", ms=3, label=r["label"])
    for ax, name in zip(axes, ("Recall@K", "NDCG@K", "HitRate@K")):
        ax.set(xscale="log", xlabel="K", title=name)
        ax.set_xticks(ks, [str(k) for k in ks])
    axes[2].legend(fontsize=6, loc="lower right")
    plt.close(fig)
    return fig


def _fig_ci(rows: list[dict]):
    fig, axes = plt.subplots(1, 3, figsize=(14, 0.45 * len(rows) + 1.5))
    for ax, metric in zip(axes, CMP_METRICS):
        for i, r in enumerate(rows):
            ci = r["ci"][metric]
            ax.errorbar(ci["mean"], i, xerr=[[ci["mean"] - ci["low"]], [ci["high"] - ci["mean"]]],
                        fmt="o", capsize=3, color="C3" if r["kind"] == "two_tower" else "C0")
        ax.set_yticks(range(len(rows)), [r["label"] for r in rows] if ax is axes[0] else [""] * len(rows))
        ax.set(title=f"{metric} (95% bootstrap CI over users)")
        ax.grid(axis="x", alpha=0.3)
    plt.close(fig)
    return fig


def _test_summary(path: Path) -> dict | None:
    if not path.is_file():
        return None
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root)
    tot = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    tot["passed"] = tot["tests"] - tot["failures"] - tot["errors"] - tot["skipped"]
    tot["seconds"] = sum(float(s.get("time", 0)) for s in suites)
    files = {}
    for case in root.iter("testcase"):
        mod = case.get("classname", "").split(".")
        name = mod[1] if len(mod) > 1 else mod[0]
        files[name] = files.get(name, 0) + 1
    tot["by_file"] = dict(sorted(files.items()))
    # a render through `make report REPORT=...` reads whatever results an earlier invocation left
    tot["this_invocation"] = written_since_start(path)
    tot["written_at"] = datetime.fromtimestamp(path.stat().st_mtime, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return tot


def _paired(a: dict, b: dict, metric: str, n_boot: int, seed: int = 0) -> dict:
    ua, va = _per_user(a, "test", metric)
    ub, vb = _per_user(b, "test", metric)
    if not np.array_equal(ua, ub):
        raise RuntimeError("paired test needs the same evaluated users")
    return stats.paired_bootstrap(va, vb, n_boot=n_boot, seed=seed)


def _val_vs_test(rows: list[dict]) -> list[dict]:
    """Each model's NDCG@10 and Recall@10 on validation and on test, with its rank among
    the models on each split: does the order chosen on validation hold one period later?"""
    rows = [r for r in rows if r.get("val_m")]
    out = [{"label": r["label"], **{f"{s}_{m}": (r["val_m"] if s == "val" else r["m"])[m]
                                    for s in ("val", "test") for m in ("ndcg@10", "recall@10")}} for r in rows]
    for s in ("val", "test"):
        order = sorted(range(len(out)), key=lambda i: -out[i][f"{s}_ndcg@10"])
        for rank, i in enumerate(order, 1):
            out[i][f"{s}_rank"] = rank
    for r in out:
        r["drop"] = 1 - r["test_ndcg@10"] / r["val_ndcg@10"] if r["val_ndcg@10"] else float("nan")
    return out


def _recency_gain(rows: list[dict]) -> dict | None:
    """How much counting only recent training interactions helps popularity (test NDCG@10):
    a measure of how strongly the test period favours what was popular just before it."""
    kinds = {r["kind"]: r for r in rows}
    if "popularity" not in kinds or "recent_popularity" not in kinds:
        return None
    pop, rec = kinds["popularity"]["m"]["ndcg@10"], kinds["recent_popularity"]["m"]["ndcg@10"]
    return {"popularity": pop, "recent_popularity": rec, "gain": rec / pop - 1 if pop else float("nan")}


def _with_history(entry: dict, metric: str) -> float | None:
    """A split's ``metric`` over its users with training history (the split's mean minus
    what the users without history contribute)."""
    n, cold = entry["n_users"], entry.get("n_users_without_train_history", 0)
    if not cold:
        return entry["metrics"][metric]
    if n == cold:
        return None
    return (entry["metrics"][metric] * n - entry["metrics_without_history"][metric] * cold) / (n - cold)


def _cold_share(entry: dict) -> dict:
    n, cold = entry["n_users"], entry.get("n_users_without_train_history", 0)
    return {"users": n, "without_history": cold, "share": cold / n if n else float("nan")}


def _rank_sweep(variants: list[dict], ease: dict | None) -> dict | None:
    """The linear history tower's validation figures by dimension, beside EASE's (the
    full-rank linear item-item model), over all validation users and over those with
    training history (the only ones a history model can use its rank on)."""
    rows = sorted((v for v in variants if v.get("architecture") == "linear"), key=lambda v: v["dim"])
    if not rows or ease is None or "val" not in ease["splits"]:
        return None
    val = ease["splits"]["val"]
    best = max(rows, key=lambda v: v["warm_ndcg"] or 0.0)
    return {"rows": rows, "ease": val["metrics"]["ndcg@10"], "ease_warm": _with_history(val, "ndcg@10"),
            "ease_hyper": ease["train"].get("hyperparameters"), "best": best,
            "gap_warm": best["warm_ndcg"] - _with_history(val, "ndcg@10"),
            "gain_warm": rows[-1]["warm_ndcg"] - rows[0]["warm_ndcg"]}


def _tuning_tables(folder: str) -> list[dict]:
    """make tune's table per dataset (written by ``lib.movielens.tune``), if it ran."""
    if not folder:
        return []
    tables = []
    for f in sorted((ROOT / folder).glob("*.json")):
        t = json.loads(f.read_text())
        t["file"] = str(f.relative_to(ROOT))
        t["rows"] = sorted(t["models"].values(), key=lambda m: m["name"])
        tables.append(t)
    return tables


def _seed_runs(get, rcfg: dict, params: str, extra: dict) -> list[dict]:
    """``params`` under ``extra`` once per report seed (once in all for a deterministic model,
    and on generated data, which is drawn from the run's seed: another seed would be
    another dataset, so the seeds could not be averaged user by user)."""
    out = []
    for seed in rcfg["seeds"]:
        if out and out[0]["config"]["data"]["dataset"] == "synthetic":
            break
        seeded = _seed_override(params, seed)
        if seeded is None:
            if out:
                continue
            seeded = {}
        out.append(get(params, deep_merge(extra, seeded)))
    return out


def _seed_mean_row(label: str, results: list[dict]) -> dict:
    """A model's test figures averaged over its seeds, with their range, and its per-user
    figures averaged over the seeds (for the paired test)."""
    metrics = {m: [r["splits"]["test"]["metrics"][m] for r in results] for m in CMP_METRICS}
    users = _per_user(results[0], "test", CMP_METRICS[0])[0]
    per_user = {}
    for m in CMP_METRICS:
        runs = [_per_user(r, "test", m) for r in results]
        if any(not np.array_equal(u, users) for u, _ in runs):
            raise RuntimeError(f"{label}: the seeds evaluated different test users")
        per_user[m] = np.mean([v for _, v in runs], axis=0)
    return {"label": label, "run": results[0]["run"], "seeds": len(results),
            "mean": {m: float(np.mean(v)) for m, v in metrics.items()},
            "low": {m: float(np.min(v)) for m, v in metrics.items()},
            "high": {m: float(np.max(v)) for m, v in metrics.items()},
            "kind": results[0]["config"]["model"]["kind"], "users": users, "per_user": per_user,
            "n_users": int(len(users))}


def _protocol_table(get, rcfg: dict, protocol: str, dataset_label: str, base_entries: list[dict],
                    tt_params: str, tt_label: str, data_extra: dict, on_test: dict) -> dict:
    """One (dataset, protocol) table: every baseline and the chosen two-tower, each
    seed-averaged, and per metric the verdict against the best baseline (by its
    seed-averaged figure): the two-tower wins if its seed-averaged figure is at least the
    baseline's and the paired bootstrap over users (per-user figures averaged over seeds)
    does not put it significantly below."""
    label, overrides = PROTOCOLS[protocol]
    extra = deep_merge(overrides, data_extra)
    rows = [_seed_mean_row(b["label"], _seed_runs(get, rcfg, b["params"], extra)) for b in base_entries]
    tt = _seed_mean_row(f"Two-tower ({tt_label.split(':')[0]})", _seed_runs(get, rcfg, tt_params, deep_merge(on_test, extra)))
    dataset = get(tt_params, deep_merge(on_test, extra))["config"]["data"]["dataset"]
    verdicts = []
    for metric in CMP_METRICS:
        top = max(rows, key=lambda r: r["mean"][metric])
        if not np.array_equal(top["users"], tt["users"]):
            raise RuntimeError("the paired test needs the same evaluated users")
        p = stats.paired_bootstrap(tt["per_user"][metric], top["per_user"][metric], n_boot=rcfg["bootstrap"], seed=0)
        diff = tt["mean"][metric] - top["mean"][metric]
        verdicts.append({"dataset": dataset, "protocol": protocol, "metric": metric, "two_tower": tt["mean"][metric],
                         "two_tower_run": tt["run"], "two_tower_params": tt_params, "two_tower_seeds": tt["seeds"],
                         "best_baseline": top["label"],
                         "baseline": top["mean"][metric], "baseline_run": top["run"], "diff": diff,
                         "ci_low": p["low"], "ci_high": p["high"], "p_value": p["p_value"],
                         "wins": bool(diff >= 0 and p["high"] >= 0)})
    shown = [{k: v for k, v in r.items() if k not in ("users", "per_user")} for r in rows + [tt]]
    return {"dataset": dataset, "dataset_label": dataset_label, "protocol": protocol, "label": label,
            "rows": shown, "verdicts": verdicts, "n_users": tt["n_users"]}


GAP_GROUPS = (
    ("features only, sampled negatives (the reference config)", lambda v: v.get("architecture") is None),
    ("features + IDs, full softmax", lambda v: v.get("architecture") == "mlp" and v["ids"] and v["history"] == "none"
     and v["loss"] == "full_softmax"),
    ("pooled history (+ features and IDs), full softmax", lambda v: v.get("architecture") == "mlp"
     and v["history"] != "none" and v["loss"] == "full_softmax"),
    ("ordered history (sequence towers)", lambda v: v.get("architecture") in ("sasrec", "gru4rec")),
    ("linear history tower, rank <= 2048", lambda v: v.get("architecture") == "linear"),
)


def _gap_to_ease(variants: list[dict], sweep: dict | None) -> dict | None:
    """What the query tower reads, against EASE^R on validation users with history: the best
    variant of each group (``GAP_GROUPS``) and its difference to EASE^R there."""
    if sweep is None:
        return None
    rows = []
    for label, member in GAP_GROUPS:
        group = [v for v in variants if member(v) and v["warm_ndcg"] is not None]
        if group:
            best = max(group, key=lambda v: v["warm_ndcg"])
            rows.append({"group": label, "best": best["label"].split(":")[0], "warm_ndcg": best["warm_ndcg"],
                         "diff": best["warm_ndcg"] - sweep["ease_warm"], "ndcg": best["m"]["ndcg@10"]})
    if not rows:
        return None
    closest = max(rows, key=lambda r: r["diff"])
    steps_ = [(b["group"], b["warm_ndcg"] - a["warm_ndcg"]) for a, b in zip(rows, rows[1:3])]
    return {"rows": rows, "ease_warm": sweep["ease_warm"], "ease": sweep["ease"], "closest": closest,
            "largest_step": max(steps_, key=lambda x: x[1]) if steps_ else None}


def loss_description(cfg: dict) -> str:
    """What a two-tower run's loss is, in words, from its resolved params."""
    lo, tr = cfg["loss"], cfg["train"]
    if tr["batching"] == "users":
        text = (f"multinomial over the catalog, user batches (each epoch {tr['target_fraction']:.0%} of every "
                f"history held out as targets)")
    elif tr["batching"] == "sequences":
        text = "next-item softmax over the catalog at every position of the ordered history"
    elif lo["kind"] == "full_softmax":
        text = "softmax over the catalog, one training interaction per row"
    elif lo["kind"] == "in_batch":
        text = "in-batch softmax (the batch's other positives)"
        extras = [x for x, on in (("logQ correction", lo["logq_correction"]),
                                  ("accidental hits removed", lo["remove_accidental_hits"])) if on]
        text += (", " + " and ".join(extras)) if extras else ""
    elif lo["kind"] == "explicit":
        text = f"{lo['num_negatives']} uniform sampled negatives per row"
    else:
        w = lo["explicit_weight"]
        text = f"{w:g} x {lo['num_negatives']} uniform sampled negatives + {1 - w:g} x in-batch softmax"
    if lo["num_hard_negatives"]:
        text += f", plus {lo['num_hard_negatives']} mined hard negatives"
    if tr["batching"] == "interactions":
        text += f"; batches of {tr['batch_size']} interactions"
    return text


def _loss_sweep(get, paths: list[str], variants: list[dict], ease_warm: float | None) -> dict | None:
    """The loss's part of the gap: the variants of ``paths`` (the same towers, other losses) on
    validation, each against EASE^R on the users with history. Raises if their towers differ."""
    if not paths:
        return None
    results = [get(p) for p in paths]
    first = results[0]["config"]["model"]
    for path, res in zip(paths, results):
        differ = sorted(k for k in set(first) | set(res["config"]["model"]) if first.get(k) != res["config"]["model"].get(k))
        if differ:
            raise ParamsError(f"report.loss_sweep: {path} has other towers than {paths[0]} (model.{differ[0]}: "
                              f"{res['config']['model'].get(differ[0])!r} vs {first.get(differ[0])!r}); the sweep "
                              f"varies the loss only")
    by_path = {v["params"]: v for v in variants}
    rows = [{**by_path[p], "loss_text": loss_description(res["config"]),
             "vs_ease": None if ease_warm is None or by_path[p]["warm_ndcg"] is None else by_path[p]["warm_ndcg"] - ease_warm}
            for p, res in zip(paths, results)]
    scored = [r for r in rows if r["warm_ndcg"] is not None]
    if not scored:
        return None
    best, worst = max(scored, key=lambda r: r["warm_ndcg"]), min(scored, key=lambda r: r["warm_ndcg"])
    return {"rows": rows, "best": best, "worst": worst, "spread": best["warm_ndcg"] - worst["warm_ndcg"],
            "towers": rows[0]["label"].split(":")[0], "ease_warm": ease_warm}


def _decomposition(gap: dict | None, loss_sweep: dict | None, rank_sweep: dict | None,
                   chosen: dict | None) -> dict | None:
    """The gap to EASE^R on users with history, by part, each a measured move of NDCG@10
    there: what the query tower reads (the largest step between kinds of tower), the loss
    with the towers fixed (best - worst of the sweep), rank (the linear tower from its
    smallest to its largest dimension), and time (the chosen two-tower's difference to
    EASE^R on test minus that on validation). ``largest``: the part that moves it most."""
    parts = []
    if gap and gap["largest_step"]:
        parts.append({"part": "what the query tower reads", "moves": gap["largest_step"][1],
                      "detail": f"the step to {gap['largest_step'][0]}"})
    if loss_sweep:
        parts.append({"part": "the loss, with the towers fixed", "moves": loss_sweep["spread"],
                      "detail": f"{loss_sweep['worst']['label'].split(':')[0]} to {loss_sweep['best']['label'].split(':')[0]}"})
    if rank_sweep:
        parts.append({"part": "rank", "moves": rank_sweep["gain_warm"],
                      "detail": f"the linear tower from {rank_sweep['rows'][0]['dim']} to {rank_sweep['rows'][-1]['dim']} "
                                f"dimensions"})
    if gap and "test" in gap and chosen is not None and chosen.get("warm_ndcg") is not None:
        val_diff = chosen["warm_ndcg"] - gap["ease_warm"]
        test_diff = gap["test"]["tt_warm"] - gap["test"]["ease_warm"]
        parts.append({"part": "time", "moves": test_diff - val_diff,
                      "detail": f"the chosen two-tower against EASE^R, {val_diff:+.4f} on validation and "
                                f"{test_diff:+.4f} on test"})
    if not parts:
        return None
    return {"parts": parts, "largest": max(parts, key=lambda x: abs(x["moves"]))}


def _fig_rank(sweep: dict):
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    dims = [r["dim"] for r in sweep["rows"]]
    ax.plot(dims, [r["m"]["ndcg@10"] for r in sweep["rows"]], marker="o", label="linear tower, all val users")
    ax.plot(dims, [r["warm_ndcg"] for r in sweep["rows"]], marker="s", label="linear tower, users with history")
    ax.axhline(sweep["ease"], color="C0", ls="--", lw=1, label="EASE^R, all val users")
    ax.axhline(sweep["ease_warm"], color="C1", ls="--", lw=1, label="EASE^R, users with history")
    ax.set_xscale("log", base=2)
    ax.set(xlabel="embedding dimension (rank)", ylabel="validation NDCG@10", title="Rank: linear tower vs EASE^R")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _verdicts(best_tt: dict, rows: list[dict]) -> list[dict]:
    out = []
    base = [r for r in rows if r["kind"] != "two_tower"]
    for metric in CMP_METRICS:
        top = max(base, key=lambda r: r["m"][metric])
        out.append({"metric": metric, "best_baseline": top["label"], "baseline": top["m"][metric],
                    "two_tower": best_tt["m"][metric], "wins": best_tt["m"][metric] >= top["m"][metric]})
    return out


def _seed_flips(verdicts: list[dict], protocol_tables: list[dict], best_params: str | None, dataset: str,
                seed: int) -> list[dict]:
    """The summary's metrics where the verdict of the best two-tower trained with one seed
    (``verdicts``) and the seed-averaged verdict of the same configuration on the same dataset
    (reference protocol) differ: there the gap to the best baseline is within the spread
    between seeds (a seed, or a last-bit change of training such as another kind of CPU,
    moves it across zero), and the one-seed verdict is not evidence either way."""
    means = {v["metric"]: v for t in protocol_tables for v in t["verdicts"]
             if (t["dataset"], t["protocol"], v["two_tower_params"]) == (dataset, "reference", best_params)}
    return [{"metric": v["metric"], "seed": seed, "one_seed_wins": v["wins"],
             "seed_mean_wins": means[v["metric"]]["wins"], "seeds": means[v["metric"]]["two_tower_seeds"]}
            for v in verdicts if v["metric"] in means and v["wins"] != means[v["metric"]]["wins"]]


def render_report(rcfg: dict) -> dict:
    if rcfg.get("kind") == "dataset":
        return render_dataset_report(rcfg)
    t0 = time.perf_counter()
    ov = rcfg["run_overrides"]
    out_md = Path(rcfg["output"])
    out_md = out_md if out_md.is_absolute() else ROOT / out_md
    cache: dict[str, dict] = {}

    def get(path, extra: dict | None = None):
        key = json.dumps([path, extra], sort_keys=True)
        if key not in cache:
            # the report's run_overrides (smoke renders) win over per-role extras
            cache[key] = _ensure(path, deep_merge(extra or {}, ov or {}))
        return cache[key]

    main = get(rcfg["main_run"])
    fix = [_row(e["label"], get(e["params"])) for e in rcfg["fix_progression"]]
    base_rows = [_row(e["label"], get(e["params"])) for e in rcfg["baselines"]]
    variants = []
    if rcfg["two_tower_variants"] and "val" in main["splits"]:
        variants.append({"label": "Reference config (features only, mixed loss)", "m": main["splits"]["val"]["metrics"],
                         "params": rcfg["main_run"], "train_seconds": main["train"]["seconds"],
                         "best_epoch": main["train"].get("best_epoch"),
                         "parameters": main["train"].get("parameters", {}).get("total")})
    for e in rcfg["two_tower_variants"]:
        res = get(e["params"])
        v = res["splits"]["val"]
        variants.append({"label": e["label"], "m": v["metrics"], "params": e["params"],
                         "train_seconds": res["train"]["seconds"], "best_epoch": res["train"].get("best_epoch"),
                         "parameters": res["train"].get("parameters", {}).get("total"),
                         "architecture": res["config"]["model"]["architecture"],
                         "history": res["config"]["model"]["history"],
                         "ids": res["config"]["model"]["id_embeddings"],
                         "features": res["config"]["model"]["user_features"],
                         "dim": res["config"]["model"]["embedding_dim"],
                         "loss": res["config"]["loss"]["kind"], "batching": res["config"]["train"]["batching"],
                         "warm_ndcg": _with_history(v, "ndcg@10")})
    for v in variants[:1]:
        v["warm_ndcg"] = _with_history(main["splits"]["val"], "ndcg@10")
    best_variant = max(variants, key=lambda v: v["m"]["ndcg@10"]) if variants else None
    ease = next((r for r in map(get, (e["params"] for e in rcfg["baselines"]))
                 if r["config"]["model"]["kind"] == "ease"), None)
    rank_sweep = _rank_sweep([v for v in variants  # the sweep's own files (tt_l*), not a tuned linear tower
                              if not (rcfg["tuning"] and Path(v["params"]).parent == Path(rcfg["tuning"]))], ease)
    gap = _gap_to_ease(variants, rank_sweep)
    loss_sweep = _loss_sweep(get, rcfg["loss_sweep"], variants, rank_sweep["ease_warm"] if rank_sweep else None)
    sequence_rows = [v for v in variants if v.get("architecture") in ("sasrec", "gru4rec")]
    pooled = [v for v in variants if v.get("history") not in (None, "none") and v["warm_ndcg"] is not None]
    best_pooled = max(pooled, key=lambda v: v["warm_ndcg"]) if pooled else None  # on users with history
    on_test = {"evaluate": {"splits": ["val", "test"]}}
    best_params = rcfg["best_two_tower"]
    if best_params == "auto":
        chosen = [v for v in variants if v["params"] != rcfg["main_run"]]
        best_params = max(chosen, key=lambda v: v["m"]["ndcg@10"])["params"] if chosen else ""
    best = get(best_params, on_test) if best_params else main
    if gap is not None and best_params and "test" in ease["splits"]:
        gap["test"] = {"tt_warm": _with_history(best["splits"]["test"], "ndcg@10"),
                       "tt_cold": best["splits"]["test"].get("metrics_without_history", {}).get("ndcg@10"),
                       "ease_warm": _with_history(ease["splits"]["test"], "ndcg@10"),
                       "ease_cold": ease["splits"]["test"].get("metrics_without_history", {}).get("ndcg@10")}
        if None in gap["test"].values():
            del gap["test"]
    decomposition = _decomposition(gap, loss_sweep, rank_sweep,
                                   next((v for v in variants if v["params"] == best_params), None))
    main_row = _row("Two-tower (reference config)", main)
    best_row = _row("Two-tower (best, chosen on validation)", best)
    comparison = base_rows + [main_row] + ([best_row] if best_params else [])
    best_base = max(base_rows, key=lambda r: r["m"]["ndcg@10"]) if base_rows else None
    paired = {}
    if best_base is not None:
        bb = get(best_base["params"])
        paired = {m: _paired(best, bb, m, rcfg["bootstrap"]) for m in CMP_METRICS}
    verdicts = _verdicts(best_row, comparison) if base_rows else []
    val_vs_test = _val_vs_test(comparison)
    recency = _recency_gain(comparison)
    main_losses = [r for r in base_rows if any(r["m"][m] > main_row["m"][m] for m in CMP_METRICS)]

    others = []
    # (dataset label, baselines, chosen two-tower params, its label, data overrides): the protocol tables
    compared = [("MovieLens-1M", rcfg["baselines"], best_params,
                 next((v["label"] for v in variants if v["params"] == best_params), "best"), {})]
    for entry in rcfg["other_datasets"]:
        selection = []
        if entry["two_tower"] == "auto":
            # chosen again on *this* dataset's validation split, among the same variants
            on_ds = _on_dataset(entry["dataset"])
            for e in rcfg["two_tower_variants"]:
                v = get(e["params"], on_ds)["splits"]["val"]["metrics"]
                selection.append({"label": e["label"], "params": e["params"], "m": v, "extra": on_ds})
            for e in entry.get("two_tower_candidates", []):  # params files of this dataset (tuned on it)
                v = get(e["params"])["splits"]["val"]["metrics"]
                selection.append({"label": e["label"], "params": e["params"], "m": v, "extra": {}})
            pick = max(selection, key=lambda v: v["m"]["ndcg@10"])
            tt_res = get(pick["params"], {**on_test, **pick["extra"]})
            tt_label = f"Two-tower (best on {entry['label']} validation: {pick['label'].split(':')[0]})"
        else:
            tt_res, tt_label = get(entry["two_tower"]), "Two-tower"
        tt = _row(tt_label, tt_res)
        rows = [_row(b["label"], get(b["params"])) for b in entry["baselines"]] + [tt]
        others.append({"label": entry["label"], "rows": rows, "verdicts": _verdicts(tt, rows), "data": tt_res["data"],
                       "selection": selection, "recency": _recency_gain(rows)})
        if entry["two_tower"] == "auto":
            compared.append((entry["label"], entry["baselines"], pick["params"], pick["label"], pick["extra"]))

    protocol_tables = [_protocol_table(get, rcfg, name, *c, on_test=on_test)
                       for c in compared if c[2] and c[1] for name in rcfg["protocols"]]
    curves = {"reference config": main, **{e["label"]: get(e["params"]) for e in rcfg["fix_progression"]}}
    if best_params:
        curves["best two-tower"] = best
    figures = {"loss": _fig_loss(curves), "at_k": _fig_at_k(comparison), "ci": _fig_ci(comparison)}
    if rank_sweep:
        figures["rank"] = _fig_rank(rank_sweep)
    figs = save_figures(figures, out_md)

    targets = []
    for metric, t in rcfg["targets"].items():
        got = best_row["m"][metric]
        ref = main_row["m"][metric]
        targets.append({"metric": metric, "min": t["min"], "good": t["good"], "reference_config": ref,
                        "best": got, "status": "good" if got > t["good"] else ("min" if got > t["min"] else "below")})

    params_files = [ROOT / p for p in rcfg["runs"]] + [Path(rcfg["report_file"])]
    checks = {}
    for res in cache.values():
        for name, digest in res["data"].get("checksums", {}).items():
            checks[f"{res['data']['name']}/{name}"] = digest
    wall = {res["run"]: round(res["train"]["seconds"], 1) for res in cache.values()}
    devices = {res["run"]: res["train"].get("device", "cpu") for res in cache.values()}
    made = report_wall(res["_dir"] for res in cache.values())
    epoch_seconds = [r["seconds"] for r in main["train"].get("history", [])]
    speed = {"reference_train_seconds": main["train"]["seconds"],
             "reference_epochs": len(epoch_seconds), "reference_best_epoch": main["train"].get("best_epoch"),
             "reference_epoch_median_seconds": float(np.median(epoch_seconds)) if epoch_seconds else None,
             "reference_threads": main["config"]["train"]["threads"],
             "all_runs_train_seconds": float(sum(wall.values())), "n_runs": len(wall), "fresh_runs": made["fresh_runs"],
             "rank_seconds": main["splits"]["test"]["rank_seconds"], "rank_users": main["splits"]["test"]["n_users"],
             "report_wall_seconds": made["report_wall_seconds"],
             "targets": rcfg["speed_targets"]}
    context = {
        "title": rcfg["title"], "main": main, "main_row": main_row, "best": best, "best_row": best_row,
        "has_best": bool(best_params), "best_params": best_params, "fix": fix, "baselines": base_rows, "comparison": comparison,
        "variants": variants, "paired": paired, "best_base": best_base, "verdicts": verdicts,
        "main_losses": main_losses, "others": others, "targets": targets, "val_vs_test": val_vs_test, "recency": recency,
        "tests": _test_summary(ROOT / rcfg["test_results"]), "smoke": is_smoke_render(ov),
        "figs": figs, "cmp_metrics": CMP_METRICS,
        "ks": [5, 10, 20, 50, 100], "speed": speed, "best_variant": best_variant,
        "rank_sweep": rank_sweep, "sequence_rows": sequence_rows, "best_pooled": best_pooled, "gap": gap,
        "loss_sweep": loss_sweep, "decomposition": decomposition,
        "protocol_tables": protocol_tables, "tuning": _tuning_tables(rcfg["tuning"]),
        "seed_flips": _seed_flips(verdicts, protocol_tables, best_params, main["config"]["data"]["dataset"],
                                  best["config"]["seed"]) if best_params else [],
        "tuned_baselines": [r["label"] for r in base_rows
                            if rcfg["tuning"] and Path(r["params"]).parent == Path(rcfg["tuning"])],
        "seeds": rcfg["seeds"],
        "cold": {split: _cold_share(best["splits"][split]) for split in ("val", "test") if split in best["splits"]},
    }
    prov = provenance(params_files, checks, wall)
    prov["run_devices"] = devices
    prov["report_seconds"] = round(time.perf_counter() - t0, 1)
    context["provenance"] = prov
    md = render("evaluation_report.md.j2", context)
    companion = {k: v for k, v in context.items() if k not in ("main", "best")}
    companion["verdicts_by_protocol"] = [v for t in protocol_tables for v in t["verdicts"]]
    companion["runs"] = {r["run"]: {kk: vv for kk, vv in r.items() if not kk.startswith("_")}
                         for r in cache.values()}
    atomic_write_json(out_md.with_suffix(".json"), json.loads(json.dumps(companion, default=float)))
    atomic_write_text(out_md, md)
    prune_figures(out_md, figs)
    return {"report": str(out_md), "seconds": prov["report_seconds"]}


# -- a report on a user's dataset (params/<name>/report.yaml with a data section) ----------------
# The models a dataset report runs when its file names none: every baseline and the standard
# two-tower variants (the variant is chosen on validation NDCG@10). Each is a params file of
# this study whose data section the report's replaces; the grids are widened where the
# MovieLens ones assume its size (EASE's l2 scales with the interaction counts).
DATASET_MODELS = {
    "random": ("Random", "params/movielens/baseline_random.yaml", {}),
    "popularity": ("Popularity", "params/movielens/baseline_popularity.yaml", {}),
    "recent_popularity": ("Recent popularity", "params/movielens/baseline_recent_popularity.yaml",
                          {"model": {"select_on_validation": {"window_days": [7.0, 14.0, 30.0, 60.0, 120.0, 365.0]}}}),
    "itemknn": ("ItemKNN (cosine)", "params/movielens/baseline_itemknn.yaml", {}),
    "ease": ("EASE^R", "params/movielens/baseline_ease.yaml",
             {"model": {"select_on_validation": {"l2": [10.0, 100.0, 1000.0, 10000.0, 100000.0]}}}),
    "bpr": ("BPR-MF (implicit)", "params/movielens/baseline_bpr.yaml", {}),
    "ials": ("iALS (implicit)", "params/movielens/baseline_ials.yaml", {}),
    "two_tower_u0": ("u0: features + IDs + recency history, user-batched full softmax",
                     "params/movielens/tt_u0_ids_history_fullsoftmax.yaml", {}),
    "two_tower_u1": ("u1: u0 without history (features + IDs)", "params/movielens/tt_u1_no_history.yaml", {}),
    "two_tower_u3": ("u3: u0 with a plain-mean history", "params/movielens/tt_u3_history_mean.yaml", {}),
    "two_tower_u7": ("u7: u0, 64-d embeddings", "params/movielens/tt_u7_dim64.yaml", {}),
    "two_tower_u11": ("u11: u7, history half-life 7 days", "params/movielens/tt_u11_half_life_7d.yaml", {}),
    # Without item features the MLP towers above can sit on a plateau near popularity for
    # epochs (measured on the scale benchmark's generated log); the linear history tower at
    # temperature 0.05 leaves it in two and is within 0.001 of the linear tower at
    # temperature 1 on ML-1M validation: validation chooses among all of them.
    "two_tower_l64t": ("l64t: linear history tower, 64-d, temperature 0.05",
                       "params/movielens/tt_l64t_linear_dim64_temperature005.yaml", {}),
}
DATASET_REPORT_DEFAULTS = {
    "output": "",          # default reports/<the report file's folder name>.md
    "title": "",           # default "Two-tower retrieval on <folder name>"
    "bootstrap": 1000,
    "latency": True,       # serving latency of the chosen two-tower
}
DATASET_FILE_KEYS = ("study", "data", "evaluate", "models", "report", "seed")
QUERY_HISTORY = {"train": "queries read their training history (reference)",
                 "train+val": "queries read their history through validation (no retraining)"}


def dataset_report_config(raw: dict, path: Path) -> dict:
    """The config of a report on one dataset: ``data`` (the params data section every model
    runs on), optional ``evaluate`` (e.g. the test-time protocol: ``query_history``,
    ``refit``; for every model alike), ``models`` (names of ``DATASET_MODELS`` or
    ``{label, params}`` run files), ``report`` (output, title, bootstrap, latency), ``seed``."""
    if raw.get("evaluate") is not None and not isinstance(raw["evaluate"], dict):
        raise ParamsError(f"{path}: 'evaluate' must be a mapping (a run's evaluate section), got {raw['evaluate']!r}")
    unknown = set(raw) - set(DATASET_FILE_KEYS)
    if unknown:
        raise ParamsError(f"{path}: unknown top-level key(s) {sorted(unknown)}; allowed: {list(DATASET_FILE_KEYS)}")
    if not isinstance(raw["data"], dict):
        raise ParamsError(f"{path}: 'data' must be a mapping (a run's data section), got {raw['data']!r}")
    name = Path(path).parent.name
    rep = merge_checked(DATASET_REPORT_DEFAULTS, raw.get("report") or {}, "report")
    seed = raw.get("seed", 0)
    models = []
    for entry in raw.get("models") or list(DATASET_MODELS):
        if isinstance(entry, str):
            if entry not in DATASET_MODELS:
                close = difflib.get_close_matches(entry, list(DATASET_MODELS), n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise ParamsError(f"{path}: models: unknown model '{entry}'{hint}; known: {list(DATASET_MODELS)} "
                                  f"or {{label, params}} with a run file")
            label, params, extra = DATASET_MODELS[entry]
        elif isinstance(entry, dict) and set(entry) == {"label", "params"}:
            label, params, extra = entry["label"], entry["params"], {}
        else:
            raise ParamsError(f"{path}: models: each entry is a model name or {{label, params}}, got {entry!r}")
        overrides = deep_merge(extra, {"data": raw["data"], "evaluate": raw.get("evaluate") or {}, "seed": seed})
        models.append({"label": label, "params": params, "overrides": overrides})
    if len({m["label"] for m in models}) != len(models):
        raise ParamsError(f"{path}: models: two entries share one label")
    return {"kind": "dataset", "name": name, "output": rep["output"] or f"reports/{name}.md",
            "title": rep["title"] or f"Two-tower retrieval on {name}", "bootstrap": rep["bootstrap"],
            "latency": rep["latency"], "data": raw["data"], "models": models,
            "runs": [], "derived_runs": [(m["params"], m["overrides"]) for m in models]}


def _in_words(metric: str, tt: dict, base: dict, paired: dict) -> str:
    p = paired[metric]
    diff = f"{p['mean_diff']:+.4f} [{p['low']:+.4f}, {p['high']:+.4f}], p = {p['p_value']:.3f}"
    if p["high"] < 0:
        return (f"**{metric}: the two-tower loses** to {base['label']} ({tt['m'][metric]:.4f} vs "
                f"{base['m'][metric]:.4f}; paired difference {diff}): the whole 95% interval is below zero.")
    if p["low"] > 0:
        return (f"**{metric}: the two-tower wins** over {base['label']} ({tt['m'][metric]:.4f} vs "
                f"{base['m'][metric]:.4f}; paired difference {diff}): the whole 95% interval is above zero.")
    side = "above" if p["mean_diff"] > 0 else "below"
    return (f"**{metric}: within noise** of {base['label']} ({tt['m'][metric]:.4f} vs {base['m'][metric]:.4f}, "
            f"{side}; paired difference {diff}): the 95% interval contains zero, so neither is shown better.")


def _shown(path: str) -> str:
    """A data file as a report names it: relative to the repository when inside it."""
    p = Path(path)
    return str(p.relative_to(ROOT)) if p.is_absolute() and p.is_relative_to(ROOT) else path


def render_dataset_report(rcfg: dict) -> dict:
    t0 = time.perf_counter()
    ov = rcfg["run_overrides"]
    out_md = Path(rcfg["output"])
    out_md = out_md if out_md.is_absolute() else ROOT / out_md
    cache: dict[str, dict] = {}

    def get(entry: dict, extra: dict | None = None) -> dict:
        over = deep_merge(deep_merge(entry["overrides"], extra), ov)
        key = json.dumps([entry["params"], over], sort_keys=True, default=str)
        if key not in cache:
            cache[key] = _ensure(entry["params"], over)
        return cache[key]

    results = [(m, get(m)) for m in rcfg["models"]]
    baselines = [dict(_row(m["label"], res), hyperparameters=res["train"].get("hyperparameters"))
                 for m, res in results if res["config"]["model"]["kind"] != "two_tower"]
    variants = [{"label": m["label"], "entry": m, "m": res["splits"]["val"]["metrics"], "chosen": False,
                 "train_seconds": res["train"]["seconds"], "best_epoch": res["train"].get("best_epoch"),
                 "parameters": res["train"].get("parameters", {}).get("total")}
                for m, res in results if res["config"]["model"]["kind"] == "two_tower"]
    best = best_row = None
    if variants:
        pick = max(variants, key=lambda v: v["m"]["ndcg@10"])
        pick["chosen"] = True
        best = get(pick["entry"], {"evaluate": {"splits": ["val", "test"], "latency": rcfg["latency"]}})
        best_row = _row(f"Two-tower ({pick['label'].split(':')[0]}, chosen on validation)", best)
    comparison = baselines + ([best_row] if best_row else [])
    best_base = max(baselines, key=lambda r: r["m"]["ndcg@10"]) if baselines else None
    paired, words = {}, []
    if best_row and best_base:
        base_res = next(res for m, res in results if m["label"] == best_base["label"])
        paired = {m: _paired(best, base_res, m, rcfg["bootstrap"]) for m in CMP_METRICS}
        words = [_in_words(m, best_row, best_base, paired) for m in CMP_METRICS]
    figs = save_figures({"at_k": _fig_at_k(comparison), "ci": _fig_ci(comparison)} if comparison else {}, out_md)
    first = results[0][1]
    checks = {_shown(name): digest for res in cache.values() for name, digest in res["data"].get("checksums", {}).items()}
    wall = {res["run"]: round(res["train"]["seconds"], 1) for res in cache.values()}
    devices = {res["run"]: res["train"].get("device", "cpu") for res in cache.values()}
    e = first["config"]["evaluate"]
    protocol = "; ".join([first["data"]["protocol"], QUERY_HISTORY[e["query_history"]]]
                         + (["every model refit on train+val with what validation chose, then tested"] if e["refit"] else []))
    context = {"title": rcfg["title"], "name": rcfg["name"], "protocol": protocol,
               "data": first["data"], "data_params": first["config"]["data"],
               "baselines": baselines, "variants": variants, "best": best, "best_row": best_row,
               "comparison": comparison, "best_base": best_base, "paired": paired, "words": words,
               "verdicts": _verdicts(best_row, comparison) if best_row and baselines else [],
               "val_vs_test": _val_vs_test(comparison), "figs": figs, "cmp_metrics": CMP_METRICS,
               "smoke": is_smoke_render(ov), "ks": [5, 10, 20, 50, 100], "latency": (best or {}).get("latency")}
    prov = provenance([ROOT / m["params"] for m in rcfg["models"]] + [Path(rcfg["report_file"])], checks, wall)
    prov["run_devices"] = devices
    prov["report_seconds"] = round(time.perf_counter() - t0, 1)
    context["provenance"] = prov
    md = render("dataset_report.md.j2", context)
    companion = {k: v for k, v in context.items() if k not in ("best",)}
    companion["runs"] = {r["run"]: {kk: vv for kk, vv in r.items() if not kk.startswith("_")} for r in cache.values()}
    atomic_write_json(out_md.with_suffix(".json"), json.loads(json.dumps(companion, default=float)))
    atomic_write_text(out_md, md)
    prune_figures(out_md, figs)
    return {"report": str(out_md), "seconds": prov["report_seconds"]}
