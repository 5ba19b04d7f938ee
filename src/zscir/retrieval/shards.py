"""Sharding image encoding (and OTI) over accelerate's process group (`accelerate launch`, torchrun, multi-node).

Every process scans the same finished chunks, agrees on the same list of unfinished chunks, encodes
its share of them (`todo[rank::world]`), writes each finished chunk atomically, and waits for the
others; the main process then reads every chunk and goes on alone (merge, evaluation, index build).
Each image is encoded in the same batches as in one process, so the merged result is bit-identical
to a one-process run whatever the number of processes (tested). A killed process leaves its finished
chunks; the rerun hands out only the chunks that are still missing.

Launch (one machine, 8 GPUs; two machines: run the same line on each with its --machine_rank):

    accelerate launch --num_processes 8 -m zscir.cli index --images DIR --out INDEX --device cuda
    accelerate launch --num_machines 2 --machine_rank 0 --main_process_ip HOST --main_process_port 29500 \\
        --num_processes 16 -m zscir.cli evaluate ... --device cuda

All processes must see the same files (a shared filesystem for the cache / index folder).
"""

from __future__ import annotations

import atexit
import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass

from zscir.errors import require

LAUNCH_VARIABLES = ("WORLD_SIZE", "RANK", "LOCAL_RANK")  # set by accelerate launch / torchrun


@dataclass
class ProcessGroup:
    """Who this process is among the encoders.

    Attributes:
        rank: this process's index (0 = main).
        world: number of processes.
        state: the `accelerate.PartialState` of a multi-process run (None for one process).
    """

    rank: int = 0
    world: int = 1
    state: object = None

    @property
    def is_main(self) -> bool:
        """True on the process that merges and writes the final outputs."""
        return self.rank == 0

    def share(self, todo: Sequence):
        """This process's part of an agreed list of work items (round robin: balanced on a rerun too)."""
        return list(todo)[self.rank :: self.world]

    def gather(self, obj) -> list:
        """[obj of rank 0, obj of rank 1, ...] on every process (picklable objects; a barrier too)."""
        if self.world == 1:
            return [obj]
        from accelerate.utils import gather_object

        return gather_object([obj])

    def barrier(self) -> None:
        """Wait until every process got here (no-op for one process)."""
        if self.world > 1:
            self.state.wait_for_everyone()


SINGLE = ProcessGroup()


def launched_processes() -> int:
    """WORLD_SIZE of the launcher's environment (1 when not launched by accelerate / torchrun)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def launched_rank() -> int:
    """RANK of the launcher's environment (0 when not launched): lets a command write only on the main process."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def process_group(device: str | None = "cpu") -> tuple[ProcessGroup, str]:
    """The process group of this run and the device this process should use.

    Args:
        device: the requested device ("cpu", "cuda", "cuda:1", ...); under several processes a bare
            "cuda" becomes this process's GPU (`cuda:LOCAL_RANK`).
    Returns:
        (ProcessGroup, device). One process (not launched): (SINGLE, device) without importing accelerate.
    """
    device = device or "cpu"
    if launched_processes() == 1:
        return SINGLE, device
    accelerate = require("accelerate", "train")
    # cpu=True: gloo over CPU processes when there is no GPU (tests, CPU clusters)
    tear_down_process_group_at_exit()
    state = accelerate.PartialState(cpu=not device.startswith("cuda"))
    if device == "cuda":
        device = str(state.device)
    return ProcessGroup(state.process_index, state.num_processes, state), device


@functools.cache  # once per process
def tear_down_process_group_at_exit() -> None:
    """Make the process group that is about to be created end before the interpreter does.

    Call it just before anything that initialises torch.distributed (accelerate's state). At exit the group
    is destroyed while Python can still run. Without that, a gloo worker thread may still hold the last
    collective's tensors when the interpreter finalises; freeing them takes the GIL, a finalising interpreter
    ends the thread instead, and the process aborts: SIGABRT, "terminate called without an active
    exception" (pytorch/pytorch#190489).

    torch._dynamo is imported first, because imported after the group (as transformers imports it to load a
    model) its tables keep 10 references to the group. Then destroying the group does not end its threads.
    Measured:
    - in a minimal two-rank repro, 4 of 10 launches aborted, and 0 of 20 with the teardown;
    - with 10 extra references, 7 of 20 aborted even with the teardown.
    """
    import torch._dynamo  # noqa: F401

    atexit.register(_destroy_process_group)


def _destroy_process_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
