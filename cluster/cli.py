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
    vigorl plan --config RECIPE [--config LAYOUT] [--gpu-memory-gb G] [--json] [key=value ...]
    vigorl scale OUT_DIR --rollout-actors K
    vigorl stop OUT_DIR
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


JOBS = {"demo": "DemoConfig", "train": "TrainConfig", "mcts": "MCTSJobConfig", "sft": "SFTConfig",
        "eval": "EvalConfig"}  # the job commands and their config dataclass (configs/schema.py, configs/jobs.py)


class _Parser(argparse.ArgumentParser):
    """A subcommand's parser; a job command's `--help` also lists its config keys (`schema`), built only when
    help is asked for."""

    schema = ""

    def format_help(self) -> str:
        return super().format_help() + (config_help(self.schema) if self.schema else "")


def config_help(schema_name: str) -> str:
    """The `key=value` fields of a config schema, one line each: key = default [type]  doc (configs/schema.py,
    configs/jobs.py)."""
    from configs import jobs, schema
    from configs.fields import describe

    cls = getattr(schema, schema_name, None) or getattr(jobs, schema_name)
    rows = describe(cls)
    width = max(len(f"{k} = {d}") for k, _, d, _ in rows)
    return (f"\nconfig keys (key=value; {cls.__module__}.{schema_name}; defaults before a recipe, null: the "
            "official value for data.task / data.mode):\n"
            + "".join(f"  {f'{k} = {d}':<{width}}  [{t}]  {doc}\n" for k, t, d, doc in rows))


def check_names(cmd: str, cfg) -> None:
    """The config values only layers above configs/ can check, once paths are anchored (cluster/home.py):
    the rollout prompt name and system prompt file (`actors.actor.check_rollout`, which every rollout actor's
    constructor runs too) and the MCTS teacher's prompt file. ConfigError naming the key."""
    from configs.base import ConfigError

    if hasattr(cfg, "rollout"):
        from actors.actor import check_rollout

        check_rollout(cfg)
    if cmd == "mcts" and cfg.teacher.prompt_file:
        from data_gen.teachers import read_prompt_file

        try:
            read_prompt_file(cfg.teacher.prompt_file, cfg.teacher.prompt_unescape)
        except (OSError, ValueError) as e:  # missing, unreadable, empty, not UTF-8
            raise ConfigError(str(e) if str(e).startswith("teacher.prompt_file")
                              else f"teacher.prompt_file: {cfg.teacher.prompt_file}: {e}") from None


def main(argv: list[str] | None = None) -> int:
    """The command line. Config errors print one line and exit 2. Other errors: from the command line
    (`argv` None: the `vigorl` script, `python -m cluster.cli`) one line `vigorl <cmd>: <error>` and exit 1,
    the traceback with `--debug`; called with `argv` (tests, scripts) they are raised to the caller."""
    if argv is not None:
        return _main(argv)
    argv = sys.argv[1:]
    try:
        return _main(argv)
    except Exception as e:  # noqa: BLE001 - every error becomes one line; --debug shows where it came from
        if "--debug" in argv:
            raise
        cmd = next((a for a in argv if not a.startswith("-")), "")
        lines = str(e).strip().splitlines() or [type(e).__name__]
        # Ray's errors carry the remote traceback: its last line is the exception itself
        text = lines[-1] if type(e).__module__.startswith("ray") else " ".join(x.strip() for x in lines)
        print(f"vigorl {cmd}: {text} (--debug: traceback)", file=sys.stderr)
        return 1


def _main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="vigorl", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser)

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
    e.add_argument("--config", default=None, help="YAML recipe (configs.jobs.DemoConfig)")
    e.add_argument("overrides", nargs="*", help="key=value overrides, e.g. zoom.dot=true")
    e.schema = JOBS["demo"]

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
        j.schema = schema
        j.add_argument("--config", action="append", default=None,
                       help=f"YAML recipe ({schema}, keys below); repeat to layer, e.g. a configs/layouts/ file")
        j.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or a local Ray)")
        j.add_argument("overrides", nargs="*", help=f"key=value overrides, e.g. {example}")
        j.add_argument("--overwrite", action="store_true",
                       help="start afresh in an out an earlier run wrote (its checkpoints / items / trees / model "
                            "are removed once every check has passed); without it such a run stops before Ray")
        if name in ("train", "eval"):
            j.add_argument("--verbose", action="store_true",
                           help="actor and engine output on the console too (default: only in OUT/logs/)")
        if name == "train":
            j.add_argument("--resume", metavar="OUT_DIR", default=None,
                           help="go on from the newest complete checkpoint in OUT_DIR/resume, same MLflow run; the "
                                "config is OUT_DIR/config.yaml unless --config is given (overrides apply on top)")

    pl = sub.add_parser("plan", help="GPU memory per role and per GPU of a recipe + layout + model, and a verdict")
    pl.add_argument("--config", action="append", default=None,
                    help="YAML recipe (configs.schema.TrainConfig); repeat to layer a configs/layouts/ file")
    pl.add_argument("--gpu-memory-gb", type=float, default=None,
                    help="memory of one GPU in GiB (default: the visible GPUs', else 80)")
    pl.add_argument("--json", action="store_true", help="print the plan as JSON")
    pl.add_argument("overrides", nargs="*", help="key=value overrides, e.g. model.path=Qwen/Qwen2.5-VL-7B-Instruct")

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

    for name, parser in sub.choices.items():
        parser.add_argument("--debug", action="store_true", help="on an error, the traceback (default: one line)")
        if name in JOBS:
            parser.add_argument("--print-config", action="store_true",
                                help="print the resolved config (recipes layered, overrides, official defaults) "
                                     "as YAML and exit")
            parser.add_argument("--dry-run", action="store_true",
                                help="run every check made before Ray starts (config values, models, data, out "
                                     "dir) and exit without Ray, deleting or writing nothing")

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
    elif args.cmd == "plan":
        from cluster import plan as planning
        from configs.base import ConfigError
        from configs.load import load
        from configs.released import official_defaults
        from configs.schema import TrainConfig

        try:
            cfg = official_defaults(load(TrainConfig, args.config, args.overrides))
            gb = args.gpu_memory_gb or planning.visible_gpu_gb() or 80.0
            result = planning.with_knobs(cfg, gb, planning.model_shapes(cfg.model.path))
        except (ConfigError, ValueError, FileNotFoundError) as e:
            print(f"vigorl plan: {e}", file=sys.stderr)
            return 2
        print(json.dumps(planning.summary(result), indent=2) if args.json else planning.render(result, cfg))
        return 0 if result.fits else 1
    elif args.cmd in ("linearize", "to-multiturn"):
        from configs.base import ConfigError
        from configs.load import load
        from data_gen import traces

        schema = traces.LinearizeConfig if args.cmd == "linearize" else traces.MultiTurnConfig
        try:
            cfg = load(schema, None, args.overrides)
        except ConfigError as e:
            print(f"vigorl {args.cmd}: {e}", file=sys.stderr)
            return 2
        if args.cmd == "linearize":
            counts = traces.linearize(args.trees, args.out, cfg)
        else:
            counts = traces.to_multiturn(args.inp, args.out, cfg)
        from cluster.tracking import carry_run_file

        # lineage: the MCTS run the trees came from goes along, so `vigorl sft` on this data links to it
        carry_run_file(args.trees if args.cmd == "linearize" else args.inp, args.out)
        print(f"[{args.cmd}] {json.dumps(counts)} -> {args.out}")
    elif args.cmd in ("demo", "train", "mcts", "sft", "eval"):
        from configs.base import ConfigError
        from configs.jobs import DemoConfig, EvalConfig, MCTSJobConfig, SFTConfig
        from configs.load import load
        from configs.released import official_defaults
        from configs.schema import TrainConfig

        schema = {"demo": DemoConfig, "train": TrainConfig, "mcts": MCTSJobConfig, "sft": SFTConfig,
                  "eval": EvalConfig}[args.cmd]
        key = "cluster.address" if args.cmd == "train" else "address"
        overrides = list(args.overrides) + ([f"{key}={args.address}"] if getattr(args, "address", None) else [])
        overrides += ["verbose=true"] if getattr(args, "verbose", False) else []
        recipe = args.config
        if getattr(args, "resume", None):  # the run's own resolved config, unless the user names one
            from cluster.home import HomeError, resolve
            from cluster.resume import CONFIG_FILE

            try:  # a relative OUT_DIR means the same dir as a relative out= (cluster/home.py)
                args.resume = resolve(args.resume, "--resume")
            except HomeError as e:
                print(f"vigorl train: {e}", file=sys.stderr)
                return 2
            recipe = recipe or [str(Path(args.resume) / CONFIG_FILE)]
            if not Path(recipe[0]).is_file():
                print(f"vigorl train: --resume {args.resume}: no {CONFIG_FILE} there (not a `vigorl train` run "
                      "directory?); give the run's recipe with --config", file=sys.stderr)
                return 2
            overrides += [f"out={args.resume}", "resume=true"]
        if args.cmd != "demo":  # MLflow: the run name's recipe; the command line over MLFLOW_* over a recipe
            from cluster.tracking import invocation

            invocation(args.cmd, recipe, overrides, resume=bool(getattr(args, "resume", None)))
        try:
            # the process's one call of official_defaults: each job's run() takes cfg with them applied
            cfg = official_defaults(load(schema, recipe, overrides))
            from cluster.home import anchor_paths

            anchor_paths(cfg, args.cmd)  # relative paths: VIGORL_HOME, never Ray's job working dir (HomeError)
            if args.print_config:
                from omegaconf import OmegaConf

                print(OmegaConf.to_yaml(OmegaConf.structured(cfg)), end="")
                return 0
            check_names(args.cmd, cfg)
        except (ConfigError, ValueError) as e:
            print(f"vigorl {args.cmd}: {e}", file=sys.stderr)
            return 2
        from cluster.outdir import PrelaunchError
        from cluster.prelaunch import prelaunch
        from cluster.resume import ResumeError

        try:  # models resolved, data read, out guarded: before any job code and before Ray (cluster/prelaunch.py)
            cfg = prelaunch(args.cmd, cfg, overwrite=getattr(args, "overwrite", False), dry_run=args.dry_run)
        except (PrelaunchError, ResumeError) as e:
            print(f"vigorl {args.cmd}: {'--dry-run: ' if args.dry_run else ''}"
                  f"{'--resume: ' if isinstance(e, ResumeError) else ''}{e}", file=sys.stderr)
            return 2
        except Exception as e:  # noqa: BLE001 - a dry run reports any failed check as its result
            if not args.dry_run or args.debug:
                raise
            print(f"vigorl {args.cmd}: --dry-run: {type(e).__name__}: {e}", file=sys.stderr)
            return 1
        if args.dry_run:
            print("dry run: all checks passed")
            return 0
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
