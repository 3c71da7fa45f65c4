"""Sharding that shares (issue 17): fit units and sampling batches are scheduled by cost, longest first onto
the least-loaded rank, the same plan on every process."""

from __future__ import annotations

import itertools
import random

import pytest

from persobench.core.config import load_config
from persobench.harness.distributed import Shard, makespan
from persobench.harness.worklist import batch_seconds, fit_seconds


def test_method_major_fits_no_longer_land_on_one_rank():
    """Units are method-major: [vanilla s1, vanilla s2, TI s1, TI s2]. Contiguous chunks gave rank 1 both TI
    fits and rank 0 the free vanilla ones; by cost, each rank gets one TI fit."""
    units = ["vanilla/s1", "vanilla/s2", "ti/s1", "ti/s2"]
    costs = [fit_seconds("vanilla-sd", {}), fit_seconds("vanilla-sd", {}),
             fit_seconds("textual-inversion", {}), fit_seconds("textual-inversion", {})]
    assert costs[2] > 10 * costs[0]  # a TI fit is declared far costlier than a vanilla "fit"
    shares = [Shard(rank, 2).assign(units, costs) for rank in range(2)]
    assert sorted(u for share in shares for u in share) == sorted(units)  # every unit exactly once
    assert all(sum(u.startswith("ti/") for u in share) == 1 for share in shares), shares
    # the old rule, for contrast: contiguous halves
    assert units[2:] == ["ti/s1", "ti/s2"]


def test_the_plan_is_deterministic_and_keeps_order():
    costs = [3.0, 1.0, 2.0, 2.0, 5.0, 1.0]
    items = list("abcdef")
    first = [Shard(r, 3).assign(items, costs) for r in range(3)]
    again = [Shard(r, 3).assign(items, costs) for r in range(3)]
    assert first == again
    for share in first:
        assert share == sorted(share, key=items.index)  # a rank's items in the list's order
    assert Shard(0, 1).assign(items, costs) == items


def _optimum(costs: list[float], world: int) -> float:
    best = float("inf")
    for owner in itertools.product(range(world), repeat=len(costs)):
        loads = [0.0] * world
        for c, r in zip(costs, owner):
            loads[r] += c
        best = min(best, max(loads))
    return best


def test_lpt_is_within_four_thirds_of_the_optimum():
    rng = random.Random(0)
    worst = 0.0
    for _ in range(60):
        world, n = rng.choice([2, 3]), rng.randint(2, 8)
        costs = [rng.choice([1.0, 2.0, 3.0, 7.0, 11.0]) * rng.uniform(0.5, 1.5) for _ in range(n)]
        got, _ = makespan(costs, world)
        worst = max(worst, got / _optimum(costs, world))
    assert worst <= 4 / 3 - 1 / 9 + 1e-9  # Graham's bound for LPT at world <= 3: 4/3 - 1/(3*world)


@pytest.mark.parametrize("guidance, factor", [("none", 1.0), ("pick-and-draw", 2.2)])
def test_a_guided_batch_weighs_its_ratio(guidance, factor):
    cfg = load_config(None, ["sampler.steps=10"])
    assert batch_seconds(cfg, 4, guidance) == pytest.approx(4 * batch_seconds(cfg, 1, "none") * factor)


def test_batches_of_a_one_batch_subject_spread_across_ranks():
    """Each (method, subject, guidance) had its own contiguous split, so a subject with one batch always sampled
    on rank 0; scheduled over the point's global list, one-batch groups alternate between ranks."""
    batches = [f"{m}/{s}" for m in ("vanilla", "ti") for s in ("s1", "s2", "s3", "s4")]
    shares = [Shard(r, 2).assign(batches, [1.0] * len(batches)) for r in range(2)]
    assert [len(s) for s in shares] == [4, 4]
