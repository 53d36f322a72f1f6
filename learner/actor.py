"""The learner as a Ray actor: trajectories arrive as Arrow record batches, weights leave as a versioned
state dict through a shared-memory file (rollout actors on its node), the object store, or NCCL."""

from __future__ import annotations

import torch

from actors.trajectory import from_batch
from configs.schema import LearnerConfig


class LearnerActor:
    """Wraps `learner.trainer.Learner` in its own process (use with `ray.remote`)."""

    def __init__(self, model_path: str, cfg: LearnerConfig, dataset_root: str, total_steps: int = 0,
                 rank: int = 0, world_size: int = 1, log_file: str = "", threads: int = 0):
        """One rank of the learner (`total_steps`: rollout steps of the run, for the LR warmup; `log_file`:
        where its output goes, default the console; `threads`: torch threads, 0 = Ray's OMP_NUM_THREADS).
        With world_size 1 it is ready at once; with several ranks, ask rank 0 for `master_endpoint()` and
        call `setup(addr, port)` on every rank concurrently."""
        from actors.process import redirect_output, use_threads

        redirect_output(log_file)
        if threads:
            use_threads(threads)
        self._args = (model_path, cfg, dataset_root, total_steps)
        self._lost: list[int] = []  # the last train_step's lost batches (`lost_batch_ids`)
        self.rank, self.world_size = rank, world_size
        self._weight_file = None  # actors.shm.WeightFile, made at the first shared-memory publish
        if world_size == 1:
            self.setup("127.0.0.1", None)

    def master_endpoint(self) -> tuple[str, int]:
        import ray

        from learner.distributed import free_port

        return ray.util.get_node_ip_address(), free_port()

    def setup(self, master_addr: str, master_port: int | None) -> int:
        from learner.trainer import Learner

        torch.manual_seed(0)
        model_path, cfg, root, steps = self._args
        self.learner = Learner(model_path, cfg, root, total_steps=steps, rank=self.rank,
                               world_size=self.world_size, master_addr=master_addr, master_port=master_port)
        return self.rank

    def gather_only(self) -> None:
        """Take part in a ZeRO-3 full-weight gather whose result rank 0 uses."""
        self.learner.state_dict(trained_only=True)

    def train_step(self, batches: list, max_staleness: int = 0, staleness_mode: str = "drop",
                   tis_cap: float = 2.0, delay_s: float = 0.0) -> dict[str, float]:
        """`batches`: Arrow record batches of trajectories, or object refs to them (read zero-copy).
        `delay_s`: sleep first (benchmarks: a slow learner). A batch whose object is gone (its actor's node
        died with the object store holding it) is left out of the step: `lost_batches` counts them and
        `lost_batch_ids()` says which (the driver requeues their prompts)."""
        import time

        from actors.process import rss_mb, trim_heap

        time.sleep(delay_s)
        t0 = time.perf_counter()
        batches, self._lost = self._fetch(batches)
        trajectories = [t for b in batches for t in from_batch(b)]
        t1 = time.perf_counter()
        out = self.learner.train_step(trajectories, max_staleness, staleness_mode, tis_cap)
        t2 = time.perf_counter()
        del batches, trajectories
        trim_heap()
        return out | {"time/decode_s": t1 - t0, "time/train_s": t2 - t1, "memory/learner_rss_mb": rss_mb(),
                      "lost_batches": float(len(self._lost))}

    def lost_batch_ids(self) -> list[int]:
        """The indices (into the last `train_step`'s `batches`) of the batches it left out as lost."""
        return self._lost

    def _fetch(self, batches: list) -> tuple[list, list[int]]:
        """The batches that are still there (object refs read zero-copy), and the indices of those whose
        object is lost (`ray.exceptions.ObjectLostError`: freed, owner died, not reconstructable). With
        several ranks, a batch lost to one rank is dropped by all (the ranks must train on the same list)."""
        import ray

        got, lost = [], []
        for i, b in enumerate(batches):
            try:
                got.append(ray.get(b) if isinstance(b, ray.ObjectRef) else b)
            except ray.exceptions.ObjectLostError:
                got.append(None)
                lost.append(i)
        if self.world_size > 1:
            mask = torch.zeros(len(batches), device="cuda" if torch.cuda.is_available() else "cpu")
            mask[lost] = 1.0
            torch.distributed.all_reduce(mask, op=torch.distributed.ReduceOp.MAX)
            lost = mask.nonzero().flatten().tolist()
        return [b for i, b in enumerate(got) if i not in lost], lost

    def sft_step(self, batch) -> dict[str, float]:
        """One SFT optimizer step on an Arrow batch of examples (learner.sft.encode_row records)."""
        import time

        import ray

        t0 = time.perf_counter()
        examples = from_batch(ray.get(batch) if isinstance(batch, ray.ObjectRef) else batch)
        return self.learner.sft_step(examples) | {"time/step_s": time.perf_counter() - t0}

    def sft_eval(self, batch) -> dict[str, float]:
        import ray

        return self.learner.sft_eval(from_batch(ray.get(batch) if isinstance(batch, ray.ObjectRef) else batch))

    def nccl_open(self, world_size: int) -> tuple[str, int]:
        """Start the NCCL group as its rank 0; returns (address, port) for the engines to join."""
        import threading

        import ray

        from actors.weights import NcclSender
        from learner.distributed import free_port

        address, port = ray.util.get_node_ip_address(), free_port()
        self._sender_box: dict = {}

        def rendezvous() -> None:  # its error is re-raised by nccl_meta, not lost with the thread
            try:
                self._sender_box["sender"] = NcclSender(address, port, world_size)
            except BaseException as e:  # noqa: B036 - handed to the caller thread, which raises it
                self._sender_box["error"] = e

        # rendezvous blocks until every engine has joined: run it beside the RPCs that make them join
        self._joiner = threading.Thread(target=rendezvous, daemon=True)
        self._joiner.start()
        return address, port

    def nccl_meta(self) -> tuple[int, dict]:
        from actors.weights import weight_meta

        self._joiner.join()
        if "error" in self._sender_box:
            raise RuntimeError("learner rank 0 could not open the NCCL weight-sync group") from self._sender_box["error"]
        self._staged = self.learner.state_dict(trained_only=True)  # gathered before any broadcast
        return self.learner.version, weight_meta(self._staged)

    def nccl_send(self) -> float:
        import time

        t0 = time.perf_counter()
        self._sender_box["sender"].send(self._staged)
        self._staged = {}
        return time.perf_counter() - t0

    def save_hf(self, path: str, run_info: dict | None = None) -> str:
        """An HF-format model dir (loads unchanged in transformers and vLLM). `run_info` (the driver's MLflow run:
        cluster.tracking.Tracker.run_info) goes beside it as vigorl_run.json, written here on the node that
        writes the model, so a run started from this dir links to the run that made it."""
        import json
        from pathlib import Path

        self.learner.save_hf(path)
        if run_info is not None and self.learner.rank == 0:
            Path(path, "vigorl_run.json").write_text(json.dumps(run_info, indent=1) + "\n")  # tracking.RUN_FILE
        return path

    def save_state(self, path: str) -> None:
        """A resumable checkpoint (DeepSpeed's; every rank must call it)."""
        self.learner.save_state(path)

    def load_state(self, path: str) -> int:
        """Go on from a resumable checkpoint (every rank); returns the weight version it restored."""
        self.learner.load_state(path)
        return self.learner.version

    def publish(self, shm: bool = False, store: bool = True) -> tuple[int, dict]:
        """(version, where the trained weights are) for the rollout actors' `load_weights`: with `shm`, rank 0
        rewrites its weight file in /dev/shm (`actors.shm`; keys "shm", its path, and "node", this node's Ray
        id); with `store`, the state dict packed for a zero-copy object store ("packed": actors.weights.pack),
        for actors on other nodes. HF names; a frozen vision tower is not sent (`Learner.state_dict(
        trained_only=True)`). Under ZeRO-3 every rank must call it (the gather is collective); only rank 0's
        result is used."""
        from actors.shm import WeightFile, available, this_node
        from actors.weights import pack

        state = self.learner.state_dict(trained_only=True)
        where: dict = {}
        if shm and not available():  # no /dev/shm on this node: every actor takes the object store
            shm, store = False, True
        if self.learner.rank == 0 and shm:
            if self._weight_file is None:
                self._weight_file = WeightFile()
            where |= {"shm": self._weight_file.write(self.learner.version, state), "node": this_node()}
        if self.learner.rank == 0 and store:
            where["packed"] = pack(state)
        return self.learner.version, where

    def node_id(self) -> str:
        from actors.shm import this_node

        return this_node()

    def close(self) -> None:
        """Remove the weight file (the driver calls it when the run ends; actors keep their mappings)."""
        if self._weight_file is not None:
            self._weight_file.close()
            self._weight_file = None

    def sequence_logprobs(self, token_ids: list[int]) -> torch.Tensor:
        """Per-token log-probs of a text-only sequence under the current policy, [T]."""
        from learner.logprobs import token_logprobs

        self.learner.engine.eval()
        with torch.no_grad():
            ids = torch.tensor([token_ids], device=self.learner.engine.device)
            return token_logprobs(self.learner.engine, {"input_ids": ids})[0].cpu()
