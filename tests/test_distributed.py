"""The learner's process group listens on its master's address only: torch's env:// rendezvous would serve its
TCPStore on every interface (`*:PORT`); learner/distributed.py binds it to `master_addr` (127.0.0.1 here).
Two real ranks (gloo, DeepSpeed adopting the group) in two processes; their listening sockets are read back."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

RANK = """
import json, sys
import psutil, torch
from learner.distributed import init_process_group
rank, port = int(sys.argv[1]), int(sys.argv[2])
init_process_group(rank, 2, "127.0.0.1", port)
t = torch.full((2,), float(rank + 1))
torch.distributed.all_reduce(t)
import deepspeed.comm as dc
listening = sorted({(c.laddr.ip, c.laddr.port) for c in psutil.Process().net_connections("tcp")
                    if c.status == "LISTEN"})
print(json.dumps({"sum": t.tolist(), "ds_world": dc.get_world_size(), "listening": listening}))
torch.distributed.barrier()
"""


def test_two_ranks_rendezvous_on_the_master_address_only():
    from learner.distributed import free_port

    port = free_port()
    procs = [subprocess.Popen([sys.executable, "-c", RANK, str(rank), str(port)], cwd=ROOT, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for rank in (0, 1)]
    try:
        outs = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for rank, (p, (out, err)) in enumerate(zip(procs, outs)):
        assert p.returncode == 0, err[-3000:]
        got = json.loads(out.strip().splitlines()[-1])
        assert got["sum"] == [3.0, 3.0] and got["ds_world"] == 2
        # no wildcard bind at all (gloo's own listener takes the hostname's address, 127.0.x.1 or the pod's)
        assert not {ip for ip, _ in got["listening"]} & {"0.0.0.0", "::", "*"}, got
        if rank == 0:
            assert ["127.0.0.1", port] in got["listening"], got  # the store, on the master address
