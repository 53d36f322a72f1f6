"""The cluster manifests in cluster/deploy/ run a shipped recipe: the command they name parses, its recipe
and layout files exist and validate, and the GPUs and CPUs the layout asks for fit the nodes they declare."""

import re
import shlex
from pathlib import Path

import yaml

from cluster.cli import main
from configs.load import load
from configs.schema import TrainConfig

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


def pods(job: dict) -> list[dict]:
    """The pod specs of a RayJob's cluster: the head's, then each worker group's."""
    spec = job["spec"]["rayClusterSpec"]
    return [spec["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in spec["workerGroupSpecs"]]


def test_kuberay_rayjob_keeps_the_work_on_a_volume_with_token_auth():
    """Token auth on; every pod mounts the claim pvc.yaml creates (ReadWriteMany) at VIGORL_HOME and /dev/shm as
    memory; the recipe's out, model and data resolve on the volume; MLflow's URI comes from the environment."""
    from cluster.home import resolve

    job = yaml.safe_load((DEPLOY / "rayjob.yaml").read_text())
    claim = yaml.safe_load((DEPLOY / "pvc.yaml").read_text())
    assert claim["kind"] == "PersistentVolumeClaim" and claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert job["spec"]["rayClusterSpec"]["authOptions"] == {"mode": "token"}
    for pod in pods(job):
        volumes = {v["name"]: v for v in pod["volumes"]}
        (container,) = pod["containers"]
        env = {e["name"]: e for e in container["env"]}
        mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
        home = env["VIGORL_HOME"]["value"]
        assert mounts[home]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
        assert env["HF_HOME"]["value"].startswith(home + "/")  # Hub downloads on the volume too
        assert mounts["/dev/shm"]["emptyDir"]["medium"] == "Memory"
        assert env["MLFLOW_TRACKING_URI"]["valueFrom"]["secretKeyRef"]["key"]
    assert "tracking.uri" not in job["spec"]["entrypoint"]  # from the environment, not baked in
    cfg = train_config(job["spec"]["entrypoint"])
    for key, value in (("out", cfg.out), ("model.path", cfg.model.path), ("data.path", cfg.data.path)):
        assert resolve(value, key, Path(home)).startswith(home + "/"), (key, value)


def test_cluster_launcher_keeps_the_dashboard_on_localhost_with_token_auth():
    """The head's dashboard binds 127.0.0.1 (reached through `ray dashboard`'s SSH tunnel, as the comment says);
    head and workers start Ray with RAY_AUTH_MODE=token and the token file copied to every node."""
    text = (DEPLOY / "launcher.yaml").read_text()
    conf = yaml.safe_load(text)
    head, workers = " ".join(conf["head_start_ray_commands"]), " ".join(conf["worker_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head and "0.0.0.0" not in text
    assert "ray start --head" in head and "RAY_AUTH_MODE=token" in head and "RAY_AUTH_MODE=token" in workers
    assert "VIGORL_HOME=" in head and "VIGORL_HOME=" in workers
    assert any(remote.endswith("/.ray/auth_token") and local == "~/.ray/auth_token"
               for remote, local in conf["file_mounts"].items())
    comments = " ".join(line.lstrip("# ") for line in text.splitlines() if line.startswith("#"))
    assert "ray dashboard cluster/deploy/launcher.yaml" in comments and "SSH tunnel" in comments
    assert "export RAY_AUTH_MODE=token" in comments


def test_the_readme_gives_the_deploy_files_own_dashboard_and_auth_advice():
    """What the cluster guide (docs/install.md) says about the dashboard and token auth is what the files do."""
    guide = (ROOT / "docs" / "install.md").read_text()
    section = guide[guide.index("## On a Ray cluster"):]
    assert "export RAY_AUTH_MODE=token" in section and "--dashboard-host 127.0.0.1" in section
    assert "Keep dashboards on 127.0.0.1" in " ".join(section.split())
    assert "cluster/deploy/pvc.yaml" in section and "VIGORL_HOME" in section
