"""System metrics of a run: the driver node's CPU, memory, disk and network (MLflow's own monitors) and the
GPUs of the nodes each role's actors run on (`nvidia-smi` as a zero-CPU Ray task pinned to each node), logged
through the run's writer (cluster/tracking_writer.py) so an outage delays them rather than ending them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading

from cluster.tracking_writer import short, warn


def parse_nvidia_smi(text: str) -> list[dict]:
    """Rows of `nvidia-smi --query-gpu=index,utilization.gpu,memory.used,memory.total --format=csv,noheader,
    nounits` as dicts (a value nvidia-smi reports as [N/A] is left out)."""
    gpus = []
    for line in text.strip().splitlines():
        cells = [c.strip() for c in line.split(",")]
        if len(cells) != 4 or not cells[0].isdigit():
            continue
        g: dict = {"index": int(cells[0])}
        for name, cell in zip(("util", "used_mib", "total_mib"), cells[1:]):
            try:
                g[name] = float(cell)
            except ValueError:  # "[N/A]", "[Not Supported]"
                pass
        gpus.append(g)
    return gpus


def node_gpus() -> list[dict]:
    """This node's GPUs from `nvidia-smi` (every GPU of the node, whatever CUDA_VISIBLE_DEVICES says: NVML lists
    them all); [] without one. Runs as a zero-CPU Ray task pinned to each node of a role."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        p = subprocess.run([exe, "--query-gpu=index,utilization.gpu,memory.used,memory.total",
                            "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return parse_nvidia_smi(p.stdout) if p.returncode == 0 else []


def gpu_metrics(roles: dict[str, list[str]], per_node: dict[str, list[dict]]) -> dict[str, float]:
    """system/<role>/gpu_<i>_{utilization_percentage, memory_usage_megabytes, memory_usage_percentage} (MLflow's
    own GPU metric names) for the GPUs of the nodes each role's actors run on; with a role on several nodes,
    system/<role>/<node id's first 8>/gpu_... A node shared by two roles reports its GPUs under both."""
    out: dict[str, float] = {}
    for role, nodes in roles.items():
        nodes = sorted(set(n for n in nodes if n))
        for node in nodes:
            prefix = f"system/{role}/" + (f"{node[:8]}/" if len(nodes) > 1 else "")
            for g in per_node.get(node, []):
                key = f"{prefix}gpu_{g['index']}_"
                if "util" in g:
                    out[key + "utilization_percentage"] = g["util"]
                if "used_mib" in g:
                    out[key + "memory_usage_megabytes"] = g["used_mib"] * 1.048576  # MiB -> MB, as MLflow's
                    if g.get("total_mib"):
                        out[key + "memory_usage_percentage"] = 100.0 * g["used_mib"] / g["total_mib"]
    return out


def ready_nodes(ray, refs: list) -> list[str]:
    """The node ids among `refs` (actors' `node_id` calls) that have arrived; never waits."""
    if not refs:
        return []
    ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=0)
    found = []
    for ref in ready:
        try:
            found.append(ray.get(ref))
        except ray.exceptions.RayError:  # the actor died before saying where it runs
            continue
    return found


class SystemMetrics:
    """Every `interval_s` (MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL, default 10 s, as `log_system_metrics`) the
    driver node's CPU, memory, disk and network (MLflow's own monitors: system/cpu_utilization_percentage, ...)
    and, once `watch` names them, the GPUs of the nodes the actors run on (`gpu_metrics`), logged through the
    run's writer with a step counter: so an outage delays them rather than ending them, as MLflow's
    SystemMetricsMonitor would. A last sample is logged at `stop`."""

    def __init__(self, log, first_step: int = 0):
        from mlflow.system_metrics.metrics.cpu_monitor import CPUMonitor
        from mlflow.system_metrics.metrics.disk_monitor import DiskMonitor
        from mlflow.system_metrics.metrics.network_monitor import NetworkMonitor

        self.log, self.step = log, first_step
        self.monitors = [CPUMonitor(), DiskMonitor(), NetworkMonitor()]
        self.interval_s = float(os.environ.get("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL") or 10.0)
        self.ray = self.roles = None
        self._gpu_warned = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="vigorl-system-metrics", daemon=True)
        self._thread.start()

    def watch(self, ray, roles) -> None:
        """Sample the GPUs of `roles()` ({role: [Ray node id]}) too, when the cluster has any GPU."""
        try:
            if ray.cluster_resources().get("GPU", 0) > 0:
                self.ray, self.roles = ray, roles
        except Exception as e:  # noqa: BLE001 - Ray's errors vary by version; GPU metrics are optional
            warn(f"[mlflow] no GPU metrics: cannot read the Ray cluster's resources ({short(e)})")

    def sample(self) -> dict[str, float]:
        values: dict[str, float] = {}
        for m in self.monitors:
            m.collect_metrics()
            values.update({f"system/{k}": float(v) for k, v in m.aggregate_metrics().items()})
            m.clear_metrics()
        if self.ray is not None:
            values |= self._gpus()
        return values

    def _gpus(self) -> dict[str, float]:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        ray = self.ray
        try:
            roles = self.roles()
            gpu_nodes = {n["NodeID"] for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("GPU")}
            nodes = sorted({n for ids in roles.values() for n in ids if n in gpu_nodes})
            task = ray.remote(num_cpus=0)(node_gpus)
            refs = {n: task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n, soft=False)).remote()
                    for n in nodes}
            return gpu_metrics(roles, {n: ray.get(r, timeout=60) for n, r in refs.items()})
        except Exception as e:  # noqa: BLE001 - a node gone meanwhile is the fault handling's business, not ours
            if not self._gpu_warned:
                self._gpu_warned = True
                warn(f"[mlflow] GPU metrics of the actors' nodes skipped: {short(e)}")
            return {}

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._log()

    def _log(self) -> None:
        try:
            values = self.sample()
        except Exception as e:  # noqa: BLE001 - psutil's errors (a disk gone) must not end the run
            warn(f"[mlflow] system metrics skipped: {short(e)}")
            return
        self.log(values, self.step)
        self.step += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(self.interval_s + 120)
        self._log()
