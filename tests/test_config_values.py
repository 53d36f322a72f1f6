"""Config values are checked when the config loads, before Ray starts: choices are Enums (OmegaConf refuses
another value and lists the valid ones), numbers have ranges, registry names are looked up, and every
refusal names the key. Also the CLI's --print-config, --help, --dry-run and its one-line errors."""

import dataclasses
import json
import pickle
import typing
from pathlib import Path

import pytest

from configs.base import Choice, ConfigError
from configs.fields import describe
from configs.jobs import DemoConfig, EvalConfig, MCTSJobConfig, MCTSJudge, SFTConfig
from configs.load import load, to_flat_dict
from configs.released import official_defaults
from configs.rules import RULES
from configs.schema import LoopMode, Schedule, TrainConfig

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = {"train": TrainConfig, "eval": EvalConfig, "sft": SFTConfig, "mcts": MCTSJobConfig, "demo": DemoConfig}

# (command, override, the key the refusal names). Each value is one a user can type and that, before these
# checks, passed every check made before Ray (or failed only inside an actor or the learner).
BAD = [
    ("train", "loop.max_staleness=-1", "loop.max_staleness"),  # trained nothing: every sample too stale
    ("train", "learner.mini_batch_size=-3", "learner.mini_batch_size"),  # trained nothing
    ("train", "tracking.checkpoint_every=-1", "tracking.checkpoint_every"),  # checkpointed every step
    ("train", "learner.schedule=cosin", "learner.schedule"),  # failed in the learner after the engines loaded
    ("train", "loop.mode=asynch", "loop.mode"),
    ("train", "loop.staleness_mode=clip", "loop.staleness_mode"),
    ("train", "loop.steps=0", "loop.steps"),
    ("train", "loop.prompts_per_step=0", "loop.prompts_per_step"),
    ("train", "loop.tis_cap=0", "loop.tis_cap"),
    ("train", "loop.max_queue=0", "loop.max_queue"),
    ("train", "learner.lr=0", "learner.lr"),
    ("train", "learner.lr=inf", "learner.lr"),
    ("train", "learner.warmup_ratio=1.5", "learner.warmup_ratio"),
    ("train", "learner.micro_batch_size=0", "learner.micro_batch_size"),
    ("train", "learner.ppo_epochs=0", "learner.ppo_epochs"),
    ("train", "learner.kl_coef=-0.1", "learner.kl_coef"),
    ("train", "learner.clip_low=1.0", "learner.clip_low"),  # log(1 - clip_low) in the loss
    ("train", "learner.dual_clip=0.5", "learner.dual_clip"),
    ("train", "learner.zero_stage=4", "learner.zero_stage"),
    ("train", "learner.grad_clip=-1", "learner.grad_clip"),
    ("train", "sampling.temperature=-0.5", "sampling.temperature"),
    ("train", "sampling.top_p=0", "sampling.top_p"),
    ("train", "sampling.top_p=1.5", "sampling.top_p"),
    ("train", "sampling.max_tokens_per_turn=0", "sampling.max_tokens_per_turn"),
    ("train", "sampling.seed=-1", "sampling.seed"),
    ("train", "rollout.group_size=1", "rollout.group_size"),  # GRPO: a group of one has no advantage
    ("train", "rollout.response_budget=0", "rollout.response_budget"),
    ("train", "rollout.min_zooms=-1", "rollout.min_zooms"),
    ("train", "rollout.prompt=vigorl_multi_tur", "rollout.prompt"),  # was an actor fault, retried 3 times
    ("train", "rollout.system_prompt_file=/nonexistent/prompt.jinja", "rollout.system_prompt_file"),
    ("train", "zoom.max_images=0", "zoom.max_images"),
    ("train", "zoom.half_size=0", "zoom.half_size"),
    ("train", "model.dtype=fp32", "model.dtype"),
    ("train", "model.min_pixels=0", "model.min_pixels"),
    ("train", "model.max_pixels=100", "model.max_pixels"),  # below min_pixels
    ("train", "cluster.rollout_actors=0", "cluster.rollout_actors"),
    ("train", "cluster.restart_attempts=0", "cluster.restart_attempts"),  # no replacement would ever start
    ("train", "cluster.gpu_memory_utilization=1.5", "cluster.gpu_memory_utilization"),
    ("train", "cluster.weight_sync=gloo", "cluster.weight_sync"),
    ("train", "cluster.tensor_parallel_size=0", "cluster.tensor_parallel_size"),
    ("train", "cluster.rollout_timeout_s=-1", "cluster.rollout_timeout_s"),
    ("train", "tracking.keep_resume=0", "tracking.keep_resume"),
    ("train", "tracking.picture_every=-5", "tracking.picture_every"),
    ("train", "make_tiny=big", "make_tiny"),
    ("train", "data.task=visual_serch", "data.task"),
    ("train", "data.mode=multiturn", "data.mode"),
    ("eval", "judge=offical", "judge"),
    ("eval", "on_bad_item=ignore", "on_bad_item"),
    ("eval", "benchmark=vstr", "benchmark"),
    ("eval", "batch=0", "batch"),
    ("eval", "limit=-1", "limit"),
    ("eval", "gallery=-1", "gallery"),
    ("eval", "rollout.group_size=0", "rollout.group_size"),
    ("eval", "rollout.forced_answer_temperature=-1", "rollout.forced_answer_temperature"),
    ("eval", "rollout.prompt=nope", "rollout.prompt"),
    ("eval", "cluster.rollout_gpus=-1", "cluster.rollout_gpus"),
    ("eval", "model.dtype=bf16", "model.dtype"),
    ("sft", "on_bad_row=ignore", "on_bad_row"),
    ("sft", "batch_size=0", "batch_size"),
    ("sft", "epochs=0", "epochs"),
    ("sft", "max_steps=-1", "max_steps"),
    ("sft", "cutoff_len=0", "cutoff_len"),
    ("sft", "learner.schedule=linear", "learner.schedule"),
    ("sft", "learner.warmup_ratio=-0.1", "learner.warmup_ratio"),
    ("sft", "learner_gpus=-1", "learner_gpus"),
    ("mcts", "teacher.kind=vlm", "teacher.kind"),
    ("mcts", "judge=strict", "judge"),
    ("mcts", "workers=0", "workers"),
    ("mcts", "search.simulations=0", "search.simulations"),
    ("mcts", "search.children=0", "search.children"),
    ("mcts", "teacher.error_rate=1.5", "teacher.error_rate"),
    ("mcts", "teacher.top_p=0", "teacher.top_p"),
    ("mcts", "teacher.min_thoughts_high=2", "teacher.min_thoughts_high"),  # below min_thoughts_low (3)
    ("mcts", "teacher.kind=vllm", "teacher.model_path"),  # a vLLM teacher needs its model
    ("mcts", "teacher.prompt_file=/nonexistent/mcts.jinja", "teacher.prompt_file"),
    ("mcts", "question_timeout_s=0", "question_timeout_s"),
    ("mcts", "data.task=nope", "data.task"),
    ("demo", "vocab=big", "vocab"),
    ("demo", "row=-1", "row"),
    ("demo", "n_prompts=0", "n_prompts"),
    ("demo", "model.dtype=double", "model.dtype"),
    ("demo", "rollout.prompt=vigorl", "rollout.prompt"),
]
# checked once paths are anchored, by the CLI (actors/ and data_gen files: configs/ cannot import actors/)
CLI_ONLY = {"rollout.prompt", "rollout.system_prompt_file", "teacher.prompt_file"}


def ids(row):
    return f"{row[0]}:{row[1]}"


def test_the_table_covers_every_command_and_forty_values():
    assert len(BAD) >= 40 and {cmd for cmd, _, _ in BAD} == set(SCHEMAS)


@pytest.mark.parametrize("cmd, override, key", [r for r in BAD if r[2] not in CLI_ONLY], ids=ids)
def test_bad_value_refused_at_load_naming_the_key(cmd, override, key):
    with pytest.raises(ConfigError) as e:
        load(SCHEMAS[cmd], None, [override])
    assert f"'{key}'" in str(e.value), str(e.value)


@pytest.fixture
def no_ray(monkeypatch):
    """The CLI in-process, as a user runs it, with Ray and the pre-launch checks (models, data) unreachable:
    a value the config checks let through fails the test loudly instead of starting anything."""
    import cluster.prelaunch
    import cluster.raystart

    def refuse(*a, **k):
        raise AssertionError("got past the config checks: Ray or the pre-launch checks were reached")

    monkeypatch.setattr(cluster.raystart, "init_ray", refuse)
    monkeypatch.setattr(cluster.prelaunch, "prelaunch", refuse)


@pytest.mark.parametrize("cmd, override, key", BAD, ids=ids)
def test_bad_value_refused_by_the_cli_before_ray(cmd, override, key, no_ray, tmp_path, capsys):
    from cluster.cli import main

    assert main([cmd, override, f"out={tmp_path / 'out'}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"vigorl {cmd}: ") and key in err, err
    assert not (tmp_path / "out").exists()  # nothing written


def test_did_you_mean():
    cases = [("loop.max_stalenes=1", "did you mean 'loop.max_staleness'?"),
             ("learner.schedule=cosin", "did you mean 'cosine'?"),
             ("data.task=visual_serch", "did you mean 'visual_search'?"),
             ("trackin.uri=x", "did you mean 'tracking'?")]
    for override, hint in cases:
        with pytest.raises(ConfigError, match=hint.replace("?", r"\?")):
            load(TrainConfig, None, [override])


def test_did_you_mean_in_a_yaml_recipe(tmp_path):
    p = tmp_path / "recipe.yaml"
    p.write_text("loop:\n  max_stalness: 2\n")
    with pytest.raises(ConfigError, match=r"recipe.yaml: unknown config key 'loop.max_stalness'.*did you mean "
                                          r"'loop.max_staleness'\?"):
        load(TrainConfig, p)


def test_several_bad_values_are_named_together():
    with pytest.raises(ConfigError) as e:
        load(TrainConfig, None, ["loop.max_staleness=-1", "learner.mini_batch_size=-3", "learner.lr=0"])
    for key in ("loop.max_staleness", "learner.mini_batch_size", "learner.lr"):
        assert f"'{key}'" in str(e.value)


def test_null_official_fields_pass_and_edges_are_accepted():
    cfg = official_defaults(load(TrainConfig, None, [
        "loop.max_staleness=0", "learner.mini_batch_size=0", "tracking.checkpoint_every=0", "sampling.top_p=1",
        "sampling.temperature=0", "learner.warmup_ratio=0", "learner.grad_clip=0", "cluster.rollout_timeout_s=0",
        "make_tiny=''", "make_tiny=qwen", "rollout.group_size=2"]))
    assert cfg.learner.mini_batch_size == 0 and cfg.make_tiny == "qwen"
    assert load(EvalConfig, None, ["benchmark=''", "rollout.group_size=1"]).rollout.group_size == 1


def test_choices_are_strings_everywhere(tmp_path):
    """A Choice member is its value: comparisons, dict keys, f-strings, str(), json, pickle (Ray), MLflow
    params (to_flat_dict + str) and the config.yaml `vigorl train --resume` reads back."""
    from cluster.resume import write_config

    cfg = load(TrainConfig, None, ["loop.mode=async", "learner.schedule=cosine", "model.dtype=bfloat16"])
    m = cfg.loop.mode
    assert isinstance(m, LoopMode) and isinstance(m, str)
    assert m == "async" and m in ("sync", "async") and {"async": 1}[m] == 1 and hash(m) == hash("async")
    assert f"{m}" == str(m) == "async" and f"{m:>6}" == " async" and json.dumps(m) == '"async"'
    assert pickle.loads(pickle.dumps(m)) is m
    assert to_flat_dict(cfg)["learner.schedule"] == "cosine"
    assert {k: str(v) for k, v in to_flat_dict(cfg).items()}["model.dtype"] == "bfloat16"
    back = load(TrainConfig, write_config(cfg, tmp_path))
    assert back.loop.mode is LoopMode("async") and back == dataclasses.replace(cfg, resume=False)
    assert "mode: async" in (tmp_path / "config.yaml").read_text()


def _numeric_fields(cls, prefix=""):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        args = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
        if dataclasses.is_dataclass(tp):
            yield from _numeric_fields(tp, f"{prefix}{f.name}.")
        elif args[0] in (int, float):
            yield cls, f.name, f"{prefix}{f.name}"


def test_every_number_has_a_range():
    """A new int / float field comes with its rule in configs.rules.RULES (or a refusal names it here)."""
    missing = sorted({key for schema in SCHEMAS.values() for cls, name, key in _numeric_fields(schema)
                      if name not in RULES.get(cls, {})})
    assert not missing, f"no range rule in configs.rules.RULES for {missing}"


def test_choices_match_the_code_that_reads_them():
    from configs import jobs, schema
    from data_gen.tiny_model import make_tiny_model  # noqa: F401 - the vocabularies it knows: small, qwen
    from learner.trainer import SCHEDULES
    from rewards.judges import JUDGE_KINDS

    assert {s.value for s in Schedule} == set(SCHEDULES)
    assert tuple(j.value for j in MCTSJudge) == tuple(JUDGE_KINDS)
    for enum in (v for m in (schema, jobs) for v in vars(m).values() if isinstance(v, type)
                 and issubclass(v, Choice) and v is not Choice):
        assert all(m.name == m.value for m in enum), enum  # Enum hashes the name: equal to the str's hash


def test_rollout_checks_raise_config_errors(tmp_path):
    from actors.actor import check_rollout

    cfg = load(EvalConfig, None, ["rollout.prompt=vigorl_single_turn"])
    check_rollout(cfg)
    with pytest.raises(ConfigError, match=r"'rollout.prompt': unknown prompt 'vigorl_singel_turn' \(did you mean "
                                          r"'vigorl_single_turn'\?\); valid: from_chat_template, plain"):
        check_rollout(load(EvalConfig, None, ["rollout.prompt=vigorl_singel_turn"]))
    (tmp_path / "empty.txt").write_text("\n")
    for path, why in ((tmp_path / "missing.txt", "does not exist"), (tmp_path / "empty.txt", "is empty"),
                      (tmp_path, "does not exist")):
        with pytest.raises(ConfigError, match=f"rollout.system_prompt_file: .* {why}"):
            check_rollout(load(EvalConfig, None, [f"rollout.system_prompt_file={path}"]))


def test_an_actor_constructor_config_error_is_not_a_fault():
    """The message Ray 2.60 gives for an actor whose constructor raised (ActorDiedError, actor_init_failed:
    the traceback as text, the exception object not kept), as seen from a real actor."""
    from cluster.pool import config_error

    class Died(Exception):
        actor_init_failed = True

    text = ("The actor died because of an error raised in its creation task, \x1b[36mray::RolloutActor.__init__()"
            "\x1b[39m (pid=1, ip=127.0.0.1, actor_id=ab, repr=<actors.actor.RolloutActor object at 0x7f>)\n"
            '  File "/work/main/actors/actor.py", line 60, in __init__\n    check_rollout(cfg)\n'
            "configs.base.ConfigError: bad value for config key 'rollout.prompt': unknown prompt 'x'")
    err = config_error(Died(text))
    assert isinstance(err, ConfigError) and str(err) == "bad value for config key 'rollout.prompt': unknown prompt 'x'"
    assert config_error(Died(text.replace("configs.base.ConfigError", "MemoryError"))) is None  # a fault
    not_init = Died(text)
    not_init.actor_init_failed = False  # died later (killed, OOM): a fault, whatever its text
    assert config_error(not_init) is None


def test_print_config_is_the_resolved_config_and_loads_back(tmp_path, capsys, no_ray):
    from cluster.cli import main

    layout = ROOT / "configs/layouts" / sorted(p.name for p in (ROOT / "configs/layouts").glob("*.yaml"))[0]
    argv = ["train", "--config", str(ROOT / "configs/grpo_mt_visual_search.yaml"), "--config", str(layout),
            "--print-config", "loop.mode=async", f"out={tmp_path}"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    (tmp_path / "printed.yaml").write_text(text)
    printed = load(TrainConfig, tmp_path / "printed.yaml")
    want = official_defaults(load(TrainConfig, [ROOT / "configs/grpo_mt_visual_search.yaml", layout],
                                  ["loop.mode=async", f"out={tmp_path}"]))
    assert printed.rollout.group_size == 8 and printed.learner.grad_clip == 0.2  # official defaults filled
    assert printed.loop.mode == "async" and printed.cluster == want.cluster  # override and layout applied
    assert to_flat_dict(printed) == to_flat_dict(want)


@pytest.mark.parametrize("cmd", sorted(SCHEMAS))
def test_help_lists_every_field_with_doc_and_default(cmd, capsys):
    from cluster.cli import main

    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--print-config" in out and "--dry-run" in out and "--debug" in out
    lines = out.splitlines()
    for key, type_, default, doc in describe(SCHEMAS[cmd]):
        line = next((ln for ln in lines if ln.strip().startswith(f"{key} = ")), None)
        assert line is not None, f"vigorl {cmd} --help does not list {key}"
        assert f"{key} = {default}" in line and f"[{type_}]" in line and doc and doc in line


def test_help_shows_the_command_defaults_and_choices(capsys):
    from cluster.cli import main

    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    out = capsys.readouterr().out
    assert "sampling.temperature = 0.5" in out  # eval's own default, not the training one
    assert "[official|reward]" in out and "[auto|float32|bfloat16|float16]" in out


def test_non_config_errors_are_one_line_unless_debug(monkeypatch, capsys, tmp_path):
    import cluster.prelaunch
    from cluster.cli import main

    def boom(*a, **k):
        raise FileNotFoundError("data.path: /somewhere does not exist\n(second line of detail)")

    monkeypatch.setattr(cluster.prelaunch, "prelaunch", boom)
    monkeypatch.setattr("sys.argv", ["vigorl", "eval", f"out={tmp_path}"])
    assert main() == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("vigorl eval: data.path: /somewhere does not exist "), err
    monkeypatch.setattr("sys.argv", ["vigorl", "eval", f"out={tmp_path}", "--debug"])
    with pytest.raises(FileNotFoundError):  # the traceback
        main()
    with pytest.raises(FileNotFoundError):  # in-process callers (tests, scripts) get the exception
        main(["eval", f"out={tmp_path}"])


def test_dry_run_reports_and_exits_without_ray(monkeypatch, capsys, tmp_path):
    import cluster.prelaunch
    import cluster.raystart
    from cluster.cli import main

    seen = {}

    def checks(cmd, cfg, *, overwrite=False, dry_run=False):
        seen.update(cmd=cmd, dry_run=dry_run)
        return cfg

    def refuse(*a, **k):
        raise AssertionError("--dry-run started Ray")

    monkeypatch.setattr(cluster.raystart, "init_ray", refuse)
    monkeypatch.setattr(cluster.prelaunch, "prelaunch", checks)
    assert main(["train", "--dry-run", f"out={tmp_path}"]) == 0
    assert seen == {"cmd": "train", "dry_run": True} and "dry run: all checks passed" in capsys.readouterr().out

    def fails(cmd, cfg, **k):
        raise FileNotFoundError(f"data.path: {tmp_path / 'nope'} does not exist")

    monkeypatch.setattr(cluster.prelaunch, "prelaunch", fails)
    assert main(["train", "--dry-run", f"out={tmp_path}"]) == 1
    assert "--dry-run: FileNotFoundError: data.path:" in capsys.readouterr().err
    assert main(["train", "--dry-run", "loop.max_staleness=-1", f"out={tmp_path}"]) == 2  # a config error first
    assert "'loop.max_staleness'" in capsys.readouterr().err
