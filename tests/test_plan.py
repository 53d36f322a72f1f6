"""`vigorl plan` (cluster/plan.py): GPU memory per role from real parameter shapes (meta-device models built
from the published Qwen2.5-VL-3B / 7B config.json files in configs/models/), the verdict, the knobs, and
`vigorl train`'s pre-launch refusal. No weights, no GPU."""

import json
from pathlib import Path

import pytest

from cluster.plan import GiB, PlanError, check_before_launch, learner_parts, make_plan, model_shapes, with_knobs
from configs.load import load
from configs.released import official_defaults
from configs.schema import TrainConfig

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "configs" / "models"
GRPO = sorted(p.name for p in (ROOT / "configs").glob("grpo_*.yaml"))


@pytest.fixture(scope="module")
def shapes():
    return {m: model_shapes(MODELS / m) for m in ("qwen2_5_vl_3b", "qwen2_5_vl_7b")}


def cfg_of(*files, overrides=()):
    return official_defaults(load(TrainConfig, [str(ROOT / "configs" / f) for f in files], list(overrides)))


def test_shapes_are_the_published_models(shapes):
    s7, s3 = shapes["qwen2_5_vl_7b"], shapes["qwen2_5_vl_3b"]
    assert (s7.params, s7.vision, s7.tied, s7.hidden, s7.layers, s7.kv_dim, s7.vocab) == (
        8_292_166_656, 676_550_144, False, 3584, 28, 512, 152_064)  # "8.29B params" on the model card
    assert (s3.params, s3.vision, s3.tied, s3.kv_dim) == (3_754_622_976, 668_684_288, True, 256)  # tied embedding


def test_learner_parts_hand_worked(shapes):
    s = shapes["qwen2_5_vl_7b"]
    cfg = cfg_of("grpo_mt_visual_search.yaml", "layouts/node8.yaml", overrides=["learner.zero_stage=2"])
    p, t = s.params, s.params - s.vision  # the vision tower is frozen
    parts = learner_parts(s, cfg)
    assert parts["weights"] == pytest.approx(2 * p / GiB)  # ZeRO-2: whole bf16 weights on every rank
    assert parts["reference"] == pytest.approx(2 * p / GiB)
    assert parts["master"] == pytest.approx(4 * t / 4 / GiB) and parts["optimizer"] == pytest.approx(8 * t / 4 / GiB)
    assert parts["logprob recompute"] == pytest.approx(4 * 2048 * 152_064 * 10 / GiB)  # 4 sequences x 2,048 columns
    zero3 = learner_parts(s, cfg_of("grpo_mt_visual_search.yaml", "layouts/node8.yaml"))
    assert zero3["weights"] == pytest.approx(2 * p / 4 / GiB)


@pytest.mark.parametrize("recipe", GRPO)
@pytest.mark.parametrize("layout, model", [("node8", "qwen2_5_vl_7b"), ("multinode", "qwen2_5_vl_7b"),
                                           ("gpu1", "qwen2_5_vl_3b")])
def test_every_shipped_gpu_recipe_and_layout_fits_on_80gb(shapes, recipe, layout, model):
    cfg = cfg_of(recipe, f"layouts/{layout}.yaml", overrides=[f"model.path={MODELS / model}"])
    plan = make_plan(cfg, 80.0, shapes[model])
    assert plan.fits, plan.problems
    assert all(v <= 80.0 for v in plan.per_gpu.values())


def test_a_layout_that_cannot_fit_gets_knobs_that_do(shapes):
    cfg = cfg_of("grpo_mt_visual_search.yaml", "layouts/node8.yaml",
                 overrides=["learner.zero_stage=2", "learner.gradient_checkpointing=false",
                            "learner.logprob_micro_batch_size=8"])
    plan = with_knobs(cfg, 80.0, shapes["qwen2_5_vl_7b"])
    assert not plan.fits and "learner rank needs" in plan.problems[0]
    assert plan.fits_with_knobs and plan.knobs[:2] == ["learner.zero_stage=3", "learner.gradient_checkpointing=true"]
    fixed = cfg_of("grpo_mt_visual_search.yaml", "layouts/node8.yaml",
                   overrides=["learner.logprob_micro_batch_size=8"] + plan.knobs)
    assert make_plan(fixed, 80.0, shapes["qwen2_5_vl_7b"]).fits


def test_a_shared_gpu_too_small_is_refused_naming_both_roles(shapes):
    cfg = cfg_of("grpo_spatial.yaml", "layouts/gpu1.yaml", overrides=["learner.offload_optimizer=false"])
    plan = with_knobs(cfg, 40.0, shapes["qwen2_5_vl_3b"])
    assert not plan.fits and any("share one 40 GiB GPU" in p for p in plan.problems)
    assert any("gives it 8.0 GiB" in p for p in plan.problems)  # 0.2 of 40 GiB < the engine's 10.8
    assert "learner.offload_optimizer=true" in plan.knobs and "cluster.gpu_memory_utilization=0.3" in plan.knobs
    assert plan.fits_with_knobs


def test_train_refuses_a_layout_that_cannot_fit_before_ray(shapes):
    cfg = cfg_of("grpo_mt_visual_search.yaml", "layouts/node8.yaml",
                 overrides=[f"model.path={MODELS / 'qwen2_5_vl_7b'}", "learner.zero_stage=2",
                            "learner.gradient_checkpointing=false"])
    with pytest.raises(PlanError, match=r"(?s)DOES NOT FIT.*learner.zero_stage=3.*skip_memory_check"):
        check_before_launch(cfg)
    cfg.cluster.skip_memory_check = True
    assert check_before_launch(cfg) is None
    assert check_before_launch(cfg_of("local_cpu.yaml")) is None  # a CPU layout has no GPU memory to plan


def test_plan_command(capsys):
    from cluster.cli import main

    args = ["plan", "--config", str(ROOT / "configs/grpo_spatial.yaml"), "--config", str(ROOT / "configs/layouts/gpu1.yaml"),
            f"model.path={MODELS / 'qwen2_5_vl_3b'}"]
    assert main(args) == 0 and "verdict: fits" in capsys.readouterr().out
    assert main(args + ["--json", "--gpu-memory-gb", "24"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["fits"] is False and out["gpu_gb"] == 24 and out["knobs"]


def test_a_hub_id_plans_from_the_local_cache(tmp_path, monkeypatch):
    """Only config.json is needed: a Hub id resolves to its snapshot in the HF cache (huggingface_hub layout)."""
    from cluster.plan import config_dir

    snap = tmp_path / "models--Qwen--Qwen2.5-VL-7B-Instruct" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap / "config.json").write_text((MODELS / "qwen2_5_vl_7b" / "config.json").read_text())
    (tmp_path / "models--Qwen--Qwen2.5-VL-7B-Instruct" / "refs").mkdir()
    (tmp_path / "models--Qwen--Qwen2.5-VL-7B-Instruct" / "refs" / "main").write_text("abc123")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path))
    assert config_dir("Qwen/Qwen2.5-VL-7B-Instruct") == snap
    with pytest.raises(FileNotFoundError, match="not a Hub id in the local HF cache"):
        config_dir("Qwen/Missing")


def test_the_engine_dtype_follows_the_learner_unless_set():
    """`model.dtype=auto` (the default): bfloat16 on GPU, float32 on CPU, the learner's dtypes."""
    from actors.engine import engine_dtype

    assert load(TrainConfig, None, []).model.dtype == "auto"
    assert (engine_dtype("auto", gpu=True), engine_dtype("auto", gpu=False)) == ("bfloat16", "float32")
    assert engine_dtype("float16", gpu=True) == "float16"
