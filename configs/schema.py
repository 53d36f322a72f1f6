"""Structured configs: one dataclass tree per process, every field documented where it is defined.

`load(Schema, yaml_path, ["a.b=1", ...])` merges defaults <- YAML <- overrides through OmegaConf with the
dataclass as schema, so an unknown key or a wrong type is an error. `ConfigError` names the key and lists
the valid keys at that level (with a "did you mean"). Values are checked too, all before Ray starts: choices
are `Choice` enums, numbers have ranges (`RULES`), registry names and rules across fields (`validate`).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import typing
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Optional, TypeVar

from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from data_gen.mcts import MCTSConfig

T = TypeVar("T")


class ConfigError(ValueError):
    """A config value or key that cannot run, naming the key. Raised at load (`load`), by the driver's checks
    before Ray starts, and by an actor constructor's own checks (`actors.actor.check_rollout`): an actor
    whose constructor raises it is not a fault to retry (cluster/pool.py `config_error`), the run stops."""


class Choice(str, Enum):
    """A config field with a fixed set of values: OmegaConf refuses any other and lists the valid ones.
    A member *is* its value wherever a str is used (==, `in`, dict keys, f-strings, str(), json, MLflow
    params, `config.yaml` written by OmegaConf, which writes the name), so code comparing with "sync" and
    YAML written before keep working. `choice()` makes name = value, which also keeps Enum's hash (of the
    name) equal to the plain string's."""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


def choice(name: str, *values: str) -> type:
    """A `Choice` enum of `values` (the functional form: `async` and `raise` are Python keywords)."""
    return Choice(name, [(v, v) for v in values], module=__name__, qualname=name)


# The choices of the config fields below. Registry-backed names are checked at load too, against their
# registry (`validate`: data.task, data.mode, benchmark; rollout.prompt by `actors.actor.check_rollout`).
DType = choice("DType", "auto", "float32", "bfloat16", "float16")  # vLLM `dtype` names (auto: actors.engine.engine_dtype)
Schedule = choice("Schedule", "constant", "cosine")  # learner.trainer.SCHEDULES
WeightSync = choice("WeightSync", "auto", "nccl", "shm", "object_store")
LoopMode = choice("LoopMode", "sync", "async")
StalenessMode = choice("StalenessMode", "drop", "tis")
TeacherKind = choice("TeacherKind", "scripted", "vllm")
MCTSJudge = choice("MCTSJudge", "released", "vigorl")  # rewards.judges.JUDGE_KINDS
EvalJudge = choice("EvalJudge", "official", "reward")
OnBad = choice("OnBad", "raise", "skip")  # a bad data row: stop with an error naming it, or skip and count it
Vocab = choice("Vocab", "small", "qwen")  # tiny model vocabularies (data_gen.tiny_model)


def _valid_keys(schema: type, dotted: str) -> list[str]:
    """Field names of the dataclass at `dotted` (the parent of the bad key) in `schema`."""
    cls = schema
    for part in [p for p in dotted.split(".") if p]:
        sub = typing.get_type_hints(cls).get(part)
        if not dataclasses.is_dataclass(sub):
            break
        cls = sub
    return sorted(f.name for f in dataclasses.fields(cls))


def _error(schema: type, e: OmegaConfBaseException, source: str) -> ConfigError:
    key = getattr(e, "full_key", None) or ""
    parent = key.rsplit(".", 1)[0] if "." in key else ""
    valid = _valid_keys(schema, parent)
    where = f"{parent}." if parent else ""
    msg = str(e).splitlines()[0]
    if isinstance(e, ConfigKeyError) or "not in" in msg:
        return ConfigError(f"{source}: unknown config key {key!r}. Valid keys under '{where or '<top>'}': "
                           f"{', '.join(valid)}{did_you_mean(key.rsplit('.', 1)[-1], valid, where)}")
    if m := _CHOICES_MSG.search(msg):  # a Choice field: OmegaConf lists the valid values
        msg += did_you_mean(m.group(1), [v.strip() for v in m.group(2).split(",")])
    return ConfigError(f"{source}: bad value for config key {key!r}: {msg}")


_CHOICES_MSG = re.compile(r"Invalid value '(.*)', expected one of \[(.*)\]")


def did_you_mean(bad: str, valid, prefix: str = "") -> str:
    """' (did you mean 'x'?)' for the closest of `valid` to `bad` (difflib), or ''."""
    close = difflib.get_close_matches(str(bad), [str(v) for v in valid], n=1, cutoff=0.6)
    return f" (did you mean '{prefix}{close[0]}'?)" if close else ""


def load(schema: type[T], path: str | Path | list | None = None, overrides: list[str] | None = None) -> T:
    """Defaults from `schema`, then the YAML file(s) in order (a recipe, then e.g. a resource layout from
    configs/layouts/), then `key=value` overrides; returns a `schema` object."""
    cfg = OmegaConf.structured(schema)
    for p in ([] if path is None else path if isinstance(path, list) else [path]):
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.load(p))
        except OmegaConfBaseException as e:
            raise _error(schema, e, str(p)) from None
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value")
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([item]))
        except OmegaConfBaseException as e:
            raise _error(schema, e, f"override {item!r}") from None
    try:
        obj = OmegaConf.to_object(cfg)
    except (ValidationError, OmegaConfBaseException) as e:
        raise _error(schema, e, "config") from None
    validate(obj)  # ranges, registry names, cross-field rules: all before anything starts
    return obj  # type: ignore[return-value]


def to_flat_dict(obj: Any, prefix: str = "") -> dict[str, Any]:
    """`a.b.c -> value` for logging as run parameters."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v):
            out.update(to_flat_dict(v, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = v
    return out


# ---- shared pieces of per-process configs -----------------------------------------------------------

@dataclass
class ModelConfig:
    # a local HF model dir (a Qwen2.5-VL checkpoint, `vigorl make-tiny-model`) or a Hub id `org/name[@revision]`,
    # resolved on the driver before Ray starts (data_gen/hub.py: the HF cache, downloaded if missing and the Hub
    # can be reached); the resolver then puts the local dir here, so every actor and the fingerprint read files
    path: str = "runs/tiny-model"  # local model dir or Hub id (see above)
    source: str = ""  # model.path as the user gave it (dir or Hub id), for logs; set by cluster/prelaunch.py
    dtype: DType = DType("auto")  # vLLM's dtype; auto: bfloat16 on GPU, float32 on CPU (the learner's; actors.engine)
    min_pixels: int = 3136  # smart_resize lower bound (pixels) for the full image the model sees (official)
    max_pixels: Optional[int] = None  # smart_resize upper bound; null: 2,850,000 V* multi-turn, else 4,194,304
    max_model_len: int = 8192  # vLLM context length (prompt + all turns)


@dataclass
class SamplingConfig:
    temperature: float = 1.0  # docs/algorithm.md §5: 1.0 for RL rollouts, 0.5 for validation
    top_p: float = 0.99  # nucleus sampling mass (docs/algorithm.md §5: 0.99 for RL)
    max_tokens_per_turn: int = 1024  # docs/algorithm.md §2
    # In training also the base of every turn's own seed, derived from (seed, ledger ticket, episode, turn),
    # so distinct within a group (actors/rollout.py `turn_seed`).
    seed: int = 0  # vLLM engine seed (+ actor index); see above


@dataclass
class ZoomConfig:
    half_size: int = 182  # o, docs/algorithm.md §3 (visual search: 182; web grounding RL: 50)
    out_size: int = 672  # r (visual search: 672; web grounding RL: 384)
    dot: bool = False  # red dot at the zoom point (web grounding: true)
    max_images: int = 5  # full image + 4 crops, then the answer is forced


# How data.path's rows are read (data_gen/formats.py): auto tells them apart by their columns
DataFormat = choice("DataFormat", "auto", "vigorl", "easyr1", "verl", "released_eval")


@dataclass
class DataConfig:
    # a dir (prompts.parquet; *.parquet / *.jsonl / *.json; a `datasets` save_to_disk dir), a .parquet / .jsonl /
    # .json file, or a Hub dataset id name@split (docs/data.md; data_gen/formats.py)
    path: str = "runs/data/visual_search"  # the prompts: dir, file or Hub dataset id (see above)
    task: str = "visual_search"  # rewards task name; the task of rows that have no task column
    mode: str = "multi_turn"  # rewards mode: single_turn | single_turn_vanilla | multi_turn
    format: DataFormat = DataFormat("auto")  # row format: auto (from the columns) | vigorl | easyr1 | verl | released_eval
    image_root: str = ""  # where relative image paths resolve ("": data.path if a dir, else the file's dir)
    prompt_key: str = "problem"  # easyr1: the question column (EasyR1 data.prompt_key), one <image> per image
    answer_key: str = "answer"  # easyr1: the gold answer column (EasyR1 data.answer_key)
    image_key: str = "images"  # easyr1 / verl: the images column (EasyR1 data.image_key)


@dataclass
class RolloutConfig:
    group_size: Optional[int] = None  # G episodes per prompt; null = official: 8 multi-turn, 5 single-turn
    prompt: str = "vigorl_multi_turn"  # actors.prompts registry name
    response_budget: int = 2048  # tokens after the first prompt, observations included (docs/algorithm.md §5)
    guided: bool = False  # constrain turns to the ViGoRL grammar (for random / cold models only)
    min_zooms: int = 0  # with guided decoding: zooms required before an answer
    train_forced_prefix: bool = True  # the forced answer prefix is trained (released code: loss mask 1)
    # A file whose text (stripped) is the system message of every episode, replacing the prompt's own, e.g.
    # the exact prompt the SFT data used (the released recipes' examples/format_prompt/*.jinja). With
    # prompt=plain and no file, the checkpoint's chat template supplies its own default system prompt.
    system_prompt_file: str = ""  # path of the system prompt text ("" = the prompt's own)
    # The released RL trainer reads its format_prompt/*.jinja with `f.read().strip()` and sends that text as
    # is: the released files are one line with literal backslash-n escapes, so its policy saw `\n`, not
    # newlines. true: turn each literal `\n` into a newline (the text the released SFT rows carry).
    system_prompt_unescape: bool = False  # read the system prompt file's literal \n as newlines
    # Temperature of the turn that follows the forced answer prefix; null: the sampling temperature (RL).
    # The released evaluation generates that answer greedily (qwen_vllm.py: no_sample on force_final).
    forced_answer_temperature: Optional[float] = None  # null: sampling.temperature; eval recipes: 0.0


@dataclass
class LearnerConfig:
    lr: float = 1e-6  # AdamW learning rate (docs/algorithm.md §5)
    weight_decay: float = 0.01  # AdamW weight decay
    warmup_ratio: Optional[float] = None  # linear LR warmup, fraction of rollout steps; null: 0.05 multi, 0 single
    schedule: Schedule = Schedule("constant")  # LR after the warmup: constant (RL, released) | cosine (SFT, to 0 at the end)
    grad_clip: Optional[float] = None  # global grad-norm clip; null = official: 0.2 multi-turn, 1.0 single-turn
    # PPO updates per rollout step (docs/algorithm.md §5): the step's sequences, in order, split into mini-batches of
    # this many sequences, one optimizer step each; 0 = the whole rollout step in one mini-batch;
    # null = official: 64 multi-turn (16 updates of 1,024), 64 prompts x group single-turn (2 of 640).
    mini_batch_size: Optional[int] = None  # sequences per optimizer step (see above)
    micro_batch_size: int = 2  # sequences per forward/backward (token-mean within, averaged over micro-batches)
    # order each mini-batch's sequences by length before cutting micro-batches: a multi-turn SFT step of 32
    # pads ~20 % less. It changes which sequences share a micro-batch's token-mean (each micro-batch weighs
    # the same), so it is off by default, as released (in order); the learning proof's recipes turn it on.
    length_buckets: bool = False  # micro-batches of similar length (see above)
    logprob_micro_batch_size: int = 8  # sequences per no-grad forward when recomputing old/ref log-probs
    ppo_epochs: int = 1  # passes over the rollout step's mini-batches
    kl_coef: float = 0.01  # k3 KL to the frozen reference model; 0 disables the reference
    clip_low: float = 0.2  # PPO ratio clip below 1 (log space)
    clip_high: float = 0.28  # clip-higher above 1
    dual_clip: float = 3.0  # caps the loss of negative-advantage tokens at -A * dual_clip
    zero_stage: int = 2  # DeepSpeed ZeRO stage (2 default, 3 for large models)
    zero3_gather_mb: float = 256.0  # ZeRO-3 weight export (sync, HF save): MiB of parameters gathered at once
    freeze_vision: bool = True  # keep the vision tower frozen (docs/algorithm.md §5, §7)
    # with freeze_vision and ZeRO <= 2, the tower runs once per image per rollout step, its output shared
    # by the reference, old-log-prob and policy passes; off: every forward runs it (as released)
    vision_cache: bool = True  # run a frozen vision tower once per image per step (see above)
    gradient_checkpointing: bool = False  # recompute activations in backward (saves memory)
    # ZeRO-Offload: fp32 master weights, AdamW moments and gradient partitions in CPU memory, the optimizer
    # step on the CPU (DeepSpeedCPUAdam); for a learner sharing one GPU with vLLM (`vigorl plan` suggests it)
    offload_optimizer: bool = False  # keep the optimizer state in CPU memory (GPU only)


@dataclass
class ClusterConfig:
    address: str = ""  # Ray address; "" starts a local Ray on 127.0.0.1 (RAY_ADDRESS also works)
    rollout_actors: int = 1  # rollout workers, each with its own vLLM engine
    rollout_cpus: float = 1.0  # CPUs reserved per rollout actor
    rollout_gpus: float = 0.0  # GPUs per rollout actor (= tensor_parallel_size on GPU clusters)
    tensor_parallel_size: int = 1  # vLLM tensor parallelism per rollout actor
    learner_ranks: int = 1  # learner processes (Ray actors) in one torch.distributed group
    learner_cpus: float = 1.0  # CPUs per learner rank
    learner_gpus: float = 0.0  # GPUs per learner rank
    weight_sync: WeightSync = WeightSync("auto")  # auto | nccl | shm | object_store. auto: nccl when the learner and the actors have
    # whole GPUs, else shm. shm: rollout actors on learner rank 0's node copy from a shared-memory file it
    # rewrites in place (actors.shm), actors on other nodes load through Ray's object store
    sync_timeout_s: float = 600.0  # a weight sync that takes longer is an error (NCCL has no timeout)
    # faults (vigorl train): a dead rollout actor is replaced and its prompts requeued (docs/training.md)
    rollout_timeout_s: float = 3600.0  # a rollout call not back this long after the driver starts waiting for
    # it is a hung engine: its actor is killed and replaced (0: wait forever)
    start_timeout_s: float = 900.0  # an actor (a learner rank, a replacement rollout actor) not up by then failed to start
    learner_timeout_s: float = 7200.0  # a learner call (one train step, a checkpoint) not back by then is an error
    restart_attempts: int = 3  # tries at starting a replacement before the run stops with an error
    restart_backoff_s: float = 5.0  # wait before try k+1: restart_backoff_s * 2**(k-1)
    gpu_memory_utilization: float = 0.8  # GPU actors: the share of their GPU's memory vLLM takes (weights and
    # KV cache); where the learner shares the GPU (fractional rollout_gpus and learner_gpus) leave it room
    # torch/OpenMP threads per process; 0 = auto (`torch_threads`): the CPUs it reserves, and in sync mode on
    # CPU the run's whole share (learner and actors take turns, so each may use the cores the other leaves idle)
    learner_threads: int = 0  # per learner rank
    rollout_threads: int = 0  # per rollout actor (vLLM's CPU kernels)
    # `vigorl train` on a GPU layout first estimates each GPU's memory (`vigorl plan`, cluster/plan.py) and
    # refuses a layout that cannot fit; true launches anyway
    skip_memory_check: bool = False  # launch without the GPU memory plan's check


def nccl_sync(c: ClusterConfig) -> bool:
    """Whether weights move by NCCL broadcast from learner rank 0 into the vLLM workers (`auto`: when the
    learner and every rollout actor have whole GPUs of their own), rather than shared memory or the object store.
    Also refuses the placements that cannot run, naming the keys (checked before Ray starts):
    - NCCL refuses two ranks on one GPU ("duplicate GPU"), so `nccl` needs whole GPUs on both sides; a learner
      and vLLM sharing one GPU (fractional gpus) take shared memory;
    - a vLLM engine of tensor-parallel size tp uses tp whole GPUs: rollout_gpus must equal it, or be a
      fraction below 1 with tp = 1 (a GPU shared with the learner)."""
    if c.weight_sync not in ("auto", "nccl", "shm", "object_store"):
        raise ValueError(f"cluster.weight_sync must be auto | nccl | shm | object_store, got {c.weight_sync!r}")
    tp = c.tensor_parallel_size
    if tp < 1 or (c.rollout_gpus > 0 and c.rollout_gpus != tp and not (tp == 1 and c.rollout_gpus < 1)):
        raise ValueError(f"cluster.rollout_gpus={c.rollout_gpus} with cluster.tensor_parallel_size={tp}: a rollout "
                         "actor's vLLM engine needs one whole GPU per tensor-parallel rank (rollout_gpus = "
                         "tensor_parallel_size), or a share of one GPU (rollout_gpus < 1) with tensor_parallel_size=1")
    whole = c.rollout_gpus >= 1 and c.learner_gpus >= 1
    if c.weight_sync == "nccl" and not whole:
        raise ValueError(f"cluster.weight_sync=nccl needs whole GPUs for the learner and every rollout actor "
                         f"(NCCL refuses two ranks on one GPU); got cluster.learner_gpus={c.learner_gpus}, "
                         f"cluster.rollout_gpus={c.rollout_gpus}. On one shared GPU use cluster.weight_sync=auto (shared memory)")
    return c.weight_sync == "nccl" or (c.weight_sync == "auto" and whole)


def shares_gpu(c: ClusterConfig) -> bool:
    """Whether the learner and the rollout actors share GPUs (fractional learner_gpus and rollout_gpus)."""
    return 0 < c.learner_gpus < 1 and 0 < c.rollout_gpus < 1


def shm_sync(c: ClusterConfig) -> bool:
    """Whether rollout actors on learner rank 0's node load weights from its shared-memory file (`auto` without
    NCCL, or `shm`); the others, and every actor with `object_store`, load through the object store."""
    return not nccl_sync(c) and c.weight_sync in ("auto", "shm")


def torch_threads(c: ClusterConfig, role: str, sync: bool) -> int:
    """Threads for one `role` process ("learner" rank or "rollout" actor): `cluster.<role>_threads` when set,
    else the CPUs it reserves (rounded up); in sync mode on CPU, where generation and training take turns,
    an equal share of all the CPUs the run reserves instead, if more (1 learner + 1 actor of 1 CPU each:
    2 threads each, where Ray's OMP_NUM_THREADS=num_cpus gave 1 and left one core idle in every phase).
    Auto assumes the run's processes share a machine, as a local run's do; the caller caps the result at
    the machine's cores. Set the keys explicitly on a multi-node CPU cluster."""
    explicit = getattr(c, f"{role}_threads")
    if explicit < 0:
        raise ValueError(f"cluster.{role}_threads must be >= 0 (0 = auto), got {explicit}")
    if explicit:
        return explicit
    own = c.learner_cpus if role == "learner" else c.rollout_cpus
    n = max(1, math.ceil(own))
    if sync and c.learner_gpus == 0 and c.rollout_gpus == 0:
        total = c.learner_cpus * c.learner_ranks + c.rollout_cpus * c.rollout_actors
        n = max(n, int(total // (c.learner_ranks if role == "learner" else max(1, c.rollout_actors))))
    return n


@dataclass
class LoopConfig:
    steps: int = 500  # optimizer steps
    prompts_per_step: int = 128  # prompts per rollout step (official); each yields rollout.group_size episodes
    mode: LoopMode = LoopMode("sync")  # sync: generate then train | async: actors run ahead of the learner
    max_staleness: int = 1  # async: samples at most this many versions older than the learner
    staleness_mode: StalenessMode = StalenessMode("drop")  # too-stale samples: drop | tis (truncated importance weights)
    tis_cap: float = 2.0  # tis: importance weights are truncated at this value
    max_queue: int = 2  # rollout results waiting for the learner, in steps' worth (backpressure)
    seed: int = 0  # prompt order
    learner_delay_s: float = 0.0  # benchmarks only: every learner step sleeps this long (`make soak`: a slow learner)


@dataclass
class TrackingConfig:
    # uri / experiment: a value given on the command line wins, then MLFLOW_TRACKING_URI / MLFLOW_EXPERIMENT_NAME,
    # then the recipe's value, then the default (cluster/tracking.py `resolve_uri`, `resolve_experiment`)
    uri: str = ""  # MLflow tracking URI; "": the project's store sqlite:///runs/mlflow.db (artifacts: runs/mlartifacts)
    experiment: str = ""  # MLflow experiment name; "": the command's (vigorl; vigorl-eval for `vigorl eval`)
    run_name: str = ""  # MLflow run name; "": COMMAND-RECIPE-<run id's first 6 characters>
    # log_checkpoints: HF exports (OUT/checkpoints/step_N, the SFT model) also as MLflow artifacts, uploaded by
    # the driver in the background; the driver must see the learner's files (one node, or a shared `out`),
    # so keep it off for multi-node layouts (a 7B export is ~16 GB per checkpoint)
    log_checkpoints: bool = False  # copy HF checkpoints into MLflow artifacts (see above)
    system_metrics: bool = True  # log the driver's CPU/memory/disk/network (and GPUs' per role) as system/...
    # while the tracking server is unreachable, metrics, params, tags and artifacts wait in memory and are
    # retried; at the end of the run the driver waits this long without progress, then reports what is lost
    flush_timeout_s: float = 120.0  # the end-of-run wait for an unreachable tracking server (see above)
    picture_every: int = 10  # log an episode picture every this many steps (0: never)
    # HF-format checkpoints go to OUT/checkpoints/step_N (and MLflow), resumable ones to OUT/resume/step_N
    # (`vigorl train --resume OUT`, cluster/resume.py).
    checkpoint_every: int = 50  # write both every this many steps (0: only at the end)
    keep_resume: int = 2  # resumable checkpoints kept, newest first (older deleted; HF exports are all kept)


@dataclass
class TrainConfig:
    """`vigorl train`: the actor-learner GRPO loop."""

    out: str = "runs/train"  # run directory (checkpoints, logs; MLflow: tracking.uri)
    model: ModelConfig = field(default_factory=ModelConfig)  # the policy model and image bounds
    sampling: SamplingConfig = field(default_factory=SamplingConfig)  # vLLM sampling per turn
    zoom: ZoomConfig = field(default_factory=ZoomConfig)  # crop geometry and image budget
    data: DataConfig = field(default_factory=DataConfig)  # dataset, task and reward mode
    # train on a benchmark's items, read by its eval loader (data_gen.benchmarks.LOADERS; its folder, or a released
    # evaluation file, in data.path), as `vigorl eval benchmark=` reads them
    benchmark: str = ""  # a data_gen.benchmarks.LOADERS name; "": data.path read by data.format (see above)
    benchmark_file: str = ""  # the loader's annotation file under data.path ("": the loader's default name)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)  # episodes per prompt, prompt template
    learner: LearnerConfig = field(default_factory=LearnerConfig)  # optimizer and GRPO loss
    loop: LoopConfig = field(default_factory=LoopConfig)  # steps, sync/async, staleness
    cluster: ClusterConfig = field(default_factory=ClusterConfig)  # Ray placement and resources
    tracking: TrackingConfig = field(default_factory=TrackingConfig)  # MLflow
    make_tiny: str = ""  # build a tiny random model at model.path if missing: "" (no) | small | qwen
    make_data: int = 0  # generate this many synthetic data.task prompts at data.path if missing
    verbose: bool = False  # actor and engine output on the console too (default: out/logs/<actor>.log only)
    resume: bool = False  # go on from the newest complete checkpoint in out/resume (`vigorl train --resume OUT`)


@dataclass
class TeacherConfig:
    kind: TeacherKind = TeacherKind("scripted")  # scripted (synthetic families; knows each scene's truth) | vllm (a local VLM dir)
    error_rate: float = 0.3  # scripted: chance a step points somewhere wrong, and an answer is wrong
    answer_rate: float = 0.6  # scripted: chance of answering once every target has been looked at
    # scripted: a step says what the scene shows at its point ("The red circle is at (x, y)." / "There is
    # nothing at (x, y).") where the scene knows (object_colour), as the MCTS prompt asks a VLM teacher to;
    # off: "The small circle should be here: (x, y)." / "Let me check this region (x, y)."
    describe: bool = False  # scripted: steps describe what is at their point (see above)
    # vllm: the teacher VLM (paper: Qwen2.5-VL-72B-Instruct), a local dir or Hub id resolved as model.path is
    model_path: str = ""  # vllm: the teacher's model dir or Hub id (see above)
    model_source: str = ""  # teacher.model_path as the user gave it; set by the resolver (cluster/prelaunch.py)
    tensor_parallel_size: int = 1  # vllm: tensor parallelism of the teacher engine
    gpus: float = 0.0  # vllm: GPUs of the teacher server actor (its own resources)
    cpus: float = 1.0  # vllm: CPUs of the teacher server actor
    temperature: float = 1.0  # docs/algorithm.md §6: expansion samples at temperature 1.0, top-p 1.0
    top_p: float = 1.0  # nucleus mass of teacher samples
    max_tokens: int = 512  # per teacher output (docs/algorithm.md §6)
    max_model_len: int = 8192  # vllm: teacher context length
    min_thoughts_low: int = 3  # the system prompt asks for at least N thoughts, N uniform in [low, high]
    # (docs/algorithm.md §6: 3..7) "\n- There should be at least N thoughts before providing the final answer." is appended
    # to the system prompt (built-in or prompt_file), as the released search does
    min_thoughts_high: int = 7  # upper bound of N (see above)
    # prompt_file: a text or Jinja file (as the released MCTS run script's per-domain prompts) replacing the
    # built-in per-task MCTS system prompt; used verbatim (not stripped, not rendered, a literal "\n" kept)
    prompt_file: str = ""  # vllm: the teacher's system prompt file (see above; "" = built-in per-task prompt)
    prompt_unescape: bool = False  # vllm, vigorl option: each literal backslash-n of prompt_file becomes a newline
    # stop_at_tags: released (False): no stop strings, so one output may hold think steps and an answer and is one
    # node (terminal if it has <answer>); vigorl (True): stop at </think> / </answer>, one step or answer per output
    stop_at_tags: bool = False  # vllm: stop teacher outputs at </think> / </answer> (see above)


@dataclass
class MCTSJobConfig:
    """`vigorl mcts`: teacher-guided MCTS trace generation as a Ray job (docs/algorithm.md §6)."""

    out: str = "runs/mcts"  # output dir: trees.jsonl (one finished tree per line), failed.jsonl, vigorl_run.json
    address: str = ""  # Ray address; "" starts a local Ray on 127.0.0.1 (RAY_ADDRESS also works)
    model: ModelConfig = field(default_factory=ModelConfig)  # the policy's image bounds: coordinates live there
    data: DataConfig = field(default_factory=DataConfig)  # the questions (prompts.parquet) and their task
    teacher: TeacherConfig = field(default_factory=TeacherConfig)  # who proposes the steps
    search: MCTSConfig = field(default_factory=MCTSConfig)  # simulations, UCT constant, children, rollouts
    workers: int = 2  # search worker actors (questions run in parallel, one per worker)
    worker_cpus: float = 1.0  # CPUs per search worker
    question_timeout_s: float = 3600.0  # a question still searching after this is failed (released: 3600)
    # judge: the outcome judge of answers (rewards/judges.py): released (the released Judge: string match with
    # substring, point in bbox, _web_action) | vigorl (whole-word match, parse_box point in box, RL web accuracy)
    judge: MCTSJudge = MCTSJudge("released")  # released | vigorl (see above)
    limit: int = 0  # search only the first this many questions of the dataset (0: all)
    seed: int = 0  # teacher sampling and "at least N thoughts" draws (per question: seed + question id)
    make_data: int = 0  # generate this many synthetic data.task prompts at data.path if missing
    crash_after: int = 0  # fault injection for tests: hard-exit after writing this many trees (0: never)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)  # MLflow


def _sft_learner() -> LearnerConfig:
    # docs/algorithm.md §7: full fine-tune, vision tower frozen, lr 1e-6 cosine with warmup 0.03; no reference model.
    # micro_batch_size 1: the loss is each example's token mean, averaged over the examples, as the released
    # SFT (LLaMA-Factory, per-device batch 1 x 8 GPUs x gradient accumulation 4) computed it
    return LearnerConfig(lr=1e-6, warmup_ratio=0.03, schedule=Schedule("cosine"), grad_clip=1.0, kl_coef=0.0, mini_batch_size=0,
                         micro_batch_size=1)


@dataclass
class SFTConfig:
    """`vigorl sft`: supervised fine-tuning on sharegpt rows with the RL learner's DeepSpeed code (docs/algorithm.md §7)."""

    out: str = "runs/sft"  # run dir: the HF checkpoint under out/model (with its vigorl_run.json), summary.json
    address: str = ""  # Ray address; "" starts a local Ray on 127.0.0.1 (RAY_ADDRESS also works)
    model: ModelConfig = field(default_factory=ModelConfig)  # the model to fine-tune (a local HF dir)
    # data: a dir with train.jsonl / val.jsonl (vigorl linearize / to-multiturn output), a dir with a LLaMA-Factory
    # dataset_info.json (with `dataset`), or one .json (array) / .jsonl / .parquet file of sharegpt or alpaca rows
    data: str = "runs/sft_data"  # the SFT data: dir or file (see above)
    dataset: str = ""  # data=DIR: dataset_info.json entry name(s), comma-separated, read as LLaMA-Factory reads them
    val_dataset: str = ""  # validation: dataset_info.json entry name(s) (with `dataset`), else a file ("": val.jsonl)
    image_root: str = ""  # where relative image paths resolve ("": the data dir, or the data file's dir)
    learner: LearnerConfig = field(default_factory=_sft_learner)  # optimizer, schedule, ZeRO, frozen vision
    batch_size: int = 32  # examples per optimizer step (docs/algorithm.md §7: effective batch 32)
    epochs: int = 1  # passes over train.jsonl (released code: 1; paper: 3)
    max_steps: int = 0  # stop after this many optimizer steps (0: all epochs); the schedule spans these
    cutoff_len: int = 8192  # longer examples are bad rows (docs/algorithm.md §7 sequence cutoff)
    on_bad_row: OnBad = OnBad("raise")  # raise (an error naming the row) | skip (counted by reason: console, MLflow
    # sft/skipped_rows[/<reason>], out/summary.json) for missing images, points outside the image (or on its
    # far border), over-long or empty rows (learner.sft.REASONS); the paper recipes skip, as the released SFT
    # trained on such rows
    eval_every: int = 0  # validation loss every this many steps (0: once at the end; none without val.jsonl)
    seed: int = 0  # shuffling
    learner_cpus: float = 2.0  # CPUs of the learner rank
    learner_gpus: float = 0.0  # GPUs of the learner rank
    tracking: TrackingConfig = field(default_factory=TrackingConfig)  # MLflow


def _demo_rollout() -> RolloutConfig:
    # one episode; a random model cannot write the format by itself, so its turns are constrained
    return RolloutConfig(group_size=1, prompt="plain", guided=True, min_zooms=2)


@dataclass
class DemoConfig:
    """`vigorl demo`: build the tiny model and data if missing, play and score one zoom episode (the training
    actor's episode code, `actors.rollout.Rollout`)."""

    out: str = "runs/demo"  # where the episode's crops, picture and JSON go
    model: ModelConfig = field(default_factory=ModelConfig)  # the policy model and image bounds
    sampling: SamplingConfig = field(default_factory=SamplingConfig)  # vLLM sampling per turn
    zoom: ZoomConfig = field(default_factory=ZoomConfig)  # crop geometry and image budget
    data: DataConfig = field(default_factory=DataConfig)  # dataset, task and reward mode
    # guided (default true) constrains turns to the ViGoRL grammar; min_zooms (default 2): zooms before an answer
    rollout: RolloutConfig = field(default_factory=_demo_rollout)  # prompt, budget, guided decoding (1 episode)
    n_prompts: int = 4  # synthetic prompts to generate when the dataset is missing
    row: int = 0  # which dataset row to play
    vocab: Vocab = Vocab("small")  # tiny model vocabulary when it must be built: small | qwen


def _eval_sampling() -> SamplingConfig:
    # the released evaluation scripts: temperature 0.5; top-p 1.0 (eval_spatial.sh, eval_web_grounding.sh;
    # eval_multiturn.sh uses 0.99, which the multi-turn recipes set)
    return SamplingConfig(temperature=0.5, top_p=1.0)


def _eval_rollout() -> RolloutConfig:
    return RolloutConfig(group_size=1, forced_answer_temperature=0.0)  # released: the forced answer is greedy


@dataclass
class EvalConfig:
    """`vigorl eval`: score a model on a benchmark or a synthetic set with rollout actors only (no learner)."""

    out: str = "runs/eval"  # output dir: items.jsonl (one line per item and sample), summary.json, gallery/;
    # a rerun with the same out skips the items already in items.jsonl
    address: str = ""  # Ray address; "" starts a local Ray on 127.0.0.1 (RAY_ADDRESS also works)
    model: ModelConfig = field(default_factory=ModelConfig)  # the model to score and its image bounds
    sampling: SamplingConfig = field(default_factory=_eval_sampling)  # vLLM sampling (0.5: docs/algorithm.md §5)
    zoom: ZoomConfig = field(default_factory=ZoomConfig)  # crop geometry of multi-turn episodes
    # data.path: the benchmark folder or a released evaluation file (with `benchmark`), or any data data.format
    # reads (without: prompts.parquet, the released RL data, verl, `datasets`); data.mode: single_turn |
    # single_turn_vanilla | multi_turn; data.task: picks official defaults and is the task of rows without a task
    # column (each item is scored by its own row's task)
    data: DataConfig = field(default_factory=DataConfig)  # items, reward mode
    benchmark: str = ""  # a data_gen.benchmarks.LOADERS name (vstar, screenspot_v2, blink, ...); "": data.path by data.format
    benchmark_file: str = ""  # the loader's annotation file under data.path ("": the loader's default name)
    # prompt, response budget, system prompt file; group_size = samples per item (k > 1 adds pass@k)
    rollout: RolloutConfig = field(default_factory=_eval_rollout)  # episodes per item and their prompt
    # rollout_actors / rollout_cpus / rollout_gpus / tensor_parallel_size place the actors (learner_* unused)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)  # rollout actors and their resources
    batch: int = 32  # items per actor call (one vLLM batch)
    limit: int = 0  # score only the first this many items (0: all)
    on_bad_item: OnBad = OnBad("skip")  # a row with a missing/corrupt image or bad gold: skip (counted by reason) | raise
    gallery: int = 24  # items drawn into out/gallery/index.html (failures first; 0: no gallery)
    crash_after: int = 0  # fault injection for tests: hard-exit after writing this many batches (0: never)
    verbose: bool = False  # rollout actors' and engines' output on the console too (default: out/logs/ only)
    # official: the released evaluation's judge of the benchmark (rewards.eval_judge: string match for V*,
    # SAT, BLINK; point in box for ScreenSpot; lenient, with its format gate); reward: the RL reward's
    # strict accuracy (rewards.score)
    judge: EvalJudge = EvalJudge("official")  # official | reward
    # false: the released --rollout_no_thinking (base models prompted without tags): the whole output is the
    # answer (official judge only)
    judge_thinking: bool = True  # the answer is read from <answer> tags behind the format gate
    tracking: TrackingConfig = field(default_factory=TrackingConfig)  # MLflow (experiment: vigorl-eval)


# ---- official per-recipe values for the fields left null ------------------------------------------

# run_vigorl.sh (Gabesarch/grounded-rl @e7970c0): MULTITURN=true overrides these.
OFFICIAL_SINGLE_TURN = dict(group_size=5, grad_clip=1.0, warmup_ratio=0.0, mini_batch_prompts=64)
OFFICIAL_MULTI_TURN = dict(group_size=8, grad_clip=0.2, warmup_ratio=0.05, mini_batch_sequences=64)
OFFICIAL_MAX_PIXELS = {("visual_search", "multi_turn"): 2_850_000}  # V* multi-turn; everything else:
DEFAULT_MAX_PIXELS = 4_194_304
# The released evaluation scripts: images up to 3600 x 3600 px (eval_multiturn.sh, eval_web_grounding.sh);
# spatial caps the longer side at 1260 px (eval_spatial.sh), approximated here as 1260 x 1260 px.
EVAL_MAX_PIXELS = {"spatial": 1260 * 1260}
DEFAULT_EVAL_MAX_PIXELS = 3600 * 3600


def official_defaults(cfg: T) -> T:
    """Fill the fields left null with the released recipe's value for `data.task` / `data.mode`, in
    place; returns `cfg`. Explicit values always win."""
    from rewards import is_multi_turn

    if not isinstance(getattr(cfg, "data", None), DataConfig):  # no task / mode to take defaults from
        return cfg
    multi = is_multi_turn(cfg.data.mode)
    if cfg.model.max_pixels is None and isinstance(cfg, EvalConfig):
        cfg.model.max_pixels = EVAL_MAX_PIXELS.get(cfg.data.task, DEFAULT_EVAL_MAX_PIXELS)
    elif cfg.model.max_pixels is None:
        cfg.model.max_pixels = OFFICIAL_MAX_PIXELS.get((cfg.data.task, cfg.data.mode), DEFAULT_MAX_PIXELS)
    if not hasattr(cfg, "learner"):
        return cfg
    off = OFFICIAL_MULTI_TURN if multi else OFFICIAL_SINGLE_TURN
    if cfg.rollout.group_size is None:
        cfg.rollout.group_size = off["group_size"]
    if cfg.learner.grad_clip is None:
        cfg.learner.grad_clip = off["grad_clip"]
    if cfg.learner.warmup_ratio is None:
        cfg.learner.warmup_ratio = off["warmup_ratio"]
    if cfg.learner.mini_batch_size is None:
        cfg.learner.mini_batch_size = (off["mini_batch_sequences"] if multi
                                       else off["mini_batch_prompts"] * cfg.rollout.group_size)
    return cfg


# ---- value checks, run by `load` on every config (all before Ray starts) --------------------------------
# Choice fields are Enums (OmegaConf refuses other values); here: number ranges, the few choices that
# include "" (not an Enum member name), registry names and rules across fields. A value that cannot run
# (a negative staleness trains nothing, a negative checkpoint_every checkpoints every step) is refused
# with its key, not discovered after the engines loaded.

@dataclass(frozen=True)
class Range:
    """lo <= v <= hi (`lo_open` / `hi_open`: strict); None: unbounded. Also refuses NaN and infinities."""

    lo: Optional[float] = None
    hi: Optional[float] = None
    lo_open: bool = False
    hi_open: bool = False

    def ok(self, v: Any) -> bool:
        return (math.isfinite(v) and (self.lo is None or (v > self.lo if self.lo_open else v >= self.lo))
                and (self.hi is None or (v < self.hi if self.hi_open else v <= self.hi)))

    def __str__(self) -> str:
        if self.hi is None:
            return f"must be {'>' if self.lo_open else '>='} {self.lo:g}"
        return (f"must be in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}"
                f"{')' if self.hi_open else ']'}")


@dataclass(frozen=True)
class OneOf:
    """A choice that includes "" (which cannot be an Enum member's name)."""

    values: tuple

    def ok(self, v: Any) -> bool:
        return v in self.values

    def __str__(self) -> str:
        return f"must be one of {', '.join(repr(v) for v in self.values)}"


GE0, GE1 = Range(0), Range(1)  # counts where 0 means none / off, and counts that need one
GT0 = Range(0, lo_open=True)  # rates, timeouts, sizes
UNIT = Range(0, 1)  # probabilities and fractions
TOP_P = Range(0, 1, lo_open=True)  # nucleus mass: 0 keeps nothing

# Every int / float field of the command schemas has a rule (tests/test_config_values.py checks it);
# null (Optional fields left for `official_defaults`) is always accepted.
RULES: dict[type, dict[str, Any]] = {
    ModelConfig: dict(min_pixels=GE1, max_pixels=GE1, max_model_len=GE1),
    SamplingConfig: dict(temperature=GE0, top_p=TOP_P, max_tokens_per_turn=GE1, seed=GE0),
    ZoomConfig: dict(half_size=GE1, out_size=GE1, max_images=GE1),
    RolloutConfig: dict(group_size=GE1, response_budget=GE1, min_zooms=GE0, forced_answer_temperature=GE0),
    # grad_clip 0: DeepSpeed's gradient_clipping 0 clips nothing; clip_low < 1: log(1 - clip_low) in the loss;
    # dual_clip > 1: the dual-clip bound (Ye et al. 2020; EasyR1 asserts clip_ratio_dual > 1)
    LearnerConfig: dict(lr=GT0, weight_decay=GE0, warmup_ratio=UNIT, grad_clip=GE0, mini_batch_size=GE0,
                        micro_batch_size=GE1, logprob_micro_batch_size=GE1, ppo_epochs=GE1, kl_coef=GE0,
                        clip_low=Range(0, 1, hi_open=True), clip_high=GE0, dual_clip=Range(1, lo_open=True),
                        zero_stage=Range(0, 3), zero3_gather_mb=GT0),
    # restart_attempts 0 would start no replacement at all (the slot would stay dead)
    ClusterConfig: dict(rollout_actors=GE1, rollout_cpus=GE0, rollout_gpus=GE0, tensor_parallel_size=GE1,
                        learner_ranks=GE1, learner_cpus=GE0, learner_gpus=GE0, sync_timeout_s=GT0,
                        rollout_timeout_s=GE0, start_timeout_s=GT0, learner_timeout_s=GT0, restart_attempts=GE1,
                        restart_backoff_s=GE0,
                        gpu_memory_utilization=Range(0, 1, lo_open=True), learner_threads=GE0,
                        rollout_threads=GE0),
    LoopConfig: dict(steps=GE1, prompts_per_step=GE1, max_staleness=GE0, tis_cap=GT0, max_queue=GE1, seed=GE0,
                     learner_delay_s=GE0),
    TrackingConfig: dict(picture_every=GE0, checkpoint_every=GE0, keep_resume=GE1, flush_timeout_s=GE0),
    TrainConfig: dict(make_tiny=OneOf(("", "small", "qwen")), make_data=GE0),
    TeacherConfig: dict(error_rate=UNIT, answer_rate=UNIT, tensor_parallel_size=GE1, gpus=GE0, cpus=GE0,
                        temperature=GE0, top_p=TOP_P, max_tokens=GE1, max_model_len=GE1, min_thoughts_low=GE0,
                        min_thoughts_high=GE0),
    MCTSConfig: dict(simulations=GE1, c=GE0, children=GE1, rollouts_per_child=GE1, rollout_steps=GE1,
                     max_depth=GE1),
    MCTSJobConfig: dict(workers=GE1, worker_cpus=GE0, question_timeout_s=GT0, limit=GE0, seed=GE0, make_data=GE0,
                        crash_after=GE0),
    SFTConfig: dict(batch_size=GE1, epochs=GE1, max_steps=GE0, cutoff_len=GE1, eval_every=GE0, seed=GE0,
                    learner_cpus=GE0, learner_gpus=GE0),
    DemoConfig: dict(n_prompts=GE1, row=GE0),
    EvalConfig: dict(batch=GE1, limit=GE0, gallery=GE0, crash_after=GE0),
}


def _registry(name: Any, registry) -> str | None:
    if name in registry:
        return None
    return f"unknown name {str(name)!r}{did_you_mean(name, registry)}; valid: {', '.join(sorted(registry))}"


def _across(obj: Any) -> list[tuple[str, str]]:
    """(field, problem) for the rules that need more than one field, or a registry, of `obj`."""
    import rewards

    out: list[tuple[str, str]] = []
    if isinstance(obj, ModelConfig) and obj.max_pixels is not None and obj.max_pixels < obj.min_pixels:
        out.append(("max_pixels", f"must be >= min_pixels ({obj.min_pixels})"))
    if isinstance(obj, DataConfig):
        out += [(k, why) for k, reg in (("task", rewards.TASKS), ("mode", rewards.MODES))
                if (why := _registry(getattr(obj, k), reg))]
    if isinstance(obj, TeacherConfig):
        if obj.min_thoughts_high < obj.min_thoughts_low:
            out.append(("min_thoughts_high", f"must be >= min_thoughts_low ({obj.min_thoughts_low})"))
        if obj.kind == "vllm" and not obj.model_path:
            out.append(("model_path", "teacher.kind=vllm needs the teacher model (a local dir or Hub id)"))
    if isinstance(obj, (EvalConfig, TrainConfig)) and obj.benchmark:
        from data_gen.benchmarks import LOADERS

        if why := _registry(obj.benchmark, LOADERS):
            out.append(("benchmark", why + " (or \"\": data.path's prompts.parquet)"))
    if isinstance(obj, TrainConfig) and obj.rollout.group_size is not None and obj.rollout.group_size < 2:
        out.append(("rollout.group_size", "must be >= 2 in training: GRPO's advantage is a reward minus its "
                                          "group's mean, so a group of one has nothing to learn from"))
    if isinstance(obj, (TrainConfig, EvalConfig)):
        try:
            nccl_sync(obj.cluster)  # GPU placements that cannot run
        except ValueError as e:
            out.append(("cluster", str(e)))
    return out


def problems(obj: Any, prefix: str = "") -> list[str]:
    """Every bad value in the config tree `obj`, one line each, naming its dotted key."""
    found = []
    docs = field_docs(type(obj))
    rules = RULES.get(type(obj), {})
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v):
            found += problems(v, f"{prefix}{f.name}.")
            continue
        rule = rules.get(f.name)
        if rule is None or v is None:  # null: left for `official_defaults`
            continue
        if isinstance(rule, Range) and (isinstance(v, bool) or not isinstance(v, (int, float))):
            continue  # a wrong type is OmegaConf's error, raised before
        if not rule.ok(v):
            doc = f" — {f.name}: {docs[f.name]}" if docs.get(f.name) else ""
            found.append(f"bad value for config key '{prefix}{f.name}': {_shown(v)} ({rule}){doc}")
    for key, why in _across(obj):
        found.append(why if key == "cluster" else f"bad value for config key '{prefix}{key}': {why}")
    return found


def validate(obj: T) -> T:
    """Refuse `obj` (ConfigError listing every bad value by key) unless all its values can run; returns it."""
    if found := problems(obj):
        raise ConfigError("config: " + found[0] if len(found) == 1
                          else "config: bad values:\n  " + "\n  ".join(found))
    return obj


# ---- the documentation of the fields, for `vigorl <cmd> --help` ------------------------------------------

def field_docs(cls: type, full: bool = False) -> dict[str, str]:
    """Each field of dataclass `cls` -> its one-line doc: the comment ending its definition in the source
    (tokenize finds the comments, ast each field's lines, so a default spanning lines is no problem).
    `full`: a doc that says "see above" gets the comment block above the field prepended."""
    import ast
    import inspect
    import io
    import textwrap
    import tokenize

    if (cls, full) in _DOCS:
        return _DOCS[cls, full]
    try:
        src = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):  # no source (a frozen build): no docs rather than no config
        return _DOCS.setdefault((cls, full), {})
    lines = src.splitlines()
    comments = {t.start[0]: t.string.lstrip("#").strip()
                for t in tokenize.generate_tokens(io.StringIO(src).readline) if t.type == tokenize.COMMENT}
    docs = {}
    for node in ast.parse(src).body[0].body:  # type: ignore[attr-defined]
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            doc = comments.get(node.end_lineno or node.lineno) or comments.get(node.lineno, "")
            if full and "see above" in doc:
                above, n = [], node.lineno - 1
                while n >= 1 and lines[n - 1].strip().startswith("#"):
                    above.insert(0, comments.get(n, ""))
                    n -= 1
                doc = " ".join(above + [re.sub(r"[;,]?\s*\(?see above\)?", "", doc).strip()]).strip()
            docs[node.target.id] = doc
    return _DOCS.setdefault((cls, full), docs)


_DOCS: dict[tuple[type, bool], dict[str, str]] = {}


def _type_name(tp: Any) -> str:
    if isinstance(tp, type) and issubclass(tp, Enum):
        return "|".join(m.value for m in tp)
    args = typing.get_args(tp)
    if typing.get_origin(tp) is typing.Union and type(None) in args:
        return "|".join(_type_name(a) for a in args if a is not type(None)) + "|null"
    return getattr(tp, "__name__", str(tp))


def _shown(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, str):
        return str(v) if v else '""'
    return repr(v)


def describe(schema: type, obj: Any = None, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(dotted key, type, default, one-line doc) of every field of `schema`, nested ones included, with the
    defaults of `schema()` (so a command's own defaults, e.g. eval's sampling temperature 0.5)."""
    obj = schema() if obj is None else obj
    hints, docs, out = typing.get_type_hints(type(obj)), field_docs(type(obj), full=True), []
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v):
            out += describe(type(v), v, f"{prefix}{f.name}.")
        else:
            out.append((f"{prefix}{f.name}", _type_name(hints[f.name]), _shown(v), docs.get(f.name, "")))
    return out
