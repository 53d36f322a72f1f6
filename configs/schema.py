"""The training process's config (`vigorl train`, `TrainConfig`) and the pieces every process's config shares
(model, sampling, zoom, data, rollout, learner, cluster, tracking): one dataclass each, every field documented
by the comment ending its definition (`configs.fields.field_docs` shows them in `--help`).

The other commands' configs are in configs/jobs.py; loading and error messages in configs/load.py; value
rules in configs/rules.py; GPU placement rules in configs/placement.py; the released recipes' values for the
fields left null in configs/released.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from configs.base import choice

# The choices of the config fields below. Registry-backed names are checked at load too, against their
# registry (`configs.rules.validate`: data.task, data.mode, benchmark; rollout.prompt by
# `actors.actor.check_rollout`).
DType = choice("DType", "auto", "float32", "bfloat16", "float16")  # vLLM `dtype` names (auto: actors.engine.engine_dtype)
Schedule = choice("Schedule", "constant", "cosine")  # learner.trainer.SCHEDULES
WeightSync = choice("WeightSync", "auto", "nccl", "shm", "object_store")
LoopMode = choice("LoopMode", "sync", "async")
StalenessMode = choice("StalenessMode", "drop", "tis")


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
    prompt: str = "vigorl_multi_turn"  # data_gen.prompts registry name
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
    # sequences per forward/backward. GRPO: token-mean within, averaged over micro-batches (released); SFT: each
    # example's token mean, averaged over the step's examples, whatever the micro-batches (learner.grpo.row_means)
    micro_batch_size: int = 2  # sequences per forward/backward (see above)
    # order each mini-batch's sequences by length before cutting micro-batches: a multi-turn SFT step of 32
    # pads ~20 % less. In GRPO it changes which sequences share a micro-batch's token-mean (each micro-batch weighs
    # the same), so it is off by default, as released (in order); in SFT it changes the numbers only by
    # float rounding. The learning proof's recipes turn it on.
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
    # `vigorl sft` with vision_cache: the tower's outputs (training and validation images) are kept for the whole
    # run in host memory, up to this many MiB per learner rank (then further images run through the tower at each
    # use); a 112-px scene's are ~0.05 MiB for the tiny model, a 1,000-token screenshot's ~7 MiB for a 7B (bf16)
    sft_vision_cache_mb: float = 4096.0  # MiB of kept vision-tower outputs in an SFT run (see above)
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
    # a learner rank that dies (killed, OOM, node lost) ends its group; the driver starts a new one from the newest
    # resumable checkpoint (none yet: the model itself), reloads the rollout actors and trains the steps after it
    # again, in the same run (cluster/train.py `restart_learner`); this many times in a run, then the run stops
    learner_restart_attempts: int = 3  # learner restarts allowed per run (0: a dead learner ends the run)
    gpu_memory_utilization: float = 0.8  # GPU actors: the share of their GPU's memory vLLM takes (weights and
    # KV cache); where the learner shares the GPU (fractional rollout_gpus and learner_gpus) leave it room
    # torch/OpenMP threads per process; 0 = auto (configs/placement.py `torch_threads`): the CPUs it reserves,
    # and in sync mode on CPU the run's whole share (learner and actors take turns, so each may use the cores
    # the other leaves idle)
    learner_threads: int = 0  # per learner rank
    rollout_threads: int = 0  # per rollout actor (vLLM's CPU kernels)
    # `vigorl train` on a GPU layout first estimates each GPU's memory (`vigorl plan`, cluster/plan.py) and
    # refuses a layout that cannot fit; true launches anyway
    skip_memory_check: bool = False  # launch without the GPU memory plan's check



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
    # then the recipe's value, then the default (cluster/tracking_store.py `resolve_uri`, `resolve_experiment`)
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
    # a learner restart goes back to the newest resumable checkpoint: the steps since are trained again. A
    # resumable checkpoint alone (DeepSpeed's state and the ledger, no HF export) is cheaper: write one more often
    resume_every: int = 0  # also a resumable checkpoint every this many steps (0: only with checkpoint_every)
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
