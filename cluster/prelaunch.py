"""What every job command checks on the driver before any job code runs and before Ray starts.

`cluster.cli` calls `prelaunch(cmd, cfg, overwrite=, dry_run=)` for `vigorl demo/train/mcts/sft/eval` once the
config is loaded (recipes layered, official defaults applied). In order:

1. **Models** (data_gen/hub.py): `model.path` (demo, train, sft, eval) and, for a vLLM teacher,
   `teacher.model_path` (mcts) become local dirs — a Hub id `org/name[@revision]` its snapshot in the HF cache —
   and the path as given is kept in `model.source` / `teacher.model_source` for logs. Every actor, the resume
   fingerprint and every other reader of model files get the local dir. A command that builds its model
   (`vigorl demo`, `train make_tiny=...`) takes a missing path as the dir to build into.
2. **Data**, lightly: `data.path` (sft: `data`) exists; train, mcts, eval and demo read their rows and open the
   first images (a benchmark's loader runs in full under `--dry-run` or before `--overwrite` removes anything;
   otherwise the eval job itself loads it before Ray starts). Data a command generates (`make_data`, demo) is
   not checked before it exists.
3. **Outputs** (cluster/outdir.py): nothing an earlier run left in `out` is deleted or mixed with this run's
   without being asked; removals happen last, once every check has passed; `dry_run` deletes and writes
   nothing and prints what a run would do.
"""

from __future__ import annotations

import inspect
from pathlib import Path

from cluster.outdir import guard

FIRST_IMAGES = 2  # rows whose image the light data check opens


def prelaunch(cmd: str, cfg, *, overwrite: bool = False, dry_run: bool = False):
    """Resolve the command's models, check its data and its out dir (module doc); returns `cfg` (changed in
    place: local model dirs, their sources). Raises PrelaunchError (an output guard), cluster.resume.ResumeError
    (`--resume`), data_gen.hub.ModelNotFound, FileNotFoundError / ValueError / ImageError naming the bad input.
    With `dry_run` nothing is deleted or written, and what a run would do is printed."""
    if cmd not in ("demo", "train", "mcts", "sft", "eval"):
        raise ValueError(f"prelaunch: unknown command {cmd!r}")
    notes = resolve_models(cmd, cfg, download=not dry_run)
    plan = guard(cmd, cfg, overwrite)  # before the data: a forgotten --resume is named before a slow load
    notes += check_data(cmd, cfg, full=dry_run or bool(plan.remove))
    if cmd == "train":  # the GPU memory plan is a check too: nothing is removed for a run that cannot fit
        from cluster.plan import check_before_launch

        check_before_launch(cfg)
    if dry_run:
        notes += [f"would remove {p}" for p in plan.remove] + [f"would write {p}" for p in plan.write]
        print("".join(f"[{cmd}] --dry-run: {n}\n" for n in notes), end="")
        return cfg
    for n in notes:
        if " -> " in n:  # where a model path or Hub id went: worth a line in every run's log
            print(f"[{cmd}] {n}")
    plan.apply(cmd)
    return cfg


# ---- 1. models ---------------------------------------------------------------------------------------------

def resolve_models(cmd: str, cfg, download: bool = True) -> list[str]:
    """Replace the command's model path(s) with local dirs (data_gen.hub.resolve_model), keeping the path as
    given in the matching source field; returns a line per model for the console. `download=False` (dry run):
    a Hub model not cached yet stays an id, with a line saying what a run would download."""
    if cmd == "mcts":
        t = cfg.teacher
        if str(t.kind) != "vllm":
            return []
        if not t.model_path:
            raise ValueError("teacher.kind=vllm needs teacher.model_path (a local model dir or a Hub id org/name)")
        return [_resolve(t, "model_path", "model_source", "teacher.model_path", False, download)]
    builds = cmd == "demo" or (cmd == "train" and bool(cfg.make_tiny))
    return [_resolve(cfg.model, "path", "source", "model.path", builds, download)]


def _resolve(obj, key: str, source_key: str, what: str, builds: bool, download: bool) -> str:
    from data_gen.hub import NotCached, cache_id, is_model_dir, resolve_model, split_id

    given = getattr(obj, key)
    if builds and not is_model_dir(given):  # the job builds a tiny model there: a local path, not an id
        path, note = Path(given).expanduser().resolve(), f"{what}={given}: not there yet, the job builds it"
    else:
        try:
            path = resolve_model(given, what, download=download)
        except NotCached as e:  # dry run: the Hub has it, a run downloads it
            setattr(obj, source_key, given)
            return str(e)
        note = f"{what}={given}" + (f" -> {path}" if str(path) != given else "")
    prev = getattr(obj, source_key)
    prev_id = split_id(prev) if prev else None
    # a config written by an earlier run (`--resume`: OUT/config.yaml) holds the resolved dir and the source
    # the user gave then: keep that source while the path is still its model
    keep = bool(prev) and (Path(prev).expanduser().resolve() == path
                           or (prev_id is not None and prev_id[0] == cache_id(path)))
    setattr(obj, source_key, prev if keep else given)
    setattr(obj, key, str(path))
    return note


# ---- 2. data -----------------------------------------------------------------------------------------------

def check_data(cmd: str, cfg, full: bool = False) -> list[str]:
    """The light data check (module doc); `full`: a benchmark's loader runs in full (eval)."""
    if cmd == "sft":
        if not Path(cfg.data).exists():
            raise FileNotFoundError(f"data: {cfg.data} does not exist")
        return [f"data={cfg.data} exists"]
    path = Path(cfg.data.path)
    generated = {"demo": "demo", "train": "make_data", "mcts": "make_data"}.get(cmd)
    if generated and (cmd == "demo" or getattr(cfg, "make_data", 0)) and not _has_rows(path):
        return [f"data.path={path}: not there yet, the job generates it ({generated})"]
    from data_gen.formats import load_prompts
    from data_gen.tables import exists

    if not exists(cfg.data.path):  # a file, a dir (DIR@split), or a Hub dataset id name@split
        raise FileNotFoundError(f"data.path: {path} does not exist")
    if getattr(cfg, "benchmark", "") and path.is_dir():  # a benchmark's own folder (not a released eval file)
        return [_check_benchmark(cfg, full)]
    skip = cmd == "eval" and str(cfg.on_bad_item) == "skip"  # the eval job counts a bad image and goes on
    # every format data_gen/formats.py reads; the first rows only, unless `full` (the job reads them all anyway,
    # before Ray starts)
    rows = load_prompts(cfg, on_error="skip" if skip else "raise", limit=0 if full else FIRST_IMAGES)[0]
    rows = rows[: cfg.limit] if getattr(cfg, "limit", 0) else rows
    if not rows:
        raise ValueError(f"data.path: {path} holds no rows")
    return [f"data.path={cfg.data.path}: {len(rows)} {'rows' if full else 'first rows read'}, "
            + _open_first(cfg, rows, skip=skip)]


def _has_rows(path: Path) -> bool:
    from data_gen.rows import PROMPTS_FILE

    return (path / PROMPTS_FILE).is_file() or (path.is_file())


def _image_root(cfg) -> Path:
    """Where a row's relative image path resolves (data_gen.formats.image_root: data.image_root, else data.path,
    its directory when data.path is a file)."""
    from data_gen.formats import image_root

    return image_root(cfg.data)


def _open_first(cfg, rows: list, skip: bool) -> str:
    """Open the images of the first rows (FIRST_IMAGES): an ImageError names the row and file. With `skip` (eval,
    on_bad_item=skip) a bad image is the job's to count, and only no good image at all among them is an error."""
    from data_gen.images import ImageError, load_rgb, resolve_under

    root, opened, errors = _image_root(cfg), [], []
    for row in rows[:FIRST_IMAGES]:
        try:
            im = load_rgb(resolve_under(root, row.image))
            opened.append(f"{im.width}x{im.height}")
        except ImageError as e:
            if not skip:
                raise ImageError(f"data.path={cfg.data.path} row {row.prompt_id!r}: {e}") from None
            errors.append(f"row {row.prompt_id!r}: {e}")
    if not opened:
        raise ImageError(f"data.path={cfg.data.path}: none of the first {len(errors)} images opens: {'; '.join(errors)}")
    return f"first image(s) open ({', '.join(opened)})"


def _check_benchmark(cfg, full: bool) -> str:
    from data_gen.benchmarks import LOADERS

    if cfg.benchmark not in LOADERS:
        raise ValueError(f"benchmark must be one of {sorted(LOADERS)}, got {cfg.benchmark!r}")
    loader, root = LOADERS[cfg.benchmark], Path(cfg.data.path)
    param = inspect.signature(loader).parameters.get("file")
    name = cfg.benchmark_file or (param.default if param is not None else "")
    if name and not (root / name).is_file():
        raise FileNotFoundError(f"benchmark={cfg.benchmark}: no annotation file {root / name} (benchmark_file=)")
    if not full:  # the eval job loads it, every image opened, before Ray starts
        return f"benchmark={cfg.benchmark} at {root}" + (f": {name} found" if name else "")
    on_bad = str(getattr(cfg, "on_bad_item", "raise"))  # train has no on_bad_item: a bad item stops it
    rows, skipped = loader(root, on_error=on_bad, **({"file": name} if param is not None else {}))
    if not rows:
        raise ValueError(f"benchmark={cfg.benchmark} at {root}: no items" + (f" (skipped {dict(skipped)})" if skipped
                                                                             else ""))
    return (f"benchmark={cfg.benchmark} at {root}: {len(rows)} items, {sum(skipped.values())} skipped, "
            + _open_first(cfg, rows, skip=on_bad == "skip"))


