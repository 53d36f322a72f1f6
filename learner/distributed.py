"""The process group of the learner's ranks: torch.distributed over env:// (gloo on CPU, NCCL on GPU), which
DeepSpeed requires even for one rank, and the free ports its rendezvous (and the NCCL weight-sync group that
`learner.actor` opens) listen on."""

from __future__ import annotations

import os
import socket

import torch


def free_port() -> int:
    """A TCP port free on this host now (the OS picks it): a rendezvous port for a process group."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_process_group(rank: int = 0, world_size: int = 1, master_addr: str = "127.0.0.1",
                       master_port: int | None = None) -> None:
    """torch.distributed for this learner rank (env:// rendezvous; DeepSpeed requires a process group).
    The ranks of one learner are separate processes (Ray actors) joining the same master."""
    import deepspeed

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), MASTER_ADDR=master_addr)
    os.environ.setdefault("LOCAL_RANK", "0" if not torch.cuda.is_available() else str(torch.cuda.current_device()))
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return
    # a learner of one rank takes a fresh port: an inherited MASTER_PORT may be one a parent process still listens on
    inherited = os.environ.get("MASTER_PORT") if world_size > 1 else None
    os.environ["MASTER_PORT"] = str(master_port or inherited or free_port())
    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
