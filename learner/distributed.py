"""The process group of the learner's ranks: torch.distributed (gloo on CPU, NCCL on GPU), which DeepSpeed
requires even for one rank, and the free ports its rendezvous (and the NCCL weight-sync group that
`learner.actor` opens) listen on.

The rendezvous store listens on the master's own address only (127.0.0.1 for a local learner, the node's
address for ranks across nodes): torch's env:// rendezvous binds its TCPStore to every interface (`*:PORT`),
an unauthenticated key-value server reachable from any network the node is on. vigorl binds the listening
socket itself and hands it to the store (`TCPStore(master_listen_fd=...)`)."""

from __future__ import annotations

import os
import socket

import torch


def free_port() -> int:
    """A TCP port free on this host now (the OS picks it): a rendezvous port for a process group."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rendezvous_store(rank: int, world_size: int, master_addr: str, master_port: int):
    """The process group's TCPStore: rank 0 serves it on `master_addr:master_port` only; the others connect."""
    from torch.distributed import TCPStore
    from torch.distributed.constants import default_pg_timeout

    if rank != 0:
        return TCPStore(master_addr, master_port, world_size, False, timeout=default_pg_timeout)
    listener = socket.create_server((master_addr, master_port), backlog=max(128, world_size))
    fd = listener.detach()  # the store owns the socket from here: Python closing its object must not close it
    try:
        return TCPStore(master_addr, master_port, world_size, True, timeout=default_pg_timeout,
                        master_listen_fd=fd, wait_for_workers=False)
    except BaseException:
        os.close(fd)
        raise


def init_process_group(rank: int = 0, world_size: int = 1, master_addr: str = "127.0.0.1",
                       master_port: int | None = None) -> None:
    """torch.distributed for this learner rank (DeepSpeed requires a process group), its rendezvous store
    listening on `master_addr` only. The ranks of one learner are separate processes (Ray actors) joining the
    same master."""
    import deepspeed

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), MASTER_ADDR=master_addr)
    os.environ.setdefault("LOCAL_RANK", "0" if not torch.cuda.is_available() else str(torch.cuda.current_device()))
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return
    # a learner of one rank takes a fresh port: an inherited MASTER_PORT may be one a parent process still listens on
    inherited = os.environ.get("MASTER_PORT") if world_size > 1 else None
    port = int(master_port or inherited or free_port())
    os.environ["MASTER_PORT"] = str(port)  # DeepSpeed and NCCL read the env; the group below is already made
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    torch.distributed.init_process_group(backend, store=rendezvous_store(rank, world_size, master_addr, port),
                                         rank=rank, world_size=world_size)
    deepspeed.init_distributed(dist_backend=backend)  # adopts the initialised default group
