"""Which explanation do the measurements support? Decided here by comparing measured numbers
(paired bootstrap over the common evaluation queries), never typed into the report."""
from __future__ import annotations

import numpy as np

from ..core import stats


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


def verdict(c: dict, info: dict | None = None) -> dict:
    """``c`` holds paired comparisons (see ``paired``) named:
    - ``updates_vs_faithful_v1/_v2``: same pairs, many more updates (higher lr, no accumulation)
    - ``all_vs_v2_faithful``: all windows vs v2's pairs, reference optimiser (few updates)
    - ``all_vs_v2_updates``: all windows vs v2's pairs, enough updates
    - ``best_learned_vs_heuristic``: the best learned tower against the exp-weighted heuristic
    - ``residual_vs_heuristic_v1/_v2/_all``
    - ``faithful_v1/_v2_vs_heuristic``
    ``info[role] = {"pairs": n, "updates": n}`` for v1/v2/all _faithful and _updates.
    Returns the explanation the numbers support, with the numbers, as data.

    The pair effect under the reference optimiser is confounded with updates (more pairs at
    a fixed accumulation also mean more updates), so "updates" is the verdict when the
    same-pairs update effect is clear and at least 3x the pair effect."""
    if info is None:
        info = {f"{v}_{o}": {"pairs": p, "updates": u} for v, p, u0, u1 in
                (("v1", 138, 20, 150), ("v2", 1247, 40, 312), ("all", 14309, 56, 448))
                for o, u in (("faithful", u0), ("updates", u1))}
    pts = lambda x: 100.0 * x  # noqa: E731
    upd = [c[k]["clear_gain"] for k in ("updates_vs_faithful_v1", "updates_vs_faithful_v2")]
    upd_gain = max(c["updates_vs_faithful_v1"]["mean_diff"], c["updates_vs_faithful_v2"]["mean_diff"])
    pair_gain = c["all_vs_v2_faithful"]["mean_diff"]
    data_faithful = c["all_vs_v2_faithful"]["clear_gain"]
    data_updates = c["all_vs_v2_updates"]["clear_gain"]
    reproduced = all(c[k]["clear_loss"] for k in ("faithful_v1_vs_heuristic", "faithful_v2_vs_heuristic"))
    f2, u2, fa = info["v2_faithful"], info["v2_updates"], info["all_faithful"]
    ratio = fa["pairs"] / max(1, f2["pairs"])
    upd_txt = (f"on the same {f2['pairs']:,} pairs, {u2['updates']:,} instead of {f2['updates']:,} optimizer updates "
               f"change Recall@500 by {pts(c['updates_vs_faithful_v2']['mean_diff']):+.1f} points "
               f"(v1's {info['v1_faithful']['pairs']:,} pairs: {pts(c['updates_vs_faithful_v1']['mean_diff']):+.1f} points "
               f"with {info['v1_updates']['updates']:,} instead of {info['v1_faithful']['updates']:,} updates)")
    pair_txt = (f"{ratio:.1f}x more pairs ({fa['pairs']:,}) under the reference's optimiser change it by "
                f"{pts(pair_gain):+.1f} points ({fa['updates']:,} updates)")
    if any(upd) and (not data_faithful or upd_gain >= 3 * max(pair_gain, 0.0)):
        cause = "updates"
        text = f"too few optimizer updates, not too few pairs: {upd_txt}, while {pair_txt}"
    elif any(upd) and data_faithful:
        cause = "both"
        text = f"both the update count and the pair count: {upd_txt}; {pair_txt}"
    elif data_faithful:
        cause = "pairs"
        text = f"too few pairs: {pair_txt}, while {upd_txt}"
    else:
        cause = "neither"
        text = f"neither explanation: {upd_txt}; {pair_txt}"
    best = c["best_learned_vs_heuristic"]
    residual = {k: c[k] for k in c if k.startswith("residual_vs_heuristic")}
    return {
        "cause": cause, "statement": text, "reproduced_failure": reproduced,
        "updates_help": {"v1": upd[0], "v2": upd[1]}, "update_gain": upd_gain, "pair_gain": pair_gain,
        "pairs_help_reference_optimiser": data_faithful, "pairs_help_with_enough_updates": data_updates,
        "learned_beats_heuristic": best["clear_gain"], "learned_loses_to_heuristic": best["clear_loss"],
        "residual_beats_heuristic": {k: v["clear_gain"] for k, v in residual.items()},
        "residual_loses_to_heuristic": {k: v["clear_loss"] for k, v in residual.items()},
    }
