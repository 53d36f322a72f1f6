"""The `vigorl` command line.

    vigorl make-tiny-model OUT [--vocab small|qwen] [--size tiny|small] [--seed N]
    vigorl make-data --task T --n N --seed S OUT
    vigorl demo [--config configs/demo.yaml] [key=value ...]
    vigorl train --config configs/local_cpu.yaml [--address ADDR] [--verbose] [key=value ...]
    vigorl train --resume OUT_DIR [--config ...] [key=value ...]
    vigorl mcts --config configs/mcts_local.yaml [--address ADDR] [key=value ...]
    vigorl linearize TREES.jsonl OUT_DIR [key=value ...]
    vigorl to-multiturn IN_DIR OUT_DIR [key=value ...]
    vigorl sft --config configs/sft_local.yaml [--address ADDR] [key=value ...]
    vigorl eval --config configs/eval_local.yaml [--address ADDR] [--verbose] [key=value ...]
    vigorl scale OUT_DIR --rollout-actors K
    vigorl stop OUT_DIR
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="vigorl", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    m = sub.add_parser("make-tiny-model", help="write a random tiny Qwen2.5-VL model dir (offline)")
    m.add_argument("out")
    m.add_argument("--vocab", choices=["small", "qwen"], default="small")
    m.add_argument("--size", choices=["tiny", "small"], default="tiny")
    m.add_argument("--seed", type=int, default=0)

    d = sub.add_parser("make-data", help="render a synthetic task dataset (images + prompts.parquet)")
    d.add_argument("out")
    d.add_argument("--task", required=True)
    d.add_argument("--n", type=int, required=True)
    d.add_argument("--seed", type=int, default=0)

    e = sub.add_parser("demo", help="play and score one zoom episode with the tiny model")
    e.add_argument("--config", default=None, help="YAML recipe (configs.schema.DemoConfig)")
    e.add_argument("overrides", nargs="*", help="key=value overrides, e.g. zoom.dot=true")

    for name, help_, schema, example in (
            ("train", "run the actor-learner GRPO loop (Ray, vLLM, DeepSpeed, MLflow)", "TrainConfig",
             "loop.steps=2 loop.mode=async"),
            ("mcts", "teacher-guided MCTS trace generation (a Ray job; resumes where it stopped)", "MCTSJobConfig",
             "search.simulations=20 limit=100"),
            ("sft", "supervised fine-tuning on sharegpt rows (the RL learner's DeepSpeed code)", "SFTConfig",
             "epochs=3 learner.lr=1e-5"),
            ("eval", "score a model on a benchmark or synthetic set (rollout actors only; resumes)", "EvalConfig",
             "benchmark=screenspot_v2 data.path=DIR rollout.group_size=4")):
        j = sub.add_parser(name, help=help_)
        j.add_argument("--config", action="append", default=None,
                       help=f"YAML recipe (configs.schema.{schema}); repeat to layer, e.g. a configs/layouts/ file")
        j.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or a local Ray)")
        j.add_argument("overrides", nargs="*", help=f"key=value overrides, e.g. {example}")
        if name in ("train", "eval"):
            j.add_argument("--verbose", action="store_true",
                           help="actor and engine output on the console too (default: only in OUT/logs/)")
        if name == "train":
            j.add_argument("--resume", metavar="OUT_DIR", default=None,
                           help="go on from the newest complete checkpoint in OUT_DIR/resume, same MLflow run; the "
                                "config is OUT_DIR/config.yaml unless --config is given (overrides apply on top)")

    lin = sub.add_parser("linearize", help="MCTS trees -> single-turn SFT chains (train.jsonl, val.jsonl)")
    lin.add_argument("trees")
    lin.add_argument("out")
    lin.add_argument("overrides", nargs="*", help="key=value (data_gen.traces.LinearizeConfig)")
    mt = sub.add_parser("to-multiturn", help="linearised chains -> multi-turn zoom dialogues with crops")
    mt.add_argument("inp")
    mt.add_argument("out")
    mt.add_argument("overrides", nargs="*", help="key=value (data_gen.traces.MultiTurnConfig)")

    sc = sub.add_parser("scale", help="add or remove rollout actors of a running `vigorl train` (at its next step)")
    sc.add_argument("out", help="the run's out dir")
    sc.add_argument("--rollout-actors", type=int, required=True)
    st = sub.add_parser("stop", help="end a running `vigorl train` after its step in progress, with a checkpoint")
    st.add_argument("out", help="the run's out dir")

    args = p.parse_args(argv)
    if args.cmd == "make-tiny-model":
        from data_gen.tiny_model import make_tiny_model

        print(make_tiny_model(args.out, vocab=args.vocab, size=args.size, seed=args.seed))
    elif args.cmd == "make-data":
        from data_gen.synthetic import GENERATORS, make_dataset

        if args.task not in GENERATORS:
            p.error(f"--task must be one of {sorted(GENERATORS)}, got {args.task!r}")
        rows = make_dataset(args.task, args.n, args.seed, args.out)
        print(f"wrote {len(rows)} rows to {args.out}/prompts.parquet")
    elif args.cmd in ("scale", "stop"):
        from cluster.control import request_scale, request_stop

        try:
            path = request_scale(args.out, args.rollout_actors) if args.cmd == "scale" else request_stop(args.out)
        except (FileNotFoundError, ValueError) as e:
            print(f"vigorl {args.cmd}: {e}", file=sys.stderr)
            return 2
        print(f"[scale] asked for {args.rollout_actors} rollout actor(s) in {path}; the run applies it at its next step"
              if args.cmd == "scale" else f"[stop] asked in {path}; the run ends after its step in progress")
    elif args.cmd in ("linearize", "to-multiturn"):
        from configs import schema as config
        from data_gen import traces

        schema = traces.LinearizeConfig if args.cmd == "linearize" else traces.MultiTurnConfig
        try:
            cfg = config.load(schema, None, args.overrides)
        except config.ConfigError as e:
            print(f"vigorl {args.cmd}: {e}", file=sys.stderr)
            return 2
        if args.cmd == "linearize":
            counts = traces.linearize(args.trees, args.out, cfg)
        else:
            counts = traces.to_multiturn(args.inp, args.out, cfg)
        print(f"[{args.cmd}] {json.dumps(counts)} -> {args.out}")
    elif args.cmd in ("demo", "train", "mcts", "sft", "eval"):
        from configs import schema as config

        schema = {"demo": config.DemoConfig, "train": config.TrainConfig, "mcts": config.MCTSJobConfig,
                  "sft": config.SFTConfig, "eval": config.EvalConfig}[args.cmd]
        key = "cluster.address" if args.cmd == "train" else "address"
        overrides = list(args.overrides) + ([f"{key}={args.address}"] if getattr(args, "address", None) else [])
        overrides += ["verbose=true"] if getattr(args, "verbose", False) else []
        recipe = args.config
        if getattr(args, "resume", None):  # the run's own resolved config, unless the user names one
            from cluster.resume import CONFIG_FILE

            recipe = recipe or [str(Path(args.resume) / CONFIG_FILE)]
            if not Path(recipe[0]).is_file():
                print(f"vigorl train: --resume {args.resume}: no {CONFIG_FILE} there (not a `vigorl train` run "
                      "directory?); give the run's recipe with --config", file=sys.stderr)
                return 2
            overrides += [f"out={args.resume}", "resume=true"]
        try:
            cfg = config.official_defaults(config.load(schema, recipe, overrides))
        except (config.ConfigError, ValueError) as e:
            print(f"vigorl {args.cmd}: {e}", file=sys.stderr)
            return 2
        if args.cmd == "demo":
            from cluster import demo

            demo.run(cfg)
        elif args.cmd == "mcts":
            from cluster import mcts_job

            mcts_job.run(cfg)
        elif args.cmd == "sft":
            from cluster import sft_job

            sft_job.run(cfg)
        elif args.cmd == "eval":
            from cluster import eval_job

            eval_job.run(cfg)
        else:
            from cluster import train
            from cluster.resume import ResumeError

            try:
                train.run(cfg)
            except ResumeError as e:
                print(f"vigorl train: --resume: {e}", file=sys.stderr)
                return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
