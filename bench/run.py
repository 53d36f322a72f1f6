"""`make bench`: four ratios, each measured side by side in one run on this machine. Never part of the tests.

  1. rollout path efficiency   generated tokens/s through the actor path (multi-turn env + crops + rewards
                               + Arrow) / raw vLLM generate tokens/s on the same model and first prompts
  2. weight sync               publish-to-actor seconds (object store + vLLM reload) / one memcpy of the bytes
                               sent (the language model: a frozen vision tower is not sent)
  3. transport                 Arrow encode + object-store move + decode / learner step time
  4. async vs sync             samples/s ratio and learner idle fraction of two short `vigorl train` runs

Usage: python -m bench.run [--out runs/bench] [--skip-loop]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def setup(out: Path):
    from data_gen.rows import read_rows
    from data_gen.synthetic import make_dataset
    from data_gen.tiny_model import make_tiny_model

    if not (out / "model" / "config.json").is_file():
        make_tiny_model(out / "model", vocab="small")
    if not (out / "model_qwen" / "config.json").is_file():
        make_tiny_model(out / "model_qwen", vocab="qwen")
    if not (out / "data" / "prompts.parquet").is_file():
        make_dataset("visual_search", 8, seed=0, out=out / "data", progress=False)
    return read_rows(out / "data")


def bench_rollout(out: Path, rows) -> tuple[float, list]:
    from transformers import AutoProcessor
    from actors.engine import make_llm
    from actors.rollout import Rollout
    from actors.trajectory import to_batch
    from actors.zoom import ZoomSettings, resize_for_model
    from data_gen.images import load_rgb, resolve_under

    llm = make_llm(str(out / "model"), max_model_len=8192, seed=0)
    proc = AutoProcessor.from_pretrained(out / "model")
    batch = [(r, resize_for_model(load_rgb(resolve_under(out / "data", r.image))), r.image) for r in rows]
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

    # raw vLLM on the same prompts: every turn prompt the actor sent, generated in one batch with the same
    # sampling parameters (an upper bound: no turn waits for the previous one, no env, no rewards)
    prompts, params = [p for p, _ in ro.trace], [q for _, q in ro.trace]
    llm.reset_prefix_cache()  # no head start from the actor's run
    llm.reset_mm_cache()
    llm.llm_engine.reset_encoder_cache()
    t0 = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    raw_s = time.perf_counter() - t0
    raw_tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    raw_tps, actor_tps = raw_tokens / raw_s, actor_tokens / actor_s
    turns = sum(t.num_turns for t in trajs) / len(trajs)
    print(f"[1] rollout path: actor {actor_tps:,.0f} tok/s ({len(trajs)} episodes, {turns:.1f} turns avg) vs raw "
          f"vLLM {raw_tps:,.0f} tok/s on the same {len(prompts)} turn prompts -> ratio {actor_tps / raw_tps:.2f} "
          f"(goal >= 0.9)")
    return actor_tps / raw_tps


def bench_weight_sync(out: Path) -> dict:
    import ray
    import torch
    from safetensors.torch import load_file

    from actors.engine import make_llm
    from actors.weights import load_weights, pack, unpack

    full = load_file(out / "model_qwen" / "model.safetensors")
    # what the learner publishes with learner.freeze_vision (the default): Learner.state_dict(trained_only=True)
    state = {k: v for k, v in full.items() if not k.startswith(("visual.", "model.visual."))}
    nbytes = sum(t.numel() * t.element_size() for t in state.values())
    flat = torch.empty(nbytes // 4, dtype=torch.float32)
    srcs = [t.reshape(-1).float() for t in state.values()]
    t0 = time.perf_counter()
    for _ in range(5):
        torch.cat(srcs, out=flat)
    memcpy_s = (time.perf_counter() - t0) / 5

    llm = make_llm(str(out / "model_qwen"), max_model_len=4096, seed=0)
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    load_weights(llm, full)  # warm-up
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        ref = ray.put(pack(state))  # the learner publishes (one copy into the object store)
        got = unpack(ray.get(ref))  # the actor maps it (zero-copy)
        t1 = time.perf_counter()
        load_weights(llm, got)  # vLLM copies (and on CPU repacks) into its parameters
        times.append((time.perf_counter() - t0, t1 - t0))
        del ref, got
    ray.shutdown()
    sync_s, move_s = min(times)
    print(f"[2] weight sync: {nbytes / 2**20:.0f} MiB sent ({len(state)} of {len(full)} tensors) and reloaded into vLLM "
          f"in {sync_s * 1e3:.0f} ms "
          f"(object store {move_s * 1e3:.0f} ms, vLLM reload {(sync_s - move_s) * 1e3:.0f} ms) vs one memcpy "
          f"{memcpy_s * 1e3:.1f} ms -> ratio {sync_s / memcpy_s:.1f} (goal <= 3)")
    return {"weight_sync": sync_s / memcpy_s, "weight_sync_bytes": nbytes}


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


def bench_loop(out: Path) -> tuple[float, float, float]:
    import mlflow

    res = {}
    for mode in ("sync", "async"):
        run_dir = out / f"loop_{mode}"
        cmd = [sys.executable, "-m", "cluster.cli", "train", "--config", str(ROOT / "configs/local_cpu.yaml"),
               f"out={run_dir}", f"model.path={out / 'model'}", f"data.path={out / 'data'}", "loop.steps=6",
               f"loop.mode={mode}", "loop.prompts_per_step=2", "rollout.group_size=4", "tracking.picture_every=0",
               "tracking.run_name=" + mode]
        subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True, timeout=1200)
        client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{run_dir / 'mlflow.db'}")
        run = client.search_runs([client.get_experiment_by_name("vigorl-demo").experiment_id],
                                 order_by=["attributes.start_time DESC"])[0]
        steps = sorted(client.get_metric_history(run.info.run_id, "time/step_s"), key=lambda m: m.step)[1:]
        episodes = sorted(client.get_metric_history(run.info.run_id, "episode/count"), key=lambda m: m.step)[1:]
        idle = sorted(client.get_metric_history(run.info.run_id, "learner_idle_frac"), key=lambda m: m.step)[-1].value
        res[mode] = (sum(e.value for e in episodes) / sum(s.value for s in steps), idle)
    ratio = res["async"][0] / res["sync"][0]
    print(f"[4] async vs sync: {res['async'][0]:.2f} vs {res['sync'][0]:.2f} samples/s -> {ratio:.2f}x "
          f"(goal >= 1.5x); learner idle {100 * res['async'][1]:.0f} % async vs {100 * res['sync'][1]:.0f} % sync "
          f"(goal <= 10 % where cores allow; this machine has 2 cores for 1 actor + 1 learner)")
    return ratio, res["async"][1], res["sync"][1]


STAGES = ("rollout", "weight_sync", "transport", "loop")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/bench")
    p.add_argument("--only", choices=STAGES, help="run one stage in this process (the default runs each "
                   "stage in its own process: one in-process vLLM engine per process)")
    p.add_argument("--skip-loop", action="store_true", help="skip the two training runs of ratio 4")
    args = p.parse_args()
    out = Path(args.out).resolve()
    if args.only:
        rows = setup(out)
        fn = {"rollout": lambda: bench_rollout(out, rows), "weight_sync": lambda: bench_weight_sync(out),
              "transport": lambda: bench_transport(out), "loop": lambda: bench_loop(out)}[args.only]
        result = fn()  # a ratio, or a dict of named results
        print("RESULT " + json.dumps(result if isinstance(result, dict) else {args.only: result}), flush=True)
        return
    setup(out)
    results = {}
    for stage in STAGES:
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
