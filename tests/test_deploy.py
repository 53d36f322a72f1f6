"""The cluster manifests in cluster/deploy/ run a shipped recipe: the command they name parses, its recipe
and layout files exist and validate, and the GPUs and CPUs the layout asks for fit the nodes they declare."""

import re
import shlex
from pathlib import Path

import yaml

from cluster.cli import main
from configs.schema import TrainConfig, load

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "cluster" / "deploy"


def train_config(command: str) -> TrainConfig:
    """The TrainConfig a `python -m cluster.cli train --config A --config B` command line would run."""
    argv = shlex.split(command)
    assert argv[:4] == ["python", "-m", "cluster.cli", "train"], argv
    configs = [argv[i + 1] for i, a in enumerate(argv) if a == "--config"]
    assert configs and all((ROOT / c).is_file() for c in configs), configs
    return load(TrainConfig, [ROOT / c for c in configs])


def needs(cfg: TrainConfig) -> tuple[float, float]:
    c = cfg.cluster
    return (c.rollout_actors * c.rollout_gpus + c.learner_ranks * c.learner_gpus,
            c.rollout_actors * c.rollout_cpus + c.learner_ranks * c.learner_cpus)


def test_kuberay_rayjob_runs_a_recipe_that_fits():
    import ray

    job = yaml.safe_load((DEPLOY / "rayjob.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    cfg = train_config(spec["entrypoint"])
    assert spec["rayClusterSpec"]["rayVersion"] == ray.__version__  # the Ray vigorl is pinned to
    head = spec["rayClusterSpec"]["headGroupSpec"]
    assert head["rayStartParams"]["num-gpus"] == "0"
    gpus = cpus = 0.0
    for group in spec["rayClusterSpec"]["workerGroupSpecs"]:
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        gpus += group["replicas"] * float(limits.get("nvidia.com/gpu", 0))
        cpus += group["replicas"] * float(limits["cpu"])
    need_gpus, need_cpus = needs(cfg)
    assert 0 < need_gpus <= gpus and need_cpus <= cpus


def test_cluster_launcher_submits_a_recipe_that_fits():
    text = (DEPLOY / "launcher.yaml").read_text()
    conf = yaml.safe_load(text)
    comments = " ".join(line.lstrip("# ").rstrip("\\ ") for line in text.splitlines() if line.startswith("#"))
    command = re.search(r"ray job submit .*? -- (python -m cluster\.cli train .*?\.yaml(?: --config \S+\.yaml)*)",
                        comments).group(1)
    cfg = train_config(command)
    types = conf["available_node_types"]
    assert types[conf["head_node_type"]]["resources"]["GPU"] == 0
    workers = [t for name, t in types.items() if name != conf["head_node_type"]]
    gpus = sum(t["min_workers"] * t["resources"]["GPU"] for t in workers)
    cpus = sum(t["min_workers"] * t["resources"]["CPU"] for t in workers)
    need_gpus, need_cpus = needs(cfg)
    assert 0 < need_gpus <= gpus and need_cpus <= cpus


def test_the_cli_accepts_layered_configs(tmp_path, capsys):
    """`--config RECIPE --config LAYOUT` is what the manifests run; a bad key in the layout names its file."""
    bad = tmp_path / "layout.yaml"
    bad.write_text("cluster:\n  rollout_actor: 2\n")
    assert main(["train", "--config", str(ROOT / "configs/grpo_spatial.yaml"), "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "layout.yaml: unknown config key 'cluster.rollout_actor'" in err
