"""The rollout actor: a Ray actor owning one vLLM engine. It plays G episodes per prompt for the prompt
ids it is handed, and returns them as one Arrow record batch tagged with its weight version. New weights
arrive between calls (`load_weights`: shared memory or the object store; `nccl_receive`); Ray runs an
actor's calls in order, so a rollout dispatched after a load always uses the new weights."""

from __future__ import annotations

import dataclasses
import time

from configs.jobs import EvalConfig
from configs.placement import nccl_sync, torch_threads
from configs.schema import TrainConfig
from data_gen.prompts import read_system_prompt


def check_rollout(cfg: TrainConfig | EvalConfig) -> None:
    """What an actor's constructor would otherwise only fail on after its engine loaded: the prompt name
    (data_gen.prompts registry) and the system prompt file. Run by the driver before Ray starts
    (cluster/cli.py) and first thing in the constructor; raises ConfigError naming the key, which the
    driver treats as the run's error, not as an actor fault to retry (cluster/pool.py `config_error`)."""
    from configs.base import ConfigError, did_you_mean
    from data_gen.prompts import PROMPTS

    r = cfg.rollout
    if r.prompt not in PROMPTS:
        raise ConfigError(f"bad value for config key 'rollout.prompt': unknown prompt {r.prompt!r}"
                          f"{did_you_mean(r.prompt, PROMPTS)}; valid: {', '.join(sorted(PROMPTS))}")
    try:
        read_system_prompt(r.system_prompt_file, r.system_prompt_unescape)
    except (OSError, ValueError) as e:  # missing, a directory, unreadable, empty, not UTF-8
        key = "rollout.system_prompt_file"
        raise ConfigError(str(e) if str(e).startswith(key) else f"{key}: {r.system_prompt_file}: {e}") from None


class RolloutActor:
    """`cfg`'s model, sampling, zoom, data, rollout and cluster parts configure it (a training or an
    evaluation recipe); `rows` (default: data.path read by `data_gen.formats.load_prompts`) are the items it may
    be handed, their images resolved under `data_gen.formats.image_root(cfg.data)`; `log_file` (default: the
    console) takes the actor's and its engine's output."""

    def __init__(self, cfg: TrainConfig | EvalConfig, index: int = 0, rows: list | None = None,
                 log_file: str = ""):
        from actors.process import redirect_output, use_threads

        redirect_output(log_file)  # first: the engine's start-up output follows it
        check_rollout(cfg)  # a bad prompt name or file: ConfigError now, not after the engine loaded
        from transformers import AutoProcessor

        from actors.engine import make_llm
        from actors.rollout import Rollout
        from actors.zoom import ZoomSettings
        from data_gen.formats import load_prompts

        self.cfg, self.index, self.version = cfg, index, 0
        self._reader = None  # actors.shm.WeightReader, made at the first shared-memory load
        # the driver's loader (data_gen.formats: any data format, or `benchmark=`), on this actor's node
        self.rows = {r.prompt_id: r for r in (load_prompts(cfg)[0] if rows is None else rows)}
        nccl = nccl_sync(cfg.cluster)
        loop = getattr(cfg, "loop", None)  # an eval has no learner to take turns with
        use_threads(torch_threads(cfg.cluster, "rollout", loop is not None and loop.mode == "sync"))
        self.llm = make_llm(cfg.model.path, dtype=cfg.model.dtype, max_model_len=cfg.model.max_model_len,
                            max_images=cfg.zoom.max_images, seed=cfg.sampling.seed + index,
                            tensor_parallel_size=cfg.cluster.tensor_parallel_size,
                            gpu_memory_utilization=cfg.cluster.gpu_memory_utilization,
                            nccl_weight_sync=nccl, in_process=not nccl)
        processor = AutoProcessor.from_pretrained(cfg.model.path)
        r = cfg.rollout
        self.rollout = Rollout(
            self.llm, processor, ZoomSettings(**dataclasses.asdict(cfg.zoom)), group_size=r.group_size,
            prompt=r.prompt, mode=cfg.data.mode, temperature=cfg.sampling.temperature, top_p=cfg.sampling.top_p,
            max_tokens_per_turn=cfg.sampling.max_tokens_per_turn, response_budget=r.response_budget,
            max_model_len=cfg.model.max_model_len, guided=r.guided, min_zooms=r.min_zooms,
            train_forced_prefix=r.train_forced_prefix, system_prompt=read_system_prompt(r.system_prompt_file, r.system_prompt_unescape),
            forced_answer_temperature=r.forced_answer_temperature,
            seed=cfg.sampling.seed)
        self._images: dict[str, object] = {}

    def _image(self, row):
        from data_gen.formats import image_root
        from data_gen.images import policy_image

        if row.prompt_id not in self._images:
            self._images[row.prompt_id] = policy_image(image_root(self.cfg.data), row.image,
                                                       self.cfg.model.min_pixels, self.cfg.model.max_pixels)
        return self._images[row.prompt_id]

    def rollout_batch(self, prompt_ids: list[str], draw: int | None = None):
        """-> (Arrow RecordBatch of G trajectories per prompt, stats). Call with num_returns=2 so the batch
        is its own object that the learner reads without the driver touching it. `draw` (the ledger ticket
        in training) seeds every turn (`actors.rollout.turn_seed`); None: the engine's stream."""
        from actors.process import rss_mb, trim_heap
        from actors.trajectory import to_batch

        t0 = time.perf_counter()
        batch = [(self.rows[p], self._image(self.rows[p]), self.rows[p].image) for p in prompt_ids]
        trajs = self.rollout.play(batch, self.version, draw)
        t1 = time.perf_counter()
        rb = to_batch(trajs)
        stats = {"actor": self.index, "version": self.version, "prompt_ids": prompt_ids,
                 "generate_s": t1 - t0, "encode_s": time.perf_counter() - t1,
                 "response_tokens": sum(len(t.token_ids) - t.prompt_len for t in trajs),
                 "episodes": len(trajs)}
        del trajs, batch  # the Arrow batch holds what the learner needs; free the rest before trimming
        trim_heap()
        return rb, stats | {"rss_mb": rss_mb()}

    def load_weights(self, version: int, where: dict) -> float:
        """Load the weights a learner publish describes (`LearnerActor.publish`): from its shared-memory file
        when this actor runs on the learner's node — then the version is the one the file holds, which may be
        newer than `version` (async mode) — else from the object store. Returns seconds."""
        from actors.shm import WeightReader, this_node
        from actors.weights import load_weights, load_weights_from_file, unpack

        t0 = time.perf_counter()
        tp = self.cfg.cluster.tensor_parallel_size > 1  # workers in other processes: they map a file themselves
        if "shm" in where and where["node"] == this_node():
            self._reader = self._reader or WeightReader()
            path = where["shm"]
            self.version = self._reader.read(
                path, (lambda _: load_weights_from_file(self.llm, path)) if tp else (lambda state: load_weights(self.llm, state)),
                self.cfg.cluster.sync_timeout_s)
        elif "packed" in where and tp:  # from the object store into this node's own weight file, then as above
            from actors.shm import WeightFile

            self._own_file = getattr(self, "_own_file", None) or WeightFile()
            load_weights_from_file(self.llm, self._own_file.write(version, unpack(where["packed"])))
            self.version = version
        elif "packed" in where:
            load_weights(self.llm, unpack(where["packed"]))
            self.version = version
        else:
            raise RuntimeError(f"rollout actor {self.index}: weight version {version} was published only to the "
                               f"shared memory of node {where.get('node')}, and this actor runs on another node "
                               f"(the driver publishes to the object store too when an actor is elsewhere)")
        return time.perf_counter() - t0

    def node_id(self) -> str:
        from actors.shm import this_node

        return this_node()

    def nccl_join(self, master_address: str, master_port: int, world_size: int) -> None:
        from actors.weights import nccl_join

        nccl_join(self.llm, master_address, master_port, 1 + self.index * self.cfg.cluster.tensor_parallel_size,
                  world_size)

    def nccl_receive(self, version: int, meta: dict) -> float:
        from actors.weights import nccl_receive

        seconds = nccl_receive(self.llm, meta)
        self.version = version
        return seconds

    def get_version(self) -> int:
        return self.version
