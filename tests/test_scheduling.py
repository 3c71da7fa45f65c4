"""Sharding that shares (issue 17): fit units and sampling batches are scheduled by cost, longest first onto
the least-loaded rank, the same plan on every process."""

from __future__ import annotations

import itertools
import random

import pytest

from persobench.core.config import load_config
from persobench.harness.distributed import Shard, _cut, affine, balanced, grouped_loads, makespan
from persobench.harness.worklist import batch_seconds, fit_seconds, setup_seconds, unit_table


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


@pytest.mark.parametrize("guidance", ["none", "pick-and-draw"])
def test_a_guided_batch_weighs_its_ratio(guidance):
    cfg = load_config(None, ["sampler.steps=10"])
    factor = 1.0 if guidance == "none" else unit_table()["guided_factor"]
    assert batch_seconds(cfg, 4, guidance) == pytest.approx(4 * batch_seconds(cfg, 1, "none") * factor)


def test_batches_of_a_one_batch_subject_spread_across_ranks():
    """Each (method, subject, guidance) had its own contiguous split, so a subject with one batch always sampled
    on rank 0; scheduled over the point's global list, one-batch groups alternate between ranks."""
    batches = [f"{m}/{s}" for m in ("vanilla", "ti") for s in ("s1", "s2", "s3", "s4")]
    shares = [Shard(r, 2).assign(batches, [1.0] * len(batches)) for r in range(2)]
    assert [len(s) for s in shares] == [4, 4]


def _plan(n_groups: int, per_group: int, world: int, setup: float = 1.0, cost: float = 1.0):
    groups = [g for g in range(n_groups) for _ in range(per_group)]
    costs = [cost] * len(groups)
    return groups, costs, {g: setup for g in range(n_groups)}, affine(costs, groups, {g: setup for g in range(n_groups)}, world)


def test_a_groups_batches_stay_on_one_rank_when_there_are_enough_groups():
    """Plain LPT over batches scatters each (method, subject)'s batches, so every rank loads most fits and inverts
    most palettes; with many groups per rank each group is sampled by one rank, and the load is even."""
    groups, costs, setup, owner = _plan(n_groups=16, per_group=5, world=4)
    assert all(len({r for r, g in zip(owner, groups) if g == k}) == 1 for k in setup)
    loads = grouped_loads(owner, costs, groups, setup, 4)
    assert max(loads) == min(loads) == (16 * 5 + 16) / 4
    scattered = grouped_loads(balanced(costs, 4), costs, groups, setup, 4)
    assert max(scattered) > max(loads)  # the old plan paid setups on every rank it touched


def test_a_group_larger_than_a_ranks_share_is_cut_and_shared():
    groups, costs, setup, owner = _plan(n_groups=1, per_group=12, world=2)
    assert sorted(owner) == [0] * 6 + [1] * 6
    assert grouped_loads(owner, costs, groups, setup, 2) == [7.0, 7.0]  # each rank pays the group's setup once


@pytest.mark.parametrize("costs, k", [([1.0, 2.0], 2), ([1, 1, 1, 5], 4), ([5, 1, 1, 1], 2), ([1.0] * 12, 4), ([0, 0, 0], 2)])
def test_a_group_is_cut_into_k_contiguous_non_empty_pieces_of_about_equal_cost(costs, k):
    pieces = _cut(list(range(len(costs))), costs, k)
    assert len(pieces) == k and all(pieces) and sum(pieces, []) == list(range(len(costs)))
    if len(set(costs)) == 1 and costs[0]:
        assert {len(p) for p in pieces} == {len(costs) // k}


def test_the_grouped_plan_is_never_worse_than_lpt_over_items():
    rng = random.Random(5)
    for _ in range(300):
        n, world = rng.randint(1, 40), rng.randint(2, 9)
        groups = sorted(rng.randint(0, 8) for _ in range(n))
        costs = [rng.choice([0.5, 1.0, 1.74, 3.0]) for _ in range(n)]
        setup = {g: rng.uniform(0, 4) for g in set(groups)}
        plan = max(grouped_loads(affine(costs, groups, setup, world), costs, groups, setup, world))
        assert plan <= max(grouped_loads(balanced(costs, world), costs, groups, setup, world)) + 1e-9


def test_the_grouped_plan_keeps_order_and_covers_everything():
    rng = random.Random(3)
    groups = [g for g in range(7) for _ in range(rng.randint(1, 9))]
    costs = [rng.uniform(0.5, 3.0) for _ in groups]
    setup = {g: rng.uniform(0, 2) for g in range(7)}
    items = list(range(len(groups)))
    shares = [Shard(r, 3).assign_grouped(items, costs, groups, setup) for r in range(3)]
    assert sorted(itertools.chain(*shares)) == items and all(s == sorted(s) for s in shares)


def test_a_guided_runs_setup_counts_its_inversion():
    plain, guided = load_config(None, ["guidance.name=none"]), load_config(None, ["guidance.name=pick-and-draw"])
    assert setup_seconds(guided) > setup_seconds(plain) > 0
    off = load_config(None, ["guidance.name=pick-and-draw", "guidance.appearance.enabled=false"])
    assert setup_seconds(off) == setup_seconds(plain)  # no palette term, no inversion
    null_text = load_config(None, ["guidance.name=pick-and-draw", "guidance.inversion=null_text"])
    assert setup_seconds(null_text) > setup_seconds(guided)
