"""Work splitting across processes with accelerate (`accelerate launch` or `torchrun`).

Fit jobs split by (method, subject), sample jobs by image; rank 0 aggregates and reports. Seeds are
per image, so N processes produce the same store as one. Without a launcher this is one process and
nothing is initialised.
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
        """This process's share (contiguous chunks, as accelerate's split_between_processes)."""
        if self._state is None:
            return list(items)
        with self._state.split_between_processes(list(items)) as mine:
            return list(mine)

    def barrier(self) -> None:
        self._barrier()


def current_shard() -> Shard:
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Shard()
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())  # without CUDA: gloo across CPU processes
    return Shard(state.process_index, state.num_processes, state.wait_for_everyone, state)
