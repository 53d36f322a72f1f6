"""Structured configs: defaults <- YAML <- key=value; unknown keys and wrong types name the key."""

from pathlib import Path

import pytest

from configs.base import ConfigError
from configs.jobs import DemoConfig
from configs.load import load, to_flat_dict

ROOT = Path(__file__).resolve().parent.parent


def test_recipe_and_overrides():
    cfg = load(DemoConfig, ROOT / "configs/demo.yaml", ["zoom.dot=true", "sampling.temperature=0.5"])
    assert cfg.zoom.dot is True and cfg.sampling.temperature == 0.5
    assert cfg.zoom.half_size == 182 and cfg.data.task == "visual_search"
    assert isinstance(cfg, DemoConfig)
    flat = to_flat_dict(cfg)
    assert flat["zoom.out_size"] == 672 and flat["model.path"] == "runs/tiny-model"


@pytest.mark.parametrize("override,needle", [
    ("zoom.dott=1", "unknown config key 'zoom.dott'. Valid keys under 'zoom.': dot, half_size, max_images, out_size"),
    ("nope=1", "unknown config key 'nope'"),
    ("zoom.half_size=big", "bad value for config key 'zoom.half_size'"),
    ("sampling.seed=1.5", "bad value for config key 'sampling.seed'"),
    ("rollout.guided=maybe", "bad value for config key 'rollout.guided'"),
    ("zoom.half_size", "is not key=value"),
])
def test_bad_overrides_name_the_key(override, needle):
    with pytest.raises(ConfigError) as e:
        load(DemoConfig, None, [override])
    assert needle in str(e.value)


def test_bad_yaml_key_names_file_and_key(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("model:\n  pth: x\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown config key 'model.pth'.*max_model_len"):
        load(DemoConfig, p)


def test_every_field_is_documented():
    """Each config field carries a comment where it is defined (the file is the documentation)."""
    import dataclasses
    import inspect

    import configs.jobs as j
    import configs.schema as c

    for cls in (c.ModelConfig, c.SamplingConfig, c.ZoomConfig, c.DataConfig, j.DemoConfig, c.RolloutConfig,
                c.LearnerConfig, c.ClusterConfig, c.LoopConfig, c.TrackingConfig, c.TrainConfig, j.TeacherConfig,
                j.MCTSJobConfig, j.SFTConfig, j.EvalConfig):
        src = inspect.getsource(cls)
        for f in dataclasses.fields(cls):
            line = next(ln for ln in src.splitlines() if ln.strip().startswith(f"{f.name}:"))
            assert "#" in line, f"{cls.__name__}.{f.name} has no comment"


def test_weight_sync_choice_and_gpu_placements():
    from configs.placement import nccl_sync, shm_sync
    from configs.schema import TrainConfig

    def sync(*overrides):
        return nccl_sync(load(TrainConfig, None, list(overrides)).cluster)

    def shm(*overrides):
        return shm_sync(load(TrainConfig, None, list(overrides)).cluster)

    assert shm() and shm("cluster.weight_sync=shm") and shm("cluster.rollout_gpus=0.5", "cluster.learner_gpus=0.5")
    assert not shm("cluster.weight_sync=object_store") and not shm("cluster.rollout_gpus=1", "cluster.learner_gpus=1")

    assert not sync()
    assert sync("cluster.rollout_gpus=1", "cluster.learner_gpus=1")
    assert sync("cluster.rollout_gpus=2", "cluster.tensor_parallel_size=2", "cluster.learner_gpus=1")
    assert not sync("cluster.rollout_gpus=1", "cluster.learner_gpus=1", "cluster.weight_sync=object_store")
    assert not sync("cluster.rollout_gpus=1")  # auto: the learner on CPU takes shared memory
    assert not sync("cluster.rollout_gpus=0.5", "cluster.learner_gpus=0.5")  # one shared GPU
    with pytest.raises(ValueError, match=r"'cluster.weight_sync': Invalid value 'carrier_pigeon', expected one of "
                                         r"\[auto, nccl, shm, object_store\]"):  # refused at load (a Choice)
        sync("cluster.weight_sync=carrier_pigeon")
    with pytest.raises(ValueError, match=r"weight_sync=nccl needs whole GPUs.*learner_gpus=0.5"):
        sync("cluster.weight_sync=nccl", "cluster.rollout_gpus=0.5", "cluster.learner_gpus=0.5")
    with pytest.raises(ValueError, match=r"weight_sync=nccl needs whole GPUs.*learner_gpus=0.0"):
        sync("cluster.weight_sync=nccl", "cluster.rollout_gpus=1")
    for bad in (["cluster.rollout_gpus=1", "cluster.tensor_parallel_size=2"],
                ["cluster.rollout_gpus=1.5"], ["cluster.rollout_gpus=0.5", "cluster.tensor_parallel_size=2"]):
        with pytest.raises(ValueError, match="one whole GPU per tensor-parallel rank"):
            sync(*bad)


@pytest.mark.parametrize("task,mode,expected", [
    # group, grad clip, warmup, mini-batch (sequences), max_pixels: run_vigorl.sh
    ("visual_search", "multi_turn", (8, 0.2, 0.05, 64, 2_850_000)),
    ("gui_grounding", "multi_turn", (8, 0.2, 0.05, 64, 4_194_304)),
    ("spatial", "single_turn", (5, 1.0, 0.0, 320, 4_194_304)),
    ("web_action", "single_turn_vanilla", (5, 1.0, 0.0, 320, 4_194_304)),
])
def test_official_recipe_defaults(task, mode, expected):
    from configs.released import official_defaults
    from configs.schema import TrainConfig

    cfg = official_defaults(load(TrainConfig, None, [f"data.task={task}", f"data.mode={mode}"]))
    got = (cfg.rollout.group_size, cfg.learner.grad_clip, cfg.learner.warmup_ratio, cfg.learner.mini_batch_size,
           cfg.model.max_pixels)
    assert got == expected
    assert (cfg.model.min_pixels, cfg.loop.prompts_per_step, cfg.learner.micro_batch_size) == (3136, 128, 2)


def test_explicit_values_win_over_official_defaults():
    from configs.released import official_defaults
    from configs.schema import TrainConfig

    cfg = official_defaults(load(TrainConfig, None, ["rollout.group_size=3", "learner.grad_clip=0.5",
                                                     "learner.mini_batch_size=0", "model.max_pixels=1000000"]))
    assert (cfg.rollout.group_size, cfg.learner.grad_clip, cfg.learner.mini_batch_size, cfg.model.max_pixels) == (
        3, 0.5, 0, 1_000_000)
    assert cfg.learner.warmup_ratio == 0.05  # still null in the overrides: the multi-turn default


@pytest.mark.parametrize("recipe, task, max_pixels, top_p", [
    ("eval_vstar_mt.yaml", "visual_search", 12_960_000, 0.99),  # eval_multiturn.sh: 3600 x 3600, top-p 0.99
    ("eval_screenspot_v2_mt.yaml", "gui_grounding", 12_960_000, 0.99),
    ("eval_vstar.yaml", "visual_search", 12_960_000, 1.0),  # eval_web_grounding.sh / eval_spatial.sh: 1.0
    ("eval_sat.yaml", "spatial", 1_587_600, 1.0),  # eval_spatial.sh: longer side <= 1260
    (None, "visual_search", 12_960_000, 1.0),  # no recipe: the released eval's values fill the nulls
    (None, "spatial", 1_587_600, 1.0),
])
def test_eval_recipes_follow_the_released_eval_scripts(recipe, task, max_pixels, top_p):
    from configs.jobs import EvalConfig
    from configs.released import official_defaults

    cfg = official_defaults(load(EvalConfig, ROOT / "configs" / recipe if recipe else None,
                                 [f"data.task={task}", "data.mode=multi_turn"]))
    assert (cfg.model.max_pixels, cfg.sampling.top_p, cfg.sampling.temperature) == (max_pixels, top_p, 0.5)
    assert cfg.rollout.forced_answer_temperature == 0.0 and cfg.judge == "official"  # greedy forced answer


def test_system_prompt_file(tmp_path):
    from data_gen.prompts import read_system_prompt

    assert read_system_prompt("") is None
    p = tmp_path / "prompt.jinja"
    p.write_text("  You are a helpful assistant.\n")
    assert read_system_prompt(str(p)) == "You are a helpful assistant."
    with pytest.raises(FileNotFoundError, match="system_prompt_file"):
        read_system_prompt(str(tmp_path / "missing.txt"))
    (tmp_path / "empty.txt").write_text(" \n")
    with pytest.raises(ValueError, match="empty"):
        read_system_prompt(str(tmp_path / "empty.txt"))


# Which schema a recipe in configs/ is, by its file name: <kind>_*.yaml or learn_<kind>.yaml.
RECIPE_KINDS = {"demo": "DemoConfig", "local_cpu": "TrainConfig", "grpo": "TrainConfig", "train": "TrainConfig",
                "mcts": "MCTSJobConfig", "sft": "SFTConfig", "base": "SFTConfig", "eval": "EvalConfig"}


def recipe_schema(path: Path) -> type:
    from configs import jobs, schema

    stem = path.stem.removeprefix("learn_")
    kinds = [k for k in RECIPE_KINDS if stem == k or stem.startswith(k + "_")]
    assert len(kinds) == 1, f"{path.name}: name it <kind>_*.yaml with kind one of {sorted(RECIPE_KINDS)}"
    return getattr(schema, RECIPE_KINDS[kinds[0]], None) or getattr(jobs, RECIPE_KINDS[kinds[0]])


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_recipe_validates_against_its_schema(path):
    """A renamed or mistyped key can never leave a shipped recipe broken."""
    from configs.released import official_defaults

    cfg = official_defaults(load(recipe_schema(path), path))
    assert cfg.model.max_pixels is None or cfg.model.max_pixels > 0


@pytest.mark.parametrize("layout", sorted((ROOT / "configs" / "layouts").glob("*.yaml")), ids=lambda p: p.name)
def test_resource_layouts_layer_on_a_recipe(layout):
    from configs.placement import nccl_sync
    from configs.schema import TrainConfig

    cfg = load(TrainConfig, [ROOT / "configs/grpo_mt_visual_search.yaml", layout])
    assert cfg.cluster.rollout_gpus > 0 and cfg.cluster.learner_gpus > 0  # actors and learner on GPUs
    nccl_sync(cfg.cluster)  # a placement that can run
    assert cfg.zoom.half_size == 182 and cfg.data.mode == "multi_turn"  # the recipe's own keys survive


def test_torch_threads_share_the_run_cpus_in_sync_mode():
    from configs.placement import torch_threads
    from configs.schema import ClusterConfig

    local = ClusterConfig()  # 1 learner + 1 actor, 1 CPU each
    assert torch_threads(local, "learner", sync=True) == 2 and torch_threads(local, "rollout", sync=True) == 2
    assert torch_threads(local, "learner", sync=False) == 1 and torch_threads(local, "rollout", sync=False) == 1
    # 1 learner of 2 CPUs + 3 actors of 1: 5 CPUs; the learner may take them all, each actor 5 // 3
    wide = ClusterConfig(rollout_actors=3, learner_cpus=2.0)
    assert torch_threads(wide, "learner", sync=True) == 5 and torch_threads(wide, "rollout", sync=True) == 1
    assert torch_threads(ClusterConfig(rollout_cpus=0.5), "rollout", sync=False) == 1  # rounded up
    # GPU runs and explicit values: no sharing
    assert torch_threads(ClusterConfig(learner_gpus=1.0, rollout_gpus=1.0), "learner", sync=True) == 1
    assert torch_threads(ClusterConfig(learner_threads=6), "learner", sync=False) == 6
    with pytest.raises(ValueError, match="cluster.rollout_threads"):
        torch_threads(ClusterConfig(rollout_threads=-1), "rollout", sync=True)


def test_system_prompt_file_reaches_the_engine_byte_for_byte(tmp_path):
    """The released format_prompt/*.jinja files are one line with literal backslash-n escapes, and the released
    RL trainer sends `f.read().strip()` as the system message: so do we (unescape is the option)."""
    from transformers import AutoProcessor

    from actors.rollout import Rollout
    from actors.zoom import ZoomSettings
    from data_gen.prompts import read_system_prompt
    from data_gen.rows import PromptRow
    from data_gen.tiny_model import make_tiny_model

    text = r'You answer {"a": [x, y]} in steps:\n- one <think> </think> each\n  a) zoom  \u00e9 {{ not jinja }}'
    f = tmp_path / "format_prompt.jinja"
    f.write_text("\n" + text + "\n")
    proc = AutoProcessor.from_pretrained(make_tiny_model(tmp_path / "m", vocab="qwen", size="tiny"))
    row = PromptRow("q1", "visual_search", "a.png", 64, 64, "What colour?", "red", ["red", "blue"])
    for unescape, want in ((False, text), (True, text.replace("\\n", "\n"))):
        r = Rollout(None, proc, ZoomSettings(), group_size=1, prompt="vigorl_multi_turn", mode="multi_turn",
                    system_prompt=read_system_prompt(str(f), unescape))
        ids = r._encode(proc.apply_chat_template(r.messages(row), add_generation_prompt=True, tokenize=False))
        sent = r.tok.decode(ids)  # the token ids vLLM is sent, as text
        assert sent.startswith(f"<|im_start|>system\n{want}<|im_end|>\n<|im_start|>user\n")
    assert "\\n" in text and "\n" not in text  # the default kept the two characters backslash, n
