"""`vigorl mcts`: teacher-guided MCTS trace generation as its own Ray job (docs/algorithm.md §6).

The driver shards the questions over search-worker actors (one question in flight per worker) and writes
each finished tree as one line of `<out>/trees.jsonl` the moment it arrives. A question whose teacher
raises, returns something unusable or runs past `question_timeout_s` becomes a line of `<out>/failed.jsonl`
with the reason, and the job goes on. A rerun resumes: question ids already in trees.jsonl are skipped (a
half-written last line, from a crash, is dropped with a warning; a corrupt line elsewhere is an error
naming the file and line); failed questions are tried again. Teachers run on their own resources: one
vLLM teacher server actor serves every worker, and is started again if it dies (`TeacherServer`).

Tree line: {"question_id", "task", "image", "question", "gold", "image_size", "nodes": [...]}: `image` the
absolute path of the original image, `gold` and the node coordinates in the frame of the image as the policy
sees it (`image_size` = [W, H]); nodes as `data_gen.mcts.Node.to_json`.
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
from pathlib import Path

from cluster.workqueue import Faults, append_lines, crash_point, pending, run_queue, say, start_workers
from configs.jobs import MCTSJobConfig

TREES, FAILED = "trees.jsonl", "failed.jsonl"


def read_done(path: Path) -> set[str]:
    """Question ids already in trees.jsonl (a half-written last line is cut off the file, with a warning)."""
    from data_gen.traces import read_trees

    return {t["question_id"] for t in read_trees(path, truncate_partial=True)}


class SearchWorker:
    """A Ray actor running whole searches, one question per call."""

    def __init__(self, cfg: MCTSJobConfig, server=None):
        self.cfg, self.server = cfg, server
        self.system = None  # the teacher's system prompt: teacher.prompt_file verbatim, else the built-in one
        if cfg.teacher.prompt_file:
            from data_gen.teachers import read_prompt_file

            self.system = read_prompt_file(cfg.teacher.prompt_file, cfg.teacher.prompt_unescape)

    def search(self, row_json: str) -> dict:
        """-> {"line": tree line, "seconds", "teacher_calls"} or {"failed": reason}. Any error of this one
        question (a teacher that raises, a timeout, a bad row) is reported, never raised: the job goes on. A
        teacher server that died is not one question's failure: its error is raised (`TeacherServer`)."""
        import ray

        from data_gen.rows import PromptRow

        t0 = time.perf_counter()
        row = PromptRow(**json.loads(row_json))
        try:
            line, calls = self._search(row, t0 + self.cfg.question_timeout_s)
        except ray.exceptions.RayActorError:  # the shared vLLM teacher server is gone: not this question's failure.
            raise  # The driver sees the server's ActorDiedError, starts a new server and hands the question out again
        except Exception as e:  # noqa: BLE001 - one question's failure of any kind is recorded, not fatal
            return {"question_id": row.prompt_id, "failed": f"{type(e).__name__}: {e}"}
        return {"question_id": row.prompt_id, "line": line, "seconds": time.perf_counter() - t0,
                "teacher_calls": calls}

    def _search(self, row, deadline: float) -> tuple[dict, int]:
        from actors.teacher import RemoteTeacher
        from data_gen.formats import image_root
        from data_gen.images import policy_image, resolve_under
        from data_gen.mcts import search
        from data_gen.rows import gold_for_model
        from data_gen.teachers import ScriptedTeacher, scene_of
        from rewards.judges import get_judge

        cfg, t = self.cfg, self.cfg.teacher
        image = policy_image(image_root(cfg.data), row.image, cfg.model.min_pixels, cfg.model.max_pixels)
        gold = gold_for_model(row, image.size)
        rng = random.Random(f"{cfg.seed}/{row.prompt_id}")
        if t.kind == "scripted":
            teacher = ScriptedTeacher(scene_of(row, image.size), t.error_rate, t.answer_rate, seed=rng.random(),
                                      describe=t.describe)
        elif t.kind == "vllm":
            teacher = RemoteTeacher(self.server, row.task, image, self.system,
                                    rng.randint(t.min_thoughts_low, t.min_thoughts_high))
        else:
            raise ValueError(f"teacher.kind must be scripted or vllm, got {t.kind!r}")
        judge = get_judge(row.task, cfg.judge)
        tree = search(row.question, image, _Deadline(teacher, deadline, cfg.question_timeout_s),
                      lambda answer: judge(answer, gold), cfg.search)
        path = str(resolve_under(image_root(cfg.data), row.image).resolve())
        line = {"question_id": row.prompt_id, "task": row.task, "image": path, "question": row.question,
                "gold": gold, "image_size": list(image.size), "nodes": tree.to_json()}
        return line, teacher.calls


class _Deadline:
    """A teacher proxy that stops a search running past its question's time budget."""

    def __init__(self, teacher, deadline: float, budget: float):
        self.teacher, self.deadline, self.budget = teacher, deadline, budget

    def generate(self, *args):
        if time.perf_counter() > self.deadline:
            raise TimeoutError(f"search ran past question_timeout_s={self.budget:g}")
        return self.teacher.generate(*args)


def tree_stats(line: dict) -> dict[str, float]:
    """A tree line's figures: whether any rollout is correct, how many are, and its node count."""
    rollouts = [r for n in line["nodes"] for r in n["rollouts"]]
    correct = sum(r["reward"] >= 1.0 for r in rollouts)
    return {"correct_path": float(correct > 0), "correct_rollouts": float(correct), "nodes": float(len(line["nodes"]))}


def count_tree(totals: dict, res: dict) -> None:
    """Add a finished search (a `SearchWorker.search` result with a tree) to the job's totals."""
    s = tree_stats(res["line"])
    totals["done"] += 1
    totals["correct_path"] += s["correct_path"]
    totals["correct_rollouts"] += s["correct_rollouts"]
    totals["seconds"] += res["seconds"]
    totals["teacher_calls"] += res["teacher_calls"]


def check_settings(cfg: MCTSJobConfig) -> None:
    """The teacher kind, the judge and the teacher's prompt file checked: an error naming the bad one here,
    before Ray starts, not in every worker."""
    from rewards.judges import JUDGE_KINDS

    if cfg.teacher.kind not in ("scripted", "vllm"):
        raise ValueError(f"teacher.kind must be scripted or vllm, got {cfg.teacher.kind!r}")
    if cfg.judge not in JUDGE_KINDS:
        raise ValueError(f"judge must be one of {JUDGE_KINDS}, got {cfg.judge!r}")
    if cfg.teacher.prompt_file:  # fail here, not in every worker
        from data_gen.teachers import read_prompt_file

        read_prompt_file(cfg.teacher.prompt_file, cfg.teacher.prompt_unescape)


def load_questions(cfg: MCTSJobConfig) -> list:
    """The first `limit` (0: all) rows of data.path, in any format data_gen/formats.py reads; with `make_data`,
    that many synthetic prompts are made there first when it holds none."""
    from data_gen.formats import load_prompts
    from data_gen.synthetic import ensure_dataset

    if cfg.make_data:
        ensure_dataset(cfg.data.task, cfg.make_data, seed=cfg.seed, out=cfg.data.path, log="[mcts]")
    rows = load_prompts(cfg)[0]
    return rows[: cfg.limit] if cfg.limit else rows


class TeacherServer:
    """The job's vLLM teacher server (`handle`; None for the scripted teacher), started again when it dies.

    A search worker whose teacher call finds the server gone raises the server's ActorDiedError; `run_queue`
    hands that error to `check` before it replaces the worker (its question goes back to the queue). When the
    error names the current server, a new server starts and every worker made from then on (`make`) gets it;
    the other workers' calls fail the same way and they are replaced in turn, onto the new server. A server that
    cannot start fails each worker's next call, so `restart_attempts` in a row on a slot end the job."""

    def __init__(self, ray, cfg: MCTSJobConfig):
        self.ray, self.cfg = ray, cfg
        self.handle = _teacher_server(ray, cfg)
        self.restarts = 0

    def check(self, e: BaseException) -> None:
        if self.handle is None or getattr(e, "actor_id", None) != self.handle._actor_id.hex():
            return
        self.restarts += 1
        say(f"[mcts] fault: the vLLM teacher server died ({type(e).__name__}); starting a new one (restart "
            f"{self.restarts}); the questions in flight are searched again")
        self.ray.kill(self.handle, no_restart=True)
        self.handle = _teacher_server(self.ray, self.cfg)


def start_searchers(ray, cfg: MCTSJobConfig, n_questions: int) -> tuple[list, Faults, TeacherServer]:
    """The teacher server (vLLM teacher only) and the search workers sharing it: `workers` of them, at most
    one per question; with them, what a dead one costs (a replacement; its question searched again), and what a
    dead server costs (a new one: `TeacherServer`). A question over `question_timeout_s` is the worker's to
    fail, so there is no hung-worker timeout here."""
    server = TeacherServer(ray, cfg)
    worker = ray.remote(SearchWorker).options(num_cpus=cfg.worker_cpus)
    make = lambda _: worker.remote(cfg, server.handle)  # noqa: E731
    return (start_workers(make, cfg.workers, n_questions),
            Faults(make, "MCTS search worker", cfg.restart_attempts, cfg.restart_backoff_s, on_fault=server.check),
            server)


def search_all(ray, workers: list, faults: Faults, server: TeacherServer, todo: list, cfg: MCTSJobConfig,
               tracker) -> dict:
    """Search `todo` on `workers` (cluster/workqueue.py; a dead one is replaced and its question searched again:
    `faults`), one question per call: each tree is appended to trees.jsonl, each failure to failed.jsonl (and
    printed), as it comes back. -> the job's totals."""
    totals = {"done": 0, "failed": 0, "correct_path": 0.0, "correct_rollouts": 0.0, "seconds": 0.0, "teacher_calls": 0,
              "restarts": 0, "teacher_restarts": 0}
    out = Path(cfg.out)

    def submit(worker, row_json: str):
        return worker.search.remote(row_json)

    with open(out / TREES, "a") as trees, open(out / FAILED, "a") as failed:
        def on_result(res: dict) -> int:
            if "failed" in res:
                append_lines(failed, [{"question_id": res["question_id"], "reason": res["failed"]}])
                totals["failed"] += 1
                say(f"[mcts] {res['question_id']} failed: {res['failed']}")
            else:
                append_lines(trees, [res["line"]])
                count_tree(totals, res)
                crash_point(totals["done"], cfg.crash_after)  # MCTSJobConfig.crash_after counts trees
            totals["restarts"], totals["teacher_restarts"] = faults.restarts, server.restarts
            tracker.metrics(_metrics(totals), totals["done"] + totals["failed"])
            return 1

        run_queue(ray, workers, [json.dumps(dataclasses.asdict(r)) for r in todo], submit, on_result,
                  total=len(todo), desc="mcts questions", unit="q", faults=faults)
    totals["restarts"], totals["teacher_restarts"] = faults.restarts, server.restarts
    return totals


def run(cfg: MCTSJobConfig) -> dict:
    """`vigorl mcts` (the module docstring): check the settings, skip the questions trees.jsonl already has,
    search the rest on search workers (cluster/workqueue.py), report."""
    from cluster.raystart import init_ray
    from cluster.tracking import Tracker, job

    check_settings(cfg)
    rows = load_questions(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    todo = pending(rows, read_done(out / TREES))
    print(f"[mcts] {len(rows)} questions, {len(rows) - len(todo)} already in {out / TREES}, {len(todo)} to search "
          f"({cfg.teacher.kind} teacher, {cfg.workers} workers)")
    ray = init_ray(cfg.address, cfg.workers * cfg.worker_cpus + (cfg.teacher.cpus if cfg.teacher.kind == "vllm" else 0))
    tracker = Tracker(cfg)
    tracker.write_run_file(out)  # lineage: linearize / to-multiturn carry it on, `vigorl sft` links to this run
    with job(tracker, ray):
        workers, faults, server = start_searchers(ray, cfg, len(todo))
        totals = search_all(ray, workers, faults, server, todo, cfg, tracker)
    summary = _metrics(totals)
    print(f"[mcts] done: {totals['done']} trees, {totals['failed']} failed; correct path for "
          f"{summary['mcts/correct_path_frac']:.0%} of searched questions; trees in {out / TREES}; "
          f"MLflow run {tracker.run_id}")
    return summary | {"run_id": tracker.run_id}


def _metrics(t: dict) -> dict[str, float]:
    n = max(1, t["done"])
    return {"mcts/questions_done": float(t["done"]), "mcts/questions_failed": float(t["failed"]),
            "mcts/correct_path_frac": t["correct_path"] / n,
            "mcts/correct_chains_per_question": t["correct_rollouts"] / n,
            "mcts/seconds_per_question": t["seconds"] / n, "mcts/teacher_calls": float(t["teacher_calls"]),
            "faults/actor_restarts": float(t["restarts"]), "faults/teacher_restarts": float(t["teacher_restarts"])}


def _teacher_server(ray, cfg: MCTSJobConfig):
    """The vLLM teacher as one Ray actor on its own resources (None for the scripted teacher)."""
    t = cfg.teacher
    if t.kind != "vllm":
        return None
    if not t.model_path:
        raise ValueError("teacher.kind=vllm needs teacher.model_path (a local model dir)")
    from actors.teacher import VLLMTeacher

    return ray.remote(VLLMTeacher).options(num_cpus=t.cpus, num_gpus=t.gpus).remote(
        t.model_path, max_model_len=t.max_model_len, tensor_parallel_size=t.tensor_parallel_size,
        temperature=t.temperature, top_p=t.top_p, max_tokens=t.max_tokens, seed=cfg.seed,
        stop_at_tags=t.stop_at_tags)
