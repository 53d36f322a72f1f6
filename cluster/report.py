"""What a training run tells its user, in one place: the step's metrics (MLflow, `Tracker.metrics`), its
timers, the lineage of every trained sample (OUT/lineage/step_N.parquet, also an MLflow artifact), the
episode pictures (OUT/first_episode/, the UI's `episodes` image slider) and the console lines of the driver
(the start banner, resume, checkpoints, the step line, stop and done). One `Reporter` per `vigorl train`.

The step's clock: the driver marks where each phase ends (`mark`): "step" (the step starts), "rollouts" (the
step's rollouts are in), "learner" (trained, and the new weights handed out); `step` reads the clock when the
weights are loaded. time/wait_rollouts_s, time/learner_s and time/weight_sync_s are the phases in that order;
learner_idle_frac is the share of the run's time the learner was not in its phase.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from actors.process import rss_mb
from cluster.raystart import say
from configs.schema import TrainConfig

LINEAGE_COLUMNS = ("episode_id", "group_id", "prompt_id", "weight_version", "reward", "reward_format",
                   "reward_accuracy", "reward_coordinate", "reward_diversity", "advantage", "end")


def rollout_metrics(batches: list[pa.RecordBatch]) -> dict[str, float]:
    """Reward parts and episode shape, straight from the Arrow columns."""
    t = pa.Table.from_batches(batches)
    if t.num_rows == 0:
        return {}
    col = lambda name: t.column(name).to_numpy()  # noqa: E731
    resp = pc.subtract(pc.list_value_length(t.column("token_ids")), t.column("prompt_len")).to_numpy()
    zooms = pc.list_value_length(t.column("points")).to_numpy()
    ends = t.column("end").to_pylist()
    return {"reward/mean": col("reward").mean(), "reward/std": col("reward").std(),
            "reward/accuracy": col("reward_accuracy").mean(), "reward/format": col("reward_format").mean(),
            "reward/format_rate": (col("reward_format") > 0).mean(),
            "reward/coordinate_valid": col("reward_coordinate").mean(),
            "reward/diversity": col("reward_diversity").mean(),
            "episode/turns": col("num_turns").mean(), "episode/zooms": zooms.mean(),
            "episode/response_len": resp.mean(), "episode/truncated": np.mean([e == "truncated" for e in ends]),
            "episode/answered": np.mean([e == "answer" for e in ends]), "episode/count": float(t.num_rows)}


def lineage_table(batches: list[pa.RecordBatch], step: int, cfg: TrainConfig) -> pa.Table:
    """Per trained sample of a step: which episode and prompt, the weight version it was generated under, its
    reward parts, and its staleness (the learner trains step `step` at version step - 1) and whether the
    learner used it (not dropped as too stale), so any sample can be traced to the weights that made it."""
    t = pa.Table.from_batches(batches).select(list(LINEAGE_COLUMNS))
    staleness = pc.subtract(pa.scalar(step - 1, pa.int64()), t.column("weight_version"))
    used = pc.or_(pc.less_equal(staleness, cfg.loop.max_staleness), pa.scalar(cfg.loop.staleness_mode == "tis"))
    return (t.append_column("staleness", staleness).append_column("used", used)
            .append_column("step", pa.array([step] * t.num_rows, pa.int64())))


def log_lineage(tracker, batches: list[pa.RecordBatch], step: int, cfg: TrainConfig) -> None:
    """OUT/lineage/step_N.parquet (`lineage_table`), and the same file as an MLflow artifact under lineage/."""
    import pyarrow.parquet as pq

    path = Path(cfg.out) / "lineage" / f"step_{step:05d}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(lineage_table(batches, step, cfg), path)
    tracker.artifact(path, "lineage")


def readable(ray, refs: list) -> list[pa.RecordBatch]:
    """The batches still readable (a batch can be lost after the learner read it: its node died since)."""
    out = []
    for ref in refs:
        try:
            out.append(ray.get(ref))
        except ray.exceptions.ObjectLostError:
            continue
    return out


class Reporter:
    """The reporting side of one `vigorl train` run (see the module doc). `last`: the last step reported
    (`end_step`); `summary`: its metrics."""

    def __init__(self, ray, cfg: TrainConfig, tracker):
        """Loads the tokenizer the pictures decode with; `start` opens the run's report."""
        from transformers import AutoTokenizer

        self.ray, self.cfg, self.tracker = ray, cfg, tracker
        self.tokenizer = AutoTokenizer.from_pretrained(cfg.model.path)
        self.marks: dict[str, float] = {}
        self.learner_busy, self.summary, self.last = 0.0, {}, 0
        self.learner_restarts, self.stopping = 0, False

    def resumed(self, ckpt, version: int, changes: list[str]) -> None:
        """The resume line (`LearnerGroup.restore` has loaded `ckpt` at weight `version`) and the config keys
        changed since the checkpoint."""
        say(f"[train] resumed from {ckpt.path}: step {ckpt.step}, weight version {version}, "
            f"{ckpt.state['ledger']['done']} prompts done" + "".join(f"\n[train] config changed: {c}" for c in changes))

    def learner_lost(self, lost, ckpt, attempt: int) -> None:
        """The fault line of a dead learner rank, before its group is started again from `ckpt` (None: the
        model itself)."""
        back = f"{ckpt.path} (step {ckpt.step})" if ckpt else "the model itself (no resumable checkpoint yet)"
        say(f"[train] fault: {lost}; restarting the learner from {back}, attempt {attempt}/"
            f"{self.cfg.cluster.learner_restart_attempts} (cluster.learner_restart_attempts)")

    def learner_restarted(self, step: int, version: int, restarts: int) -> None:
        """A new learner group is up at `step` (the checkpoint's) and weight `version`, and every rollout actor has
        its weights: the steps after `step` are trained again (their metrics logged again at the same steps)."""
        self.learner_restarts, self.last = restarts, step
        self.bar.n = step
        self.bar.refresh()
        say(f"[train] learner restarted at step {step}, weight version {version}; rollout actors reloaded, "
            f"{self.ledger.done} prompts done; training step {step + 1} again")

    def start(self, first: int, ledger, pool) -> None:
        """The run's banner and progress bar; the run's clock starts. `ledger` and `pool` are read for each
        step's metrics (prompts done, actor restarts, actors now)."""
        from tqdm import tqdm

        cfg = self.cfg
        self.ledger, self.pool, self.last = ledger, pool, first - 1
        self.t_start = time.perf_counter()
        say(f"[train] {cfg.loop.steps} steps, {cfg.loop.prompts_per_step} prompts x {cfg.rollout.group_size} "
            f"episodes, {cfg.cluster.rollout_actors} rollout actor(s), mode={cfg.loop.mode}; MLflow run "
            f"{self.tracker.run_id}" +
            ("" if cfg.verbose else f"\n[train] actor and engine output: {Path(cfg.out).resolve() / 'logs'}/ "
                                    f"(--verbose: on the console)"))
        self.bar = tqdm(total=cfg.loop.steps, initial=first - 1, desc="train", unit="step", file=sys.stdout,
                        disable=None)  # off without a tty

    def stop_asked(self) -> bool:
        """`vigorl stop OUT` was found at a step boundary: said once (the final save may be retried after a
        learner restart). Returns True."""
        if not self.stopping:
            say(f"[train] stop asked for: ending after step {self.last} of {self.cfg.loop.steps}")
        self.stopping = True
        return True

    def mark(self, phase: str) -> None:
        """The step's clock: `phase` ("step", "rollouts", "learner") ends now."""
        self.marks[phase] = time.perf_counter()

    def step(self, step: int, m: dict[str, float], taken: list, stats: list[dict]) -> None:
        """A trained step, once every actor that waits for the new weights has them: its metrics (`m`, the
        learner's, gets the rollouts', the ledger's, the pool's, memory and timers, in place), its lineage and
        its pictures (the first episode on the console at step 1; `tracking.picture_every`: the UI's slider)."""
        from actors.picture import episode_figure, show_first_episode
        from data_gen.formats import image_root

        cfg, tracker = self.cfg, self.tracker
        t0, t1, t2, t3 = (self.marks["step"], self.marks["rollouts"], self.marks["learner"],
                          time.perf_counter())
        self.learner_busy += t2 - t1
        batches = readable(self.ray, [c.batch for c in taken])  # one lost since the learner read it: left out
        if not batches:  # every batch of the step lost (`RolloutQueue.settle`): nothing to describe but that
            tracker.metrics(m | self.ledger.counts() | {"time/step_s": t3 - t0,
                                                        "faults/learner_restarts": self.learner_restarts}, step)
            return
        gen_s = sum(s["generate_s"] for s in stats)
        m |= rollout_metrics(batches) | self.ledger.counts() | {
            "faults/actor_restarts": self.pool.restarts, "faults/learner_restarts": self.learner_restarts,
            "cluster/rollout_actors": len(self.pool),
            "memory/driver_rss_mb": rss_mb(), "memory/rollout_rss_mb": max(s["rss_mb"] for s in stats),
            "time/step_s": t3 - t0, "time/wait_rollouts_s": t1 - t0, "time/learner_s": t2 - t1,
            "time/weight_sync_s": t3 - t2, "time/generate_s": gen_s,
            "learner_idle_frac": 1.0 - self.learner_busy / (t3 - self.t_start),
            "rollout_tokens_per_s": sum(s["response_tokens"] for s in stats) / max(gen_s, 1e-9),
            "train_tokens_per_s": m.get("tokens", 0.0) / max(m.get("time/train_s", 0.0), 1e-9),
            "rollout_version_lag": m.get("staleness_max", 0.0)}
        tracker.metrics(m, step)
        log_lineage(tracker, batches, step, cfg)
        if step == 1:
            say(show_first_episode(batches[0], self.tokenizer, image_root(cfg.data), Path(cfg.out) / "first_episode"))
        if cfg.tracking.picture_every and (step == 1 or step % cfg.tracking.picture_every == 0):
            figure = episode_figure(batches[0], self.tokenizer, image_root(cfg.data), k=3)
            tracker.image(figure, key="episodes", step=step)  # the UI's image slider

    def checkpoint(self, saved) -> None:
        """The line of a checkpoint just written (`LearnerGroup.save`: a `Saved`; None: none was due)."""
        if saved is not None:
            say(f"[train] checkpoint step {saved.step}: " + (f"{saved.export} (HF format), " if saved.export else "")
                + f"{saved.resumable} (resumable)")

    def end_step(self, step: int, m: dict[str, float]) -> None:
        """The progress bar and the step's console line."""
        self.bar.update()
        say(f"[train] step {step}/{self.cfg.loop.steps} reward {m.get('reward/mean', 0):.3f} "
            f"acc {m.get('reward/accuracy', 0):.2f} format {m.get('reward/format_rate', 0):.2f} "
            f"zooms {m.get('episode/zooms', 0):.2f} loss {m.get('loss', float('nan')):.4f} "
            f"kl {m.get('kl', 0):.4f} stale {m['staleness_max']:.0f} {m['time/step_s']:.1f}s")
        self.summary, self.last = m, step

    def close(self) -> None:
        """The loop is over: the progress bar goes."""
        self.bar.close()

    def done(self) -> dict:
        """The run's last lines (where its MLflow run is, how to look at it) and what `run` returns."""
        tracker = self.tracker
        print(f"[train] done. MLflow run {tracker.run_id} in {tracker.uri}\n[train] open the UI: {tracker.ui_command()}")
        return {"run_id": tracker.run_id, "tracking_uri": tracker.uri, "last": self.summary}
