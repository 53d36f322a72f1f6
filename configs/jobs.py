"""The other commands' configs: `vigorl mcts` (`MCTSJobConfig`, with its `TeacherConfig`), `vigorl sft`
(`SFTConfig`), `vigorl demo` (`DemoConfig`) and `vigorl eval` (`EvalConfig`), built from the shared pieces in
configs/schema.py, with each command's own defaults (the `_*` factories). Fields are documented where they
are defined, as in configs/schema.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from configs.base import choice
from configs.schema import (ClusterConfig, DataConfig, LearnerConfig, ModelConfig, RolloutConfig, SamplingConfig,
                            Schedule, TrackingConfig, ZoomConfig)
from data_gen.mcts import MCTSConfig

TeacherKind = choice("TeacherKind", "scripted", "vllm")
MCTSJudge = choice("MCTSJudge", "released", "vigorl")  # rewards.judges.JUDGE_KINDS
EvalJudge = choice("EvalJudge", "official", "reward")
OnBad = choice("OnBad", "raise", "skip")  # a bad data row: stop with an error naming it, or skip and count it
Vocab = choice("Vocab", "small", "qwen")  # tiny model vocabularies (data_gen.tiny_model)


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
    # a search worker that dies (process killed, out of memory, node lost) is replaced and its question searched
    # again (cluster/workqueue.py), at most this many times in a row per worker before the job stops
    restart_attempts: int = 3  # replacements in a row per search worker (see above)
    restart_backoff_s: float = 5.0  # wait before replacement k+1 of one worker: restart_backoff_s * 2**(k-1)
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
    # the loss is each example's token mean, averaged over the examples, as the released SFT (LLaMA-Factory,
    # per-device batch 1 x 8 GPUs x gradient accumulation 4) computed it, whatever micro_batch_size (Learner.sft_step)
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
