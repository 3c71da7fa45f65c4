"""Work splitting across processes with accelerate (`accelerate launch` or `torchrun`).

Fit units (method, subject) and sampling batches are scheduled by their cost (`Shard.assign`: longest
first onto the least-loaded rank), metric rows split evenly; rank 0 aggregates and reports. Seeds are per
image and batches are cut before they are scheduled, so N processes produce the same store as one.
Without a launcher this is one process and nothing is initialised.
"""

from __future__ import annotations

import dataclasses
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
