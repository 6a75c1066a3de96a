"""Which explanation do the measurements support? Decided here by comparing measured numbers
(paired bootstrap over the common evaluation queries), never typed into the report."""
from __future__ import annotations

import numpy as np

from .. import stats


def paired(hits_a: np.ndarray, hits_b: np.ndarray, n_boot: int, seed: int = 0) -> dict:
    """a - b on per-query hit indicators; ``clear_gain`` / ``clear_loss`` when the 95% CI
    excludes zero."""
    res = stats.paired_bootstrap(hits_a.astype(float), hits_b.astype(float), n_boot=n_boot, seed=seed)
    res["a"] = float(np.mean(hits_a))
    res["b"] = float(np.mean(hits_b))
    res["clear_gain"] = bool(res["low"] > 0)
    res["clear_loss"] = bool(res["high"] < 0)
    return res


def hits(ranks: np.ndarray, k: int) -> np.ndarray:
    return ((ranks > 0) & (ranks <= k)).astype(float)


def verdict(c: dict, pairs: dict | None = None) -> dict:
    """``c`` holds paired comparisons (see ``paired``) named:
    - ``updates_vs_faithful_v1/_v2``: same pairs, many more updates (higher lr, no accumulation)
    - ``all_vs_v2_faithful``: all windows vs v2's pairs, reference optimiser (few updates)
    - ``all_vs_v2_updates``: all windows vs v2's pairs, enough updates
    - ``best_learned_vs_heuristic``: the best learned tower against the exp-weighted heuristic
    - ``residual_vs_heuristic_v1/_v2/_all``
    - ``faithful_v1/_v2_vs_heuristic``
    Returns the explanation the numbers support and the reasons, as data."""
    pairs = pairs or {"v1": 138, "v2": 1247, "all": None}
    same = f"{pairs['v1']:,} / {pairs['v2']:,}"
    more = (f"{pairs['all'] / pairs['v2']:.0f}x more pairs ({pairs['all']:,})" if pairs.get("all")
            else "more pairs")
    upd = [c[k]["clear_gain"] for k in ("updates_vs_faithful_v1", "updates_vs_faithful_v2")]
    data_faithful = c["all_vs_v2_faithful"]["clear_gain"]
    data_updates = c["all_vs_v2_updates"]["clear_gain"]
    reproduced = all(c[k]["clear_loss"] for k in ("faithful_v1_vs_heuristic", "faithful_v2_vs_heuristic"))
    if any(upd) and not data_faithful:
        cause = "updates"
        text = (f"too few optimizer updates, not too few pairs: with the same {same} pairs, more updates "
                f"clearly raise Recall@500, while {more} under the reference's optimiser settings do not")
    elif any(upd) and data_faithful:
        cause = "both"
        text = (f"both: more updates on the same {same} pairs and {more} under the reference's optimiser "
                "each clearly raise Recall@500")
    elif data_faithful:
        cause = "pairs"
        text = (f"too few pairs: more updates on the same {same} pairs do not clearly help, {more} do")
    else:
        cause = "neither"
        text = ("neither more updates nor more pairs clearly raise Recall@500 of the reference tower on this bank")
    best = c["best_learned_vs_heuristic"]
    heuristic_beaten = best["clear_gain"]
    heuristic_loses = best["clear_loss"]
    residual = {k: c[k] for k in c if k.startswith("residual_vs_heuristic")}
    return {
        "cause": cause, "statement": text, "reproduced_failure": reproduced,
        "updates_help": {"v1": upd[0], "v2": upd[1]},
        "pairs_help_reference_optimiser": data_faithful, "pairs_help_with_enough_updates": data_updates,
        "learned_beats_heuristic": heuristic_beaten, "learned_loses_to_heuristic": heuristic_loses,
        "residual_beats_heuristic": {k: v["clear_gain"] for k, v in residual.items()},
        "residual_loses_to_heuristic": {k: v["clear_loss"] for k, v in residual.items()},
    }
