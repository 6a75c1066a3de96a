"""Heuristic queries, the residual tower at initialisation, and the update count."""
import pytest
import torch
import torch.nn.functional as F

from lib.wikiseq.towers import GRUPoolQuery, ResidualQuery, exp_weights, heuristic_query
from lib.wikiseq.train import epochs_to_run, updates_per_epoch

pytestmark = pytest.mark.unit


def test_exp_weights_proportional_to_decay_power():
    w = exp_weights(6, 0.8)
    t = torch.arange(1, 7, dtype=torch.float32)
    expected = 0.8 ** (6 - t)
    assert torch.allclose(w / w[-1], expected)   # the last chunk weighs most
    assert torch.isclose(w.sum(), torch.tensor(1.0))


def test_heuristics():
    g = torch.Generator().manual_seed(0)
    ctx = torch.randn(4, 9, 5, generator=g)
    assert torch.allclose(heuristic_query(ctx, "last"), F.normalize(ctx[:, -1], dim=-1))
    assert torch.allclose(heuristic_query(ctx, "mean"), F.normalize(ctx.mean(1), dim=-1))
    manual = sum(0.9 ** (9 - t) * ctx[:, t - 1] for t in range(1, 10))
    assert torch.allclose(heuristic_query(ctx, "exp_weighted", 0.9), F.normalize(manual, dim=-1), atol=1e-6)
    # decay 1 is the mean; a tiny decay is (almost) the last chunk
    assert torch.allclose(heuristic_query(ctx, "exp_weighted", 1.0), heuristic_query(ctx, "mean"), atol=1e-6)
    with pytest.raises(ValueError):
        heuristic_query(ctx, "median")


@pytest.mark.parametrize("decay", [0.9, 0.5])
def test_residual_tower_equals_heuristic_at_init(decay):
    torch.manual_seed(0)
    tower = ResidualQuery(16, hidden=8, decay=decay)
    ctx = torch.randn(5, 12, 16)
    assert torch.allclose(tower(ctx), heuristic_query(ctx, "exp_weighted", decay), atol=1e-6)
    # and it can move away: one step changes the output
    opt = torch.optim.AdamW(tower.parameters(), lr=1e-2)
    tower(ctx).sum().backward()
    opt.step()
    assert not torch.allclose(tower(ctx), heuristic_query(ctx, "exp_weighted", decay), atol=1e-4)


def test_gru_tower_shape_and_norm():
    torch.manual_seed(0)
    q = GRUPoolQuery(16, hidden=8)(torch.randn(3, 7, 16))
    assert q.shape == (3, 16)
    assert torch.allclose(q.norm(dim=-1), torch.ones(3), atol=1e-5)


@pytest.mark.parametrize("pairs,batch,accum,expected", [
    (138, 32, 8, 1),      # v1: 5 micro-batches -> 1 update per epoch (20 in 20 epochs)
    (1247, 32, 8, 5),     # v2: 39 micro-batches -> 5 per epoch (40 in 8 epochs)
    (1247, 32, 1, 39),
    (256, 32, 8, 1),
    (257, 32, 8, 2),
])
def test_update_count(pairs, batch, accum, expected):
    assert updates_per_epoch(pairs, batch, accum) == expected


@pytest.mark.parametrize("max_epochs,cap,expected", [(8, None, 8), (8, 2, 2), (1, 2, 1), (0, None, 0), (5, 0, 0)])
def test_epochs_run_is_max_epochs_capped_by_epoch_cap(max_epochs, cap, expected):
    assert epochs_to_run({"max_epochs": max_epochs, "epoch_cap": cap}) == expected


def _cmp(mean_diff, low, high):
    return {"mean_diff": mean_diff, "low": low, "high": high, "a": 0.0, "b": 0.0,
            "clear_gain": low > 0, "clear_loss": high < 0}


def test_verdict_is_decided_by_the_numbers():
    from lib.wikiseq.analysis import verdict
    base = {k: _cmp(-0.5, -0.6, -0.4) for k in ("best_learned_vs_heuristic", "faithful_v1_vs_heuristic",
                                                 "faithful_v2_vs_heuristic", "residual_vs_heuristic_v1")}
    updates = {**base, "updates_vs_faithful_v1": _cmp(0.15, 0.1, 0.2), "updates_vs_faithful_v2": _cmp(0.3, 0.25, 0.35),
               "all_vs_v2_faithful": _cmp(0.01, -0.01, 0.03), "all_vs_v2_updates": _cmp(0.05, 0.02, 0.08)}
    v = verdict(updates)
    assert v["cause"] == "updates" and v["reproduced_failure"] and v["learned_loses_to_heuristic"]
    assert "+30.0 points" in v["statement"]
    pairs = {**updates, "updates_vs_faithful_v1": _cmp(0.0, -0.01, 0.01), "updates_vs_faithful_v2": _cmp(0.0, -0.01, 0.01),
             "all_vs_v2_faithful": _cmp(0.2, 0.15, 0.25)}
    assert verdict(pairs)["cause"] == "pairs"
    both = {**updates, "all_vs_v2_faithful": _cmp(0.2, 0.15, 0.25)}
    assert verdict(both)["cause"] == "both"
    small_pair_effect = {**updates, "all_vs_v2_faithful": _cmp(0.02, 0.01, 0.03)}   # clear but 15x smaller
    assert verdict(small_pair_effect)["cause"] == "updates"
    neither = {**pairs, "all_vs_v2_faithful": _cmp(0.0, -0.01, 0.01)}
    assert verdict(neither)["cause"] == "neither"
