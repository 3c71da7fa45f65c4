"""Work splitting across processes with accelerate (`accelerate launch` or `torchrun`).

Fit units (method, subject) and sampling batches are scheduled by their cost (`Shard.assign`: longest
first onto the least-loaded rank), metric rows split evenly; rank 0 aggregates and reports. Seeds are per
image and batches are cut before they are scheduled, so N processes produce the same store as one.
Without a launcher this is one process and nothing is initialised.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")


@dataclasses.dataclass
class Shard:
    rank: int = 0
    world: int = 1
    _barrier: Callable[[], None] = lambda: None
    _state: object | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def split(self, items: Sequence[T]) -> list[T]:
        """This process's share (contiguous chunks, as accelerate's split_between_processes): for items of
        equal cost (metric rows)."""
        if self._state is None:
            return list(items)
        with self._state.split_between_processes(list(items)) as mine:
            return list(mine)

    def assign(self, items: Sequence[T], costs: Sequence[float]) -> list[T]:
        """This process's share of items of unequal cost, in their original order (`balanced`)."""
        if self.world <= 1:
            return list(items)
        owner = balanced(costs, self.world)
        return [item for item, rank in zip(items, owner) if rank == self.rank]

    def assign_grouped(self, items: Sequence[T], costs: Sequence[float], groups: Sequence[object],
                       setup: dict[object, float]) -> list[T]:
        """This process's share of items that come in groups paying a setup once per process that works on them
        (sampling batches of one (method, subject): the fit loaded, the palette inverted), in their original order
        (`affine`)."""
        if self.world <= 1:
            return list(items)
        owner = affine(costs, groups, setup, self.world)
        return [item for item, rank in zip(items, owner) if rank == self.rank]

    def barrier(self) -> None:
        self._barrier()


def balanced(costs: Sequence[float], world: int) -> list[int]:
    """The rank of each item: longest first onto the least-loaded rank (Graham's LPT rule, a makespan within
    4/3 of the optimum), ties to the earlier item and the lower rank. Deterministic, so every process
    computes the same plan from the same list without talking to the others."""
    loads, owner = [0.0] * world, [0] * len(costs)
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        rank = min(range(world), key=lambda r: (loads[r], r))
        owner[i] = rank
        loads[rank] += costs[i]
    return owner


PIECES_PER_RANK = (1, 2, 4, 8, 16, 32)  # the cut rules tried: a group is cut when it exceeds 1/p of a rank's fair share


def affine(costs: Sequence[float], groups: Sequence[object], setup: dict[object, float], world: int) -> list[int]:
    """The rank of each item, keeping a group's items on one rank where balance allows. A group (e.g. one
    (method, subject)'s sampling batches) pays its setup (the fit loaded, the palette inverted) once on every rank
    that works on any of it, so plain LPT over single items, which scatters every group over every rank, makes
    each rank pay most groups' setups. Here a group stays whole unless its cost exceeds the fair share / p, and
    is then cut into contiguous pieces of about equal cost; pieces, each weighing its items plus its group's
    setup, are placed by `balanced` (LPT). Of the plans for each p in PIECES_PER_RANK and plain LPT over items,
    the one kept has the least busy busiest rank with setups counted (`grouped_loads`; ties to the fewer cuts),
    so it is never worse than LPT. Deterministic from the lists alone, like `balanced`; a group's items need not
    be contiguous in the list."""
    if world <= 1 or not costs:
        return [0] * len(costs)
    order: dict[object, list[int]] = {}
    for i, g in enumerate(groups):
        order.setdefault(g, []).append(i)
    total = sum(costs) + sum(setup.get(g, 0.0) for g in order)
    plans = []
    for p in PIECES_PER_RANK:
        cap = total / (world * p)
        pieces: list[list[int]] = []
        for idx in order.values():
            work = sum(costs[i] for i in idx)
            k = min(len(idx), max(1, math.ceil(work / cap))) if cap > 0 else 1
            pieces += _cut(idx, [costs[i] for i in idx], k)
        weights = [sum(costs[i] for i in piece) + setup.get(groups[piece[0]], 0.0) for piece in pieces]
        owner = [0] * len(costs)
        for piece, rank in zip(pieces, balanced(weights, world)):
            for i in piece:
                owner[i] = rank
        plans.append(owner)
    plans.append(balanced(costs, world))
    return min(plans, key=lambda owner: max(grouped_loads(owner, costs, groups, setup, world)))  # first of the best


def _cut(items: list[int], costs: list[float], k: int) -> list[list[int]]:
    """`items` in k contiguous, non-empty pieces of about equal cost: a piece ends before the item whose midpoint
    would pass the next multiple of total / k, or where the items left are just enough for the pieces left."""
    target, pieces, piece, acc = sum(costs) / k, [], [], 0.0
    for n, (item, cost) in enumerate(zip(items, costs)):
        piece.append(item)
        acc += cost
        left_items, left_pieces = len(items) - n - 1, k - len(pieces) - 1
        following = costs[n + 1] if left_items else 0.0
        if left_pieces > 0 and (acc + following / 2 >= target * (len(pieces) + 1) or left_items == left_pieces):
            pieces.append(piece)
            piece = []
    return pieces + ([piece] if piece else [])


def makespan(costs: Sequence[float], world: int) -> tuple[float, float]:
    """(the busiest rank's load under `balanced`, the ideal total / world): the schedule's quality."""
    loads = [0.0] * world
    for cost, rank in zip(costs, balanced(costs, world)):
        loads[rank] += cost
    return max(loads), sum(costs) / world


def current_shard() -> Shard:
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Shard()
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())  # without CUDA: gloo across CPU processes
    return Shard(state.process_index, state.num_processes, state.wait_for_everyone, state)


def grouped_loads(owner: Sequence[int], costs: Sequence[float], groups: Sequence[object], setup: dict[object, float],
                  world: int) -> list[float]:
    """Each rank's load under a plan: its items plus one setup per group it touches (what `affine` weighs)."""
    loads, touched = [0.0] * world, set()
    for rank, cost, g in zip(owner, costs, groups):
        loads[rank] += cost
        if (rank, g) not in touched:
            touched.add((rank, g))
            loads[rank] += setup.get(g, 0.0)
    return loads
