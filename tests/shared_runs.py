"""The `vigorl` runs that several test files read, each made once a session (tests/conftest.py `shared`).

A job launch (Ray, a vLLM engine, DeepSpeed, MLflow) costs 30-45 s on 2 cores, so one run carries the contracts of
several files; each file asserts its own part and says which run it reads. The runs (lazily, on first use):

  mixed_train  `vigorl train model.path=REPO data.path=MIXED`, 1 step: REPO is the tiny model in an offline HF cache
               (Hub ids: test_hub_ray), MIXED a dir with a file of each table format (test_formats_ray), its MLflow
               run in the store and experiment MLFLOW_TRACKING_URI / MLFLOW_EXPERIMENT_NAME name (test_tracking_ray)
  mixed_eval   `vigorl eval` of mixed_train's checkpoint on MIXED, to the same store (test_formats_ray; the
               train -> eval chain of test_tracking_ray)
  bench_eval   `vigorl eval model.path=REPO benchmark=vstar` on a released V*Bench file (test_formats_ray,
               test_hub_ray)
  sft          `vigorl sft model.path=REPO` on LLaMA-Factory sharegpt data (test_formats_ray, test_hub_ray)

All single-turn, 24 tokens a turn, 2 episodes a prompt; the commands run from the repo root as a user runs them.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from functools import cached_property
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
REPO = "vigorl-test/tiny-vl"
TRAIN, EVAL, SFT = (ROOT / "configs" / f for f in ("local_cpu.yaml", "eval_local.yaml", "sft_local.yaml"))
SMALL = ["data.task=visual_search", "data.mode=single_turn", "rollout.prompt=vigorl_single_turn",
         "sampling.max_tokens_per_turn=24"]
# the prompt id each file of mixed_dir gives its one row
MIXED_IDS = {"a_vigorl-0", "b_easyr1-0", "c_easyr1-0", "d_verl-0", "e0"}


def png(colour=(200, 30, 30), size=(112, 112)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "PNG")
    return buf.getvalue()


def mixed_dir(d: Path) -> Path:
    """A dir of five files, one per table format, each row a question about the red square's colour: vigorl's
    parquet as pandas writes it (large_string, int32, its own column order, an extra column), the released RL data
    as JSON lines with an image path and as parquet with an HF `Image` struct, verl's parquet, a released
    evaluation file. The two embedded images differ by a shade, so the image cache holds two files."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    (d / "imgs").mkdir(parents=True)
    (d / "imgs" / "red.png").write_bytes(png())
    q = "What colour is the square?\n(A) red\n(B) blue"
    pd.DataFrame({"gold": ["red"], "question": [q], "image": ["imgs/red.png"], "note": ["extra"],
                  "width": pd.array([112], dtype="int32"), "height": pd.array([112], dtype="int32")}
                 ).to_parquet(d / "a_vigorl.parquet")
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
    return d


def vstar_file(root: Path) -> Path:
    """The released V*Bench JSON lines (ids 0 and 1, golds red and blue), images under root (IMAGE_ROOT)."""
    for k, colour in enumerate(("red", "blue")):
        img = root / "visual_search" / "vstar" / "direct_attributes" / f"sa_{k}.jpg"
        img.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (112, 112), (200, 30, 30) if colour == "red" else (0, 0, 255)).save(img)
    f = root / "visual_search" / "vstar" / "vstarbench_test.jsonl"
    f.write_text("".join(json.dumps({"id": k, "image": f"visual_search/vstar/direct_attributes/sa_{k}.jpg",
                                     "conversations": [{"from": "human", "value": "<image>\nWhat colour is it?"},
                                                       {"from": "gpt", "value": c}]}) + "\n"
                         for k, c in enumerate(("red", "blue"))))
    return f


def llama_factory_dir(d: Path) -> Path:
    """A dataset_info.json entry naming a sharegpt JSON array (`conversations` / from / value, a `system` column,
    2 rows), images under the dataset dir; another naming validation rows in the released SFT form (`messages` /
    role / content, `gt_answer`, 1 row)."""
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
    return d


class Shared:
    """The session's runs (module doc) under `root`; each property runs its command once."""

    def __init__(self, root: Path):
        from conftest import hf_cache
        from data_gen.tiny_model import make_tiny_model

        self.root = root
        self.model = make_tiny_model(root / "model", vocab="small")  # a local dir, for what needs no Hub id
        self.cache = root / "hf" / "hub"
        rev = hf_cache(self.model, self.cache, REPO)
        self.snap = self.cache / f"models--{REPO.replace('/', '--')}" / "snapshots" / rev
        self.mixed = mixed_dir(root / "mixed")
        self.vstar_root = root / "released"
        self.vstar = vstar_file(self.vstar_root)
        self.chain_store = root / "chain" / "mlflow.db"  # MLFLOW_TRACKING_URI of mixed_train and mixed_eval
        self.chain_store.parent.mkdir()

    def env(self, chain: bool = False) -> dict:
        """The users' environment: the Hub offline with REPO in its cache, this session's image cache; MLflow in
        the chain store and experiment "chain" (`chain`), else in root/mlflow.db (no experiment named)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        store = self.chain_store if chain else self.root / "mlflow.db"
        env.update(HF_HUB_CACHE=str(self.cache), HF_HUB_OFFLINE="1", VIGORL_IMAGE_CACHE=str(self.root / "image-cache"),
                   MLFLOW_TRACKING_URI=f"sqlite:///{store}")
        return env | ({"MLFLOW_EXPERIMENT_NAME": "chain"} if chain else {})

    def vigorl(self, *args, chain: bool = False, check: bool = True) -> subprocess.CompletedProcess:
        """`python -m cluster.cli ARGS` from the repo root in `env(chain)`; asserts success unless told not."""
        p = subprocess.run([sys.executable, "-m", "cluster.cli", *map(str, args)], cwd=ROOT, env=self.env(chain),
                           capture_output=True, text=True, timeout=900)
        if check:
            assert p.returncode == 0, (p.stdout[-3000:], p.stderr[-5000:])
        return p

    @property
    def train_args(self) -> list:
        """mixed_train's command line: 1 step of every row of MIXED (5 prompts) x 2 episodes."""
        return ["train", "--config", TRAIN, f"out={self.root / 'train'}", f"model.path={REPO}", "make_tiny=''",
                f"data.path={self.mixed}", "make_data=0", "rollout.guided=false", "loop.steps=1",
                f"loop.prompts_per_step={len(MIXED_IDS)}", "rollout.group_size=2", "tracking.picture_every=1",
                "tracking.checkpoint_every=0", *SMALL]

    @cached_property
    def mixed_train(self) -> dict:
        """{"out", "stdout", "image_cache": the cache's file names right after the run}."""
        p = self.vigorl(*self.train_args, chain=True)
        return dict(out=self.root / "train", stdout=p.stdout,
                    image_cache=sorted(f.name for f in (self.root / "image-cache").iterdir()))

    @property
    def checkpoint(self) -> Path:
        return self.mixed_train["out"] / "checkpoints" / "step_00001"

    @cached_property
    def mixed_eval(self) -> Path:
        """The eval's out (items.jsonl, summary.json, gallery/)."""
        out = self.root / "eval-mixed"
        self.vigorl("eval", "--config", EVAL, f"out={out}", f"model.path={self.checkpoint}", f"data.path={self.mixed}",
                    "cluster.rollout_cpus=1", "gallery=8", *SMALL, chain=True)
        return out

    def bench_eval_args(self, model: str = REPO) -> list:
        return ["eval", "--config", EVAL, f"out={self.root / 'eval-bench'}", f"model.path={model}", "benchmark=vstar",
                f"data.path={self.vstar}", f"data.image_root={self.vstar_root}", "cluster.rollout_cpus=1", "gallery=8",
                *SMALL]

    @cached_property
    def bench_eval(self) -> Path:
        out = self.root / "eval-bench"
        self.vigorl(*self.bench_eval_args())
        return out

    @cached_property
    def sft(self) -> dict:
        """{"out", "stdout"}: 2 steps of batch 1 on the 2 sharegpt rows, validation on the released-form row."""
        d = llama_factory_dir(self.root / "lf")
        out = self.root / "sft"
        p = self.vigorl("sft", "--config", SFT, f"out={out}", f"model.path={REPO}", f"data={d}",
                        "dataset=colour_train", "val_dataset=colour_val", "batch_size=1", "max_steps=2")
        return dict(out=out, stdout=p.stdout)
