"""`make bench`: seven measurements, each side by side in one run on this machine. Never part of the tests.

  1. rollout path efficiency   generated tokens/s through the actor path (multi-turn env + crops + rewards
                               + Arrow) / raw vLLM generate tokens/s on the same model and first prompts
  2. weight sync               publish-to-actor seconds (shared-memory file + vLLM load; the object store for
                               actors on other nodes beside it) / one memcpy of the bytes
                               sent (the language model: a frozen vision tower is not sent)
  3. transport                 Arrow encode + object-store move + decode / learner step time
  4. async vs sync             samples/s ratio and learner idle fraction of two short `vigorl train` runs
  5. learner                   tokens/s of a GRPO step, default path vs the uncached one-thread path
  6. vs TRL                    completions/s of `vigorl train` / TRL's GRPOTrainer (bench/trl.py), small and
                               real Qwen vocab (needs `pip install -e .[bench]`)
  7. SFT vs TRL                examples/s of `vigorl sft` / TRL's SFTTrainer (bench/sft.py) on the learning
                               proof's model and zoom dialogues: `sft_trl_ratio`

Usage: python -m bench.run [--out runs/bench] [--skip-loop] [--stages learner,trl]   (a subset updates results.json)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from bench.common import ROOT, metric_series, run_id, sqlite_uri, vigorl


def setup(out: Path):
    from data_gen.formats import read_rows
    from data_gen.synthetic import ensure_dataset
    from data_gen.tiny_model import ensure_tiny_model

    ensure_tiny_model(out / "model", vocab="small")
    ensure_tiny_model(out / "model_qwen", vocab="qwen")
    ensure_dataset("visual_search", 8, seed=0, out=out / "data", progress=False)
    return read_rows(out / "data")


def bench_rollout(out: Path, rows) -> tuple[float, list]:
    from transformers import AutoProcessor
    from actors.engine import make_llm
    from actors.rollout import Rollout
    from actors.trajectory import to_batch
    from actors.zoom import ZoomSettings
    from data_gen.images import policy_image

    llm = make_llm(str(out / "model"), max_model_len=8192, seed=0)
    proc = AutoProcessor.from_pretrained(out / "model")
    batch = [(r, policy_image(out / "data", r.image), r.image) for r in rows]
    G = 4
    ro = Rollout(llm, proc, ZoomSettings(half_size=182, out_size=336), group_size=G, prompt="vigorl_multi_turn",
                 max_tokens_per_turn=256, response_budget=8000, guided=True)
    ro.play(batch, 0)  # warm-up: compile every prompt's grammar once

    ro.trace = []
    t0 = time.perf_counter()
    trajs = ro.play(batch, 0)
    rb = to_batch(trajs)
    actor_s = time.perf_counter() - t0
    actor_tokens = sum(sum(t.loss_mask) for t in trajs)
    import pyarrow as pa

    with pa.OSFile(str(out / "trajectories.arrow"), "wb") as f, pa.ipc.new_file(f, rb.schema) as w:
        w.write_batch(rb)

    # raw vLLM on the same prompts, like for like: each episode's turn prompts in order, the next one sent the
    # moment the previous came back (as the actor does, so as many requests are in flight), with the same
    # sampling parameters; what is left out is the actor's own work (env, crops, tokenising, rewards, Arrow)
    chains: dict[int, list] = {}
    for index, prompt, param in ro.trace:
        chains.setdefault(index, []).append((prompt, param))
    llm.reset_prefix_cache()  # no head start from the actor's run
    llm.reset_mm_cache()
    llm.llm_engine.reset_encoder_cache()
    t0 = time.perf_counter()
    outs = replay(llm, chains)
    raw_s = time.perf_counter() - t0
    raw_tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    raw_tps, actor_tps = raw_tokens / raw_s, actor_tokens / actor_s
    turns = sum(t.num_turns for t in trajs) / len(trajs)
    print(f"[1] rollout path: actor {actor_tps:,.0f} tok/s ({len(trajs)} episodes, {turns:.1f} turns avg) vs raw "
          f"vLLM {raw_tps:,.0f} tok/s on the same {len(ro.trace)} turn prompts, episode by episode -> ratio "
          f"{actor_tps / raw_tps:.2f} (goal >= 0.9)")
    return actor_tps / raw_tps


def replay(llm, chains: dict[int, list]) -> list:
    """Generate every chain's prompts in order through the engine, a chain's next prompt enqueued when its
    previous one finishes, all chains at once; returns the finished outputs."""
    engine, pending, done = llm.llm_engine, {}, []

    def send(index: int, k: int) -> None:
        prompt, param = chains[index][k]
        (rid,) = llm.enqueue([prompt], [param], use_tqdm=False)
        pending[rid.rsplit("-", 1)[0]] = (index, k)

    for index in chains:
        send(index, 0)
    while pending:
        for out in engine.step():
            if getattr(out, "finished", False) and out.request_id in pending:
                index, k = pending.pop(out.request_id)
                done.append(out)
                if k + 1 < len(chains[index]):
                    send(index, k + 1)
    return done


def bench_weight_sync(out: Path) -> dict:
    import ray
    import torch
    from safetensors.torch import load_file

    from actors.engine import make_llm
    from actors.shm import WeightFile, WeightReader
    from actors.weights import load_weights, pack, unpack

    full = load_file(out / "model_qwen" / "model.safetensors")
    # what the learner publishes with learner.freeze_vision (the default): Learner.state_dict(trained_only=True)
    state = {k: v for k, v in full.items() if not k.startswith(("visual.", "model.visual."))}
    nbytes = sum(t.numel() * t.element_size() for t in state.values())
    flat = torch.empty(nbytes // 4, dtype=torch.float32)
    srcs = [t.reshape(-1).float() for t in state.values()]
    copies = []
    for _ in range(5):  # the best of 5, as for the syncs below
        t0 = time.perf_counter()
        torch.cat(srcs, out=flat)
        copies.append(time.perf_counter() - t0)
    memcpy_s = min(copies)

    llm = make_llm(str(out / "model_qwen"), max_model_len=4096, seed=0)
    load_weights(llm, full)  # warm-up
    # the default (rollout actors on the learner's node): the learner rewrites its shared-memory file, the
    # actor copies from it into vLLM. Measured before Ray starts: its start-up keeps both cores busy for seconds
    shm, store = [], []
    wfile, reader = WeightFile(), WeightReader()
    for version in range(1, 6):
        t0 = time.perf_counter()
        path = wfile.write(version, state)
        t1 = time.perf_counter()
        reader.read(path, lambda views: load_weights(llm, views))
        shm.append((time.perf_counter() - t0, t1 - t0))
    wfile.close()
    # an actor on another node: one put into the object store, a zero-copy get, the same load
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    for _ in range(8):
        t0 = time.perf_counter()
        ref = ray.put(pack(state))
        got = unpack(ray.get(ref))
        t1 = time.perf_counter()
        load_weights(llm, got)
        store.append((time.perf_counter() - t0, t1 - t0))
        del ref, got
    ray.shutdown()
    (sync_s, move_s), (store_s, put_s) = min(shm), min(store)
    print(f"[2] weight sync: {nbytes / 2**20:.0f} MiB sent ({len(state)} of {len(full)} tensors) and loaded into vLLM "
          f"in {sync_s * 1e3:.0f} ms through shared memory (learner's write {move_s * 1e3:.0f} ms, the actor's "
          f"load {(sync_s - move_s) * 1e3:.0f} ms) vs one memcpy {memcpy_s * 1e3:.1f} ms -> ratio "
          f"{sync_s / memcpy_s:.1f} (goal <= 3); through the object store (actors on other nodes) "
          f"{store_s * 1e3:.0f} ms (put+get {put_s * 1e3:.0f} ms) -> {store_s / memcpy_s:.1f}")
    return {"weight_sync": sync_s / memcpy_s, "weight_sync_bytes": nbytes, "weight_sync_object_store": store_s / memcpy_s}


def bench_transport(out: Path) -> float:
    import pyarrow as pa
    import ray

    from actors.trajectory import from_batch, to_batch

    trajs = from_batch(pa.ipc.open_file(str(out / "trajectories.arrow")).read_all())[:8]
    from configs.schema import LearnerConfig
    from learner.actor import LearnerActor

    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    cfg = LearnerConfig(lr=1e-5, grad_clip=1.0, warmup_ratio=0.0, mini_batch_size=0)
    learner = ray.remote(LearnerActor).remote(str(out / "model"), cfg, str(out / "data"))
    ray.get(learner.train_step.remote([to_batch(trajs)], 99))  # warm-up
    t0 = time.perf_counter()
    ref = ray.put(to_batch(trajs))
    encode_s = time.perf_counter() - t0
    m = ray.get(learner.train_step.remote([ref], 99))  # max_staleness 99: train on all of them
    ray.shutdown()
    move_decode_s = m["time/decode_s"]
    ratio = (encode_s + move_decode_s) / m["time/train_s"]
    print(f"[3] transport: encode {encode_s * 1e3:.1f} ms + move/decode {move_decode_s * 1e3:.1f} ms for "
          f"{len(trajs)} trajectories vs learner step {m['time/train_s']:.2f} s -> {100 * ratio:.2f} % (goal <= 1 %)")
    return ratio


def bench_learner(out: Path) -> dict:
    """Learner throughput on stage 1's trajectories (multi-turn, full image + crops): sequence tokens (prompt,
    images, responses) per second of one GRPO step, after a warm-up step, in a Ray learner actor. Side by
    side: the path as it was (every forward re-runs the frozen vision tower, Ray's one thread for a
    1-CPU actor) and the default (`learner.vision_cache`, the sync-mode thread share of `torch_threads`)."""
    import pyarrow as pa
    import ray

    from actors.trajectory import from_batch, to_batch
    from configs.placement import torch_threads
    from configs.schema import ClusterConfig, LearnerConfig
    from learner.actor import LearnerActor

    trajs = from_batch(pa.ipc.open_file(str(out / "trajectories.arrow")).read_all())[:8]
    tokens = sum(len(t.token_ids) for t in trajs)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    res = {}
    for name, cache, threads in (("before", False, 1), ("after", True, torch_threads(ClusterConfig(), "learner", True))):
        cfg = LearnerConfig(lr=1e-5, grad_clip=1.0, warmup_ratio=0.0, mini_batch_size=0, vision_cache=cache)
        learner = ray.remote(num_cpus=1)(LearnerActor).remote(str(out / "model"), cfg, str(out / "data"),
                                                             threads=threads)
        ray.get(learner.train_step.remote([to_batch(trajs)], 99))  # warm-up
        m = min((ray.get(learner.train_step.remote([to_batch(trajs)], 99)) for _ in range(2)),
                key=lambda m: m["time/train_s"])
        res[name] = (tokens / m["time/train_s"], m["time/train_s"], threads)
        ray.kill(learner)
    ray.shutdown()
    (b_tps, b_s, _), (a_tps, a_s, a_thr) = res["before"], res["after"]
    print(f"[5] learner: {a_tps:,.0f} tokens/s ({len(trajs)} trajectories, {tokens:,} tokens, step {a_s:.2f} s, "
          f"{a_thr} threads, vision cache) vs {b_tps:,.0f} tokens/s uncached on 1 thread ({b_s:.2f} s) -> "
          f"{a_tps / b_tps:.2f}x", flush=True)
    return {"learner_tokens_per_s": a_tps, "learner_tokens_per_s_uncached_1_thread": b_tps}


def bench_trl(out: Path) -> dict:
    import importlib.util

    if importlib.util.find_spec("trl") is None:  # a bench-only extra
        raise SystemExit("stage trl needs TRL: pip install -e '.[bench]'")
    from bench.trl import side_by_side

    res = {vocab: side_by_side(out, vocab, steps=6) for vocab in ("small", "qwen")}
    return {"trl_ratio": res["small"]["ratio"], "trl_ratio_qwen_vocab": res["qwen"]["ratio"], "trl_detail": res}


def bench_sft(out: Path) -> dict:
    import importlib.util

    if importlib.util.find_spec("trl") is None:  # a bench-only extra
        raise SystemExit("stage sft needs TRL: pip install -e '.[bench]'")
    from bench.sft import side_by_side

    res = side_by_side(out, steps=6)
    return {"sft_trl_ratio": res["ratio"], "sft_trl_detail": res}


def bench_loop(out: Path) -> tuple[float, float, float]:
    res = {}
    for mode in ("sync", "async"):
        run_dir = out / f"loop_{mode}"
        log = vigorl("train", "--config", ROOT / "configs/local_cpu.yaml", f"out={run_dir}", f"model.path={out / 'model'}",
                     f"data.path={out / 'data'}", "loop.steps=6", f"loop.mode={mode}", "loop.prompts_per_step=2",
                     "rollout.group_size=4", "tracking.picture_every=0", "tracking.run_name=" + mode,
                     log=out / f"loop_{mode}.log", echo=False, timeout=1200)
        m = metric_series(sqlite_uri(run_dir), run_id(log), ("time/step_s", "episode/count", "learner_idle_frac"))
        res[mode] = (sum(m["episode/count"][1:]) / sum(m["time/step_s"][1:]), m["learner_idle_frac"][-1])
    ratio = res["async"][0] / res["sync"][0]
    print(f"[4] async vs sync: {res['async'][0]:.2f} vs {res['sync'][0]:.2f} samples/s -> {ratio:.2f}x "
          f"(goal >= 1.5x); learner idle {100 * res['async'][1]:.0f} % async vs {100 * res['sync'][1]:.0f} % sync "
          f"(goal <= 10 % where cores allow; this machine has 2 cores for 1 actor + 1 learner)")
    return ratio, res["async"][1], res["sync"][1]


STAGES = ("rollout", "weight_sync", "transport", "loop", "learner", "trl", "sft")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/bench")
    p.add_argument("--only", choices=STAGES, help="run one stage in this process (the default runs each "
                   "stage in its own process: one in-process vLLM engine per process)")
    p.add_argument("--skip-loop", action="store_true", help="skip the two training runs of ratio 4")
    p.add_argument("--stages", default=",".join(STAGES), help="comma-separated stages to run; results.json "
                   "keeps the other stages' figures from the last run")
    args = p.parse_args()
    out = Path(args.out).resolve()
    if args.only:
        rows = setup(out)
        fn = {"rollout": lambda: bench_rollout(out, rows), "weight_sync": lambda: bench_weight_sync(out),
              "transport": lambda: bench_transport(out), "learner": lambda: bench_learner(out),
              "loop": lambda: bench_loop(out), "trl": lambda: bench_trl(out),
              "sft": lambda: bench_sft(out)}[args.only]
        result = fn()  # a ratio, or a dict of named results
        print("RESULT " + json.dumps(result if isinstance(result, dict) else {args.only: result}), flush=True)
        return
    setup(out)
    stages = args.stages.split(",")
    if unknown := set(stages) - set(STAGES):
        raise SystemExit(f"--stages: unknown stage(s) {sorted(unknown)}; known: {', '.join(STAGES)}")
    old = out / "results.json"
    results = json.loads(old.read_text()) if stages != list(STAGES) and old.is_file() else {}
    for stage in stages:
        if stage == "loop" and args.skip_loop:
            continue
        p = subprocess.run([sys.executable, "-m", "bench.run", "--out", str(out), "--only", stage], cwd=ROOT,
                           capture_output=True, text=True)
        for line in p.stdout.splitlines():
            if line.startswith("["):
                print(line, flush=True)
            elif line.startswith("RESULT "):
                results.update(json.loads(line[len("RESULT "):]))
        if p.returncode != 0:
            print(f"stage {stage} failed:\n{p.stderr[-3000:]}", file=sys.stderr)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(f"results: {out / 'results.json'}")


if __name__ == "__main__":
    main()
