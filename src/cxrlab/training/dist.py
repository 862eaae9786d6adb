"""Data-parallel helpers: one process per device, gloo on CPU, NCCL on GPUs.

`cxrlab train --devices N` spawns N local processes; torchrun (and SLURM through torchrun) sets
RANK/WORLD_SIZE/MASTER_ADDR itself, and the trainer joins that group instead.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

STORE_ENV = "CXRLAB_DIST_STORE"  # the rendezvous file of a `--devices N` run (set by `spawn`)


@dataclass
class DistContext:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def sum(self, *values: float) -> list[float]:
        """Sum numbers over all processes (identity when single-process)."""
        if not self.active:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t)
        return t.tolist()


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def init_from_env(device_type: str) -> DistContext:
    """Join the process group described by the environment (torchrun, or our own spawn)."""
    if not launched_by_torchrun():
        return DistContext()
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        store_file = os.environ.get(STORE_ENV)
        if store_file:  # our own spawn: a file rendezvous, no listening socket (torchrun's TCP store binds *:PORT)
            dist.init_process_group(backend, init_method=f"file://{store_file}", rank=int(os.environ["RANK"]),
                                    world_size=int(os.environ["WORLD_SIZE"]))
        else:
            dist.init_process_group(backend)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device_type == "cuda":
        torch.cuda.set_device(local)
    return DistContext(dist.get_rank(), dist.get_world_size(), local)


def _worker(rank: int, world: int, store_file: str, fn, args) -> None:
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world), STORE_ENV: store_file})
    # the processes talk over loopback only: gloo's and NCCL's own sockets stay on this machine
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    os.environ.setdefault("NCCL_SOCKET_IFNAME", "lo")
    try:
        fn(*args)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def spawn(fn, world: int, *args) -> None:
    """Run fn(*args) in `world` local processes that form one process group. They meet through a
    file in a private temporary folder, so a single-machine run opens no port to the network."""
    import tempfile

    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory(prefix="cxrlab-ddp-") as tmp:
        mp.spawn(_worker, args=(world, os.path.join(tmp, "store"), fn, args), nprocs=world, join=True)
