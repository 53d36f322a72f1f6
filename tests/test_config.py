"""Structured configs: defaults <- YAML <- key=value; unknown keys and wrong types name the key."""

from pathlib import Path

import pytest

from cluster.config import ConfigError, DemoConfig, load, to_flat_dict

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
    ("guided=maybe", "bad value for config key 'guided'"),
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

    import cluster.config as c

    for cls in (c.ModelConfig, c.SamplingConfig, c.ZoomConfig, c.DataConfig, c.DemoConfig):
        src = inspect.getsource(cls)
        for f in dataclasses.fields(cls):
            line = next(ln for ln in src.splitlines() if ln.strip().startswith(f"{f.name}:"))
            assert "#" in line, f"{cls.__name__}.{f.name} has no comment"


def test_weight_sync_choice():
    from actors.actor import nccl_sync
    from cluster.config import TrainConfig

    assert not nccl_sync(load(TrainConfig))
    assert nccl_sync(load(TrainConfig, None, ["cluster.rollout_gpus=1"]))
    assert not nccl_sync(load(TrainConfig, None, ["cluster.rollout_gpus=1", "cluster.weight_sync=object_store"]))
    with pytest.raises(ValueError, match="cluster.weight_sync"):
        nccl_sync(load(TrainConfig, None, ["cluster.weight_sync=carrier_pigeon"]))
