"""Every reader of data_gen/formats.py on small files the tests write: vigorl's prompts.parquet as pandas writes
it, the released RL data (EasyR1: JSON lines with image paths, parquet with HF `Image` structs and raw bytes),
verl's parquet, `datasets` save_to_disk dirs and Hub ids (offline), the released evaluation files (plain and
through `benchmark=`), and the SFT side: LLaMA-Factory's sharegpt / alpaca rows, dataset_info.json entries, and
the chat rendered by the checkpoint's own template (ids equal to the processor's)."""

import io
import json
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from configs.jobs import EvalConfig, SFTConfig
from configs.schema import DataConfig, TrainConfig
from data_gen import tables
from data_gen.formats import image_root, load_prompts, read_prompts, read_rows
from data_gen.sft_formats import SFTAttr, to_chat
from data_gen.tables import FormatError
from data_gen.images import image_cache, load_rgb, resolve_under


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """Embedded images go to a cache of this test's own."""
    monkeypatch.setenv("VIGORL_IMAGE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def png(path: Path | None = None, size=(56, 28), colour=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "PNG")
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(buf.getvalue())
    return buf.getvalue()


def jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def data(path, **kw) -> DataConfig:
    return DataConfig(path=str(path), **kw)


# ---- vigorl's own prompts.parquet -------------------------------------------------------------------------

def test_prompts_parquet_written_by_pandas_is_read_by_its_columns(tmp_path):
    """Column order, extra columns, large_string and int32 (what pandas writes) and the optional columns left
    out: read by selecting and casting, the rest filled (prompt_id FILE-ROW, task data.task, size from the image)."""
    import pandas as pd

    png(tmp_path / "images" / "a.png", (84, 56))
    df = pd.DataFrame({"note": ["x", "y"], "gold": ["red", "(1, 2, 30, 20)"], "question": ["Colour?", "Click it"],
                       "image": ["images/a.png", "images/a.png"], "task": ["visual_search", "gui_grounding"],
                       "width": pd.array([84, 84], dtype="int32"), "height": pd.array([56, 56], dtype="int32")})
    df.to_parquet(tmp_path / "prompts.parquet")
    assert pq.read_schema(tmp_path / "prompts.parquet").field("gold").type in (pa.string(), pa.large_string())
    rows = read_rows(tmp_path)
    assert [(r.prompt_id, r.task, r.width, r.height, r.gold, r.options, r.source) for r in rows] == [
        ("prompts-0", "visual_search", 84, 56, "red", [], "prompts.parquet"),
        ("prompts-1", "gui_grounding", 84, 56, "(1, 2, 30, 20)", [], "prompts.parquet")]
    # no task / width / height columns: data.task and the image's own size
    df.drop(columns=["task", "width", "height"]).iloc[:1].to_parquet(tmp_path / "prompts.parquet")
    (row,), skipped = read_prompts(str(tmp_path), data=data(tmp_path, task="spatial"))
    assert (row.task, row.width, row.height) == ("spatial", 84, 56) and not skipped


def test_prompts_parquet_bad_cells_name_file_row_and_column(tmp_path):
    png(tmp_path / "a.png")
    base = {"prompt_id": ["p0", "p1", "p2"], "task": ["spatial"] * 3, "image": ["a.png"] * 3,
            "question": ["Q?"] * 3, "gold": ["left", "right", "up"], "width": [56, 56, 56], "height": [28, 28, 28]}
    pq.write_table(pa.table(base | {"width": ["56", "wide", "56"]}), tmp_path / "prompts.parquet")
    with pytest.raises(FormatError, match=r"prompts.parquet row 1, column 'width': 'wide' is not int64"):
        read_rows(tmp_path)
    pq.write_table(pa.table(base | {"gold": ["left", "right", None]}), tmp_path / "prompts.parquet")
    with pytest.raises(FormatError, match=r"prompts.parquet row 2, column 'gold': missing"):
        read_rows(tmp_path)
    pq.write_table(pa.table(base | {"prompt_id": ["p0", "p1", "p0"]}), tmp_path / "prompts.parquet")
    with pytest.raises(FormatError, match=r"row 2: prompt id 'p0' repeats the one at .*row 0"):
        read_rows(tmp_path)
    # skipping instead counts the bad row by reason
    pq.write_table(pa.table(base | {"gold": ["left", "right", None]}), tmp_path / "prompts.parquet")
    rows, skipped = read_prompts(str(tmp_path), "vigorl", on_error="skip")
    assert len(rows) == 2 and skipped == {"column 'gold': missing": 1}


def test_synthetic_dataset_round_trips(tmp_path):
    from data_gen.synthetic import make_dataset

    rows = make_dataset("spatial", 3, seed=1, out=tmp_path, progress=False)
    assert read_rows(tmp_path) == rows
    assert load_prompts(SimpleNamespace(data=data(tmp_path)))[0] == rows


# ---- the released RL data (EasyR1) ------------------------------------------------------------------------

def test_easyr1_jsonl_with_image_paths(tmp_path):
    png(tmp_path / "imgs" / "a.png", (112, 56))
    f = jsonl(tmp_path / "train.jsonl", [
        {"problem": "<image>What colour is the car?\n(A) red\n(B) blue", "answer": "red", "images": ["imgs/a.png"]},
        {"problem": "Where is it? <image>", "answer": "(0, 0, 10, 10)", "images": ["imgs/a.png"],
         "task": "gui_grounding"}])
    d = data(f, task="visual_search")
    assert image_root(d) == tmp_path
    rows, _ = load_prompts(SimpleNamespace(data=d))
    a, b = rows
    assert (a.prompt_id, a.task, a.image, a.width, a.height) == ("train-0", "visual_search", "imgs/a.png", 112, 56)
    assert a.question == "What colour is the car?\n(A) red\n(B) blue" and a.gold == "red"
    assert b.task == "gui_grounding" and b.question == "Where is it?"  # the task column wins; placeholder out
    # columns named as EasyR1's data.prompt_key / answer_key / image_key, images under data.image_root
    jsonl(tmp_path / "sub" / "q.jsonl", [{"q": "<image>Colour?", "gold_text": "red", "pics": ["imgs/a.png"]}])
    d = data(tmp_path / "sub" / "q.jsonl", prompt_key="q", answer_key="gold_text", image_key="pics",
             image_root=str(tmp_path))
    (row,), _ = load_prompts(SimpleNamespace(data=d))
    assert (row.question, row.gold, row.image) == ("Colour?", "red", "imgs/a.png")


@pytest.mark.parametrize("row,needle", [
    ({"problem": "<image>Q", "answer": "red", "images": ["../outside.png"]}, r"line 1, column 'images': .*escapes"),
    ({"problem": "Q, no placeholder", "answer": "red", "images": ["a.png"]},
     r"line 1, column 'images': 1 image\(s\) but 0 <image> placeholder"),
    ({"problem": "<image><image>Q", "answer": "red", "images": ["a.png", "a.png"]},
     r"line 1, column 'images': 2 images; vigorl's episodes start from one image"),
    ({"problem": "<image>Q", "answer": "", "images": ["a.png"]}, r"line 1, column 'answer': expected non-empty"),
    ({"problem": "<image>Q", "answer": "red", "images": ["gone.png"]}, r"line 1, column 'images': .*not found"),
    ({"problem": "<image>Q", "answer": "(5, 5)", "images": ["a.png"], "task": "gui_grounding"},
     r"line 1: row 'rl-0': field 'gold'"),
])
def test_easyr1_bad_rows_are_named(tmp_path, row, needle):
    png(tmp_path / "a.png")
    f = jsonl(tmp_path / "rl.jsonl", [row])
    with pytest.raises(FormatError, match=needle) as e:
        load_prompts(SimpleNamespace(data=data(f)))
    assert str(f) in str(e.value)


def test_easyr1_parquet_with_hf_image_structs_and_raw_bytes(tmp_path, cache):
    """EasyR1's example datasets carry images as HF `Image` structs {bytes, path}: written once to the image
    cache by content hash and referred to as sha256:<hex>, which every image reader resolves."""
    import datasets

    red, blue = png(size=(56, 56)), png(size=(84, 28), colour=(0, 0, 255))
    feats = datasets.Features({"problem": datasets.Value("string"), "answer": datasets.Value("string"),
                               "images": datasets.List(datasets.Image())})
    ds = datasets.Dataset.from_dict({"problem": ["<image>Colour?", "<image>And this?"], "answer": ["red", "blue"],
                                     "images": [[{"bytes": red, "path": None}], [{"bytes": blue, "path": "b.png"}]]},
                                    features=feats)
    ds.to_parquet(tmp_path / "rl.parquet")
    rows, _ = load_prompts(SimpleNamespace(data=data(tmp_path / "rl.parquet")))
    assert [r.image[:7] for r in rows] == ["sha256:"] * 2
    assert [(r.width, r.height) for r in rows] == [(56, 56), (84, 28)]
    path = resolve_under("/nowhere", rows[1].image)
    assert path.parent == cache and path.read_bytes() == blue and load_rgb(path).getpixel((0, 0)) == (0, 0, 255)
    # raw bytes in a plain parquet column, and a jsonl dir holding both files: read in name order
    pq.write_table(pa.table({"problem": ["<image>Q"], "answer": ["red"], "images": [[red]]}), tmp_path / "raw.parquet")
    (row,), _ = load_prompts(SimpleNamespace(data=data(tmp_path / "raw.parquet")))
    assert row.image == rows[0].image  # the same bytes, the same file
    both, _ = load_prompts(SimpleNamespace(data=data(tmp_path)))
    assert [r.prompt_id for r in both] == ["raw-0", "rl-0", "rl-1"]


# ---- verl ------------------------------------------------------------------------------------------------

def test_verl_parquet(tmp_path):
    img = png(size=(56, 56))
    pq.write_table(pa.table({
        "data_source": ["geo3k", "geo3k"],
        "prompt": [[{"role": "system", "content": "Think first."}, {"role": "user", "content": "<image>Colour?"}],
                   [{"role": "user", "content": "<image>Which side?"}]],
        "images": [[{"bytes": img, "path": None}], [{"bytes": img, "path": None}]],
        "ability": ["math", "math"],
        "reward_model": [{"style": "rule", "ground_truth": "red"}, {"style": "rule", "ground_truth": "left"}],
        "extra_info": [{"split": "train", "index": 7}, {"split": "train", "index": 8}]}), tmp_path / "verl.parquet")
    with pytest.warns(UserWarning, match="system messages in column 'prompt' are not sent"):
        rows, _ = load_prompts(SimpleNamespace(data=data(tmp_path / "verl.parquet", task="spatial")))
    assert [(r.prompt_id, r.question, r.gold, r.source, r.task) for r in rows] == [
        ("7", "Colour?", "red", "geo3k", "spatial"), ("8", "Which side?", "left", "geo3k", "spatial")]
    pq.write_table(pa.table({"prompt": [[{"role": "user", "content": "<image>Q"}]], "images": [[img]],
                             "reward_model": [{"style": "rule"}]}), tmp_path / "verl.parquet")
    with pytest.raises(FormatError, match=r"verl.parquet row 0, column 'reward_model': expected \{ground_truth"):
        load_prompts(SimpleNamespace(data=data(tmp_path / "verl.parquet")))


# ---- datasets: save_to_disk and the Hub --------------------------------------------------------------------

def test_datasets_saved_to_disk(tmp_path):
    import datasets

    red = png(size=(56, 56))
    ds = datasets.Dataset.from_dict(
        {"problem": ["<image>Colour?"] * 3, "answer": ["red"] * 3, "images": [[{"bytes": red, "path": None}]] * 3},
        features=datasets.Features({"problem": datasets.Value("string"), "answer": datasets.Value("string"),
                                    "images": datasets.List(datasets.Image())}))
    ds.save_to_disk(tmp_path / "one")
    rows, _ = load_prompts(SimpleNamespace(data=data(tmp_path / "one")))
    assert len(rows) == 3 and rows[0].image.startswith("sha256:") and rows[0].prompt_id == "one-0"
    datasets.DatasetDict({"train": ds, "test": ds.select([0])}).save_to_disk(tmp_path / "dict")
    assert len(load_prompts(SimpleNamespace(data=data(tmp_path / "dict")))[0]) == 3  # train by default
    assert len(load_prompts(SimpleNamespace(data=data(f"{tmp_path / 'dict'}@test")))[0]) == 1
    datasets.DatasetDict({"test": ds, "val": ds}).save_to_disk(tmp_path / "two")
    with pytest.raises(FormatError, match=r"splits \['test', 'val'\]; name one as .*@SPLIT"):
        load_prompts(SimpleNamespace(data=data(tmp_path / "two")))


def test_hub_dataset_offline_is_a_clear_error_and_a_local_typo_is_not_a_hub_id(tmp_path, monkeypatch):
    import datasets
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # as a user sets it; the libraries read it at import, so also:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(FormatError, match=r"data.path=someorg/nodata@train: .*HF_HUB_OFFLINE is set: only datasets "
                                          r"already in the local HF cache"):
        load_prompts(SimpleNamespace(data=data("someorg/nodata@train")))
    assert tables.is_hub_id("someorg/nodata@train") and tables.is_hub_id("nodata")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    assert not tables.is_hub_id("runs/dta")  # under a dir that exists here: a local path with a typo
    with pytest.raises(FileNotFoundError, match="data.path: runs/dta does not exist"):
        load_prompts(SimpleNamespace(data=data("runs/dta")))


# ---- the released evaluation files -------------------------------------------------------------------------

def released(tmp_path: Path, gold: str, image="bench/direct_attributes/sa_1.jpg", name="test.jsonl") -> Path:
    img = tmp_path / image
    img.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (200, 100)).save(img)
    return jsonl(tmp_path / "bench" / name, [
        {"id": 17, "image": image, "conversations": [{"from": "human", "value": "<image>\nWhat colour is the cup?"},
                                                      {"from": "gpt", "value": gold}]}])


def test_released_eval_files_plain_and_through_benchmark(tmp_path):
    f = released(tmp_path, "red")
    d = data(f, task="visual_search", image_root=str(tmp_path))  # IMAGE_ROOT=$DATA_ROOT, as the eval scripts
    (row,), _ = load_prompts(SimpleNamespace(data=d))
    assert (row.prompt_id, row.question, row.gold, row.task, row.width) == ("17", "What colour is the cup?", "red",
                                                                            "visual_search", 200)
    # benchmark=vstar: its task and V*'s subgroup (the subtask folder), whatever data.task says
    cfg = EvalConfig(data=data(f, task="spatial", image_root=str(tmp_path)), benchmark="vstar")
    (row,), _ = load_prompts(cfg)
    assert (row.task, row.source, json.loads(row.meta)) == ("visual_search", "vstar", {"subgroup": "direct_attributes"})
    # ScreenSpot: the gold is a box string in original pixels (the released judge's literal_eval of 4 ints)
    f = released(tmp_path, "(10, 20, 60, 70)", image="ss/shot.png", name="screenspot_v2_test.jsonl")
    cfg = TrainConfig(data=data(tmp_path / "bench", image_root=str(tmp_path)), benchmark="screenspot_v2",
                      benchmark_file="screenspot_v2_test.jsonl")
    (row,), _ = load_prompts(cfg)
    assert (row.task, row.gold) == ("gui_grounding", "(10, 20, 60, 70)")
    released(tmp_path, "(10, 20)", image="ss/shot.png", name="bad.jsonl")
    cfg.benchmark_file = "bad.jsonl"
    with pytest.raises(FormatError, match=r"bad.jsonl line 1: row '17': field 'gold'"):
        load_prompts(cfg)


def test_released_eval_conversations_as_datasets_stores_them(tmp_path):
    """`datasets` keeps a sequence of {from, value} as {from: [...], value: [...]} (data_loader.py's Features)."""
    Image.new("RGB", (56, 56)).save(tmp_path / "a.png")
    f = jsonl(tmp_path / "e.jsonl", [{"id": "x", "image": "a.png",
                                      "conversations": {"from": ["human", "gpt"], "value": ["<image>Q?", "left"]}}])
    (row,), _ = load_prompts(SimpleNamespace(data=data(f, task="spatial")))
    assert (row.question, row.gold) == ("Q?", "left")


def test_the_jobs_read_a_datasets_dir_and_a_benchmark_file(tmp_path):
    """The jobs' own loader calls on the data tests/test_formats_ray.py takes through `--dry-run` only (its
    docstring): the train driver and each rollout actor read data.path with `load_prompts(cfg)` (cluster/train.py,
    actors/actor.py), the eval job with `cluster.eval_job.load_items(cfg)` (every image opened). A `datasets`
    DatasetDict dir: train reads its train split, eval DIR@test; the released V*Bench file through benchmark=vstar:
    the benchmark's task over data.task, in both."""
    import datasets

    from cluster.eval_job import load_items
    from shared_runs import vstar_file

    feats = datasets.Features({"problem": datasets.Value("string"), "answer": datasets.Value("string"),
                               "images": datasets.List(datasets.Image())})
    ds = datasets.Dataset.from_dict({"problem": ["<image>Which colour?", "<image>And here?"], "answer": ["red", "blue"],
                                     "images": [[{"bytes": png(size=(112, 112)), "path": None}],
                                                [{"bytes": png(size=(112, 112), colour=(0, 0, 255)), "path": None}]]},
                                    features=feats)
    datasets.DatasetDict({"train": ds, "test": ds.select([1])}).save_to_disk(tmp_path / "hfds")
    rows, _ = load_prompts(TrainConfig(data=data(tmp_path / "hfds")))
    assert [(r.prompt_id, r.gold) for r in rows] == [("hfds@train-0", "red"), ("hfds@train-1", "blue")]
    items, skipped = load_items(EvalConfig(data=data(f"{tmp_path / 'hfds'}@test")))
    assert [(r.prompt_id, r.gold, r.image.startswith("sha256:")) for r in items] == [("hfds@test-0", "blue", True)]
    assert not skipped

    f = vstar_file(tmp_path / "released")
    bench = dict(benchmark="vstar")
    rows, _ = load_prompts(TrainConfig(data=data(f, task="spatial", image_root=str(tmp_path / "released")), **bench))
    items, skipped = load_items(EvalConfig(data=data(f, task="spatial", image_root=str(tmp_path / "released")), **bench))
    for got in (rows, items):
        assert [(r.prompt_id, r.task, r.gold, json.loads(r.meta)["subgroup"]) for r in got] == [
            ("0", "visual_search", "red", "direct_attributes"), ("1", "visual_search", "blue", "direct_attributes")]
    assert not skipped


def test_unknown_columns_say_which_formats_need_what(tmp_path):
    f = jsonl(tmp_path / "x.jsonl", [{"text": "hi", "label": 1}])
    with pytest.raises(FormatError, match=r"x.jsonl: cannot tell the format from its columns \['label', 'text'\]: "
                                          r"vigorl needs image, question, gold; easyr1 problem, answer"):
        load_prompts(SimpleNamespace(data=data(f)))
    with pytest.raises(FormatError, match=r"x.jsonl line 1, column 'problem': missing"):
        load_prompts(SimpleNamespace(data=data(f, format="easyr1")))


def test_config_fields_and_image_root(tmp_path):
    from configs.base import ConfigError
    from configs.load import load

    cfg = load(TrainConfig, None, [f"data.path={tmp_path}/rl.jsonl", "data.format=easyr1",
                                   "data.prompt_key=question", "benchmark=vstar"])
    assert cfg.data.format == "easyr1" and cfg.benchmark == "vstar"
    with pytest.raises(ConfigError, match="data.format.*did you mean 'easyr1'"):
        load(TrainConfig, None, ["data.format=easyr"])
    with pytest.raises(ConfigError, match="benchmark.*unknown name 'vstr'"):
        load(TrainConfig, None, ["benchmark=vstr"])
    (tmp_path / "rl.jsonl").write_text("")
    assert image_root(cfg.data) == tmp_path and image_root(data(tmp_path)) == tmp_path
    assert image_root(data(tmp_path / "rl.jsonl", image_root="/imgs")) == Path("/imgs")
    assert image_cache() == tmp_path / "cache"


# ---- SFT: LLaMA-Factory's formats ----------------------------------------------------------------------------

def test_sharegpt_conversations_with_a_system_column():
    attr = SFTAttr.detect({"conversations": [], "system": "S", "images": []}, "f")
    row = to_chat({"conversations": [{"from": "human", "value": "<image>Q?"}, {"from": "gpt", "value": "A."}],
                   "system": "Be brief.", "images": ["a.png"]}, attr, "f.json row 0")
    assert row == {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "<image>Q?"},
                                {"role": "assistant", "content": "A."}], "images": ["a.png"]}
    # a leading system-tag message wins over the column, as LLaMA-Factory's converter reads it
    row = to_chat({"conversations": [{"from": "system", "value": "Sys."}, {"from": "human", "value": "Q?"},
                                     {"from": "gpt", "value": "A."}, {"from": "observation", "value": "O"},
                                     {"from": "function_call", "value": "F"}], "system": "col"}, attr, "w")
    assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant", "user", "assistant"]
    assert row["messages"][0]["content"] == "Sys."


@pytest.mark.parametrize("conv,needle", [
    ([{"from": "gpt", "value": "A"}, {"from": "human", "value": "Q"}], r"message 0: role 'gpt' where 'human' or"),
    ([{"from": "human", "value": "Q"}], r"1 messages after the system prompt; they must end with an assistant"),
    ([{"from": "human", "value": "Q"}, {"from": "gpt", "value": 3}], r"message 1: 'value' is not text"),
])
def test_sharegpt_rows_llama_factory_would_drop_are_errors(conv, needle):
    with pytest.raises(FormatError, match=needle):
        to_chat({"conversations": conv}, SFTAttr(formatting="sharegpt"), "f.json row 3")


def test_released_sft_rows_through_dataset_info(tmp_path):
    """The released SFT data: a JSON array of {messages (role/content), images, gt_answer}, named by a
    dataset_info.json entry with its columns and tags (LLaMA-Factory's mllm_demo entry)."""
    from data_gen.sft_formats import dataset_files, read_records, sft_sources

    (tmp_path / "chains").mkdir()
    rows = [{"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "<image>Q?"},
                          {"role": "assistant", "content": "<think> (3, 4) </think><answer> red </answer>"}],
             "images": ["imgs/a.png"], "gt_answer": "red"}]
    (tmp_path / "chains" / "train.json").write_text(json.dumps(rows))
    entry = {"file_name": "chains/train.json", "formatting": "sharegpt",
             "columns": {"messages": "messages", "images": "images"},
             "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}}
    (tmp_path / "dataset_info.json").write_text(json.dumps({"vs_train": entry, "alpaca": {"file_name": "a.json"},
                                                            "hub": {"hf_hub_url": "org/x"}}))
    files, attr = dataset_files(tmp_path, "vs_train")
    (where, obj), = read_records(files[0])
    assert where.endswith("train.json row 0") and to_chat(obj, attr, where) == {
        "messages": rows[0]["messages"], "images": ["imgs/a.png"]}
    sources, root = sft_sources(str(tmp_path), "vs_train")
    assert sources == {"train": [(files[0], attr)], "val": []} and root == tmp_path
    assert sft_sources(str(tmp_path), "vs_train", image_root_="/data")[1] == Path("/data")
    with pytest.raises(FormatError, match=r"no dataset 'nope'; entries: \['alpaca', 'hub', 'vs_train'\]"):
        sft_sources(str(tmp_path), "nope")
    with pytest.raises(FormatError, match=r"entry 'hub': \['hf_hub_url'\]; vigorl reads local files"):
        sft_sources(str(tmp_path), "hub")
    with pytest.raises(FileNotFoundError, match=r"no train.jsonl; it has a dataset_info.json: name an entry"):
        sft_sources(str(tmp_path))
    # an entry without columns.images reads no images, as in LLaMA-Factory: said, not silently dropped
    del entry["columns"]["images"]
    with pytest.raises(FormatError, match=r'names no images column, so LLaMA-Factory reads none: add "images"'):
        to_chat(obj, SFTAttr.from_entry(entry, "e"), where)


def test_alpaca_rows():
    attr = SFTAttr(system="system", images="images", history="history")
    row = to_chat({"instruction": "Say", "input": "hi", "output": "hello", "system": "S",
                   "history": [["q0", "a0"]], "images": []}, attr, "w")
    assert row["messages"] == [{"role": "system", "content": "S"}, {"role": "user", "content": "q0"},
                               {"role": "assistant", "content": "a0"}, {"role": "user", "content": "Say\nhi"},
                               {"role": "assistant", "content": "hello"}]


@pytest.fixture(scope="module")
def proc(tmp_path_factory):
    from transformers import AutoProcessor

    from data_gen.tiny_model import make_tiny_model

    return AutoProcessor.from_pretrained(make_tiny_model(tmp_path_factory.mktemp("fmt_model") / "m"))


@pytest.mark.parametrize("system", [True, False])
def test_rendered_ids_equal_the_chat_templates(tmp_path, proc, system):
    """encode_row's ids are the processor's own for the checkpoint's chat template (its default system prompt
    when the row has none), image pads expanded; the mask covers each assistant turn and its <|im_end|>."""
    from learner.sft import _parts, encode_row, render_chat

    Image.new("RGB", (112, 56), (9, 9, 9)).save(tmp_path / "a.png")
    Image.new("RGB", (56, 56), (9, 9, 9)).save(tmp_path / "c.png")
    messages = ([{"role": "system", "content": "S."}] if system else []) + [
        {"role": "user", "content": "<image>Where?"}, {"role": "assistant", "content": "<think> (3, 4) </think>"},
        {"role": "user", "content": "<observation>\n<image>\n</observation>"},
        {"role": "assistant", "content": "<answer> red </answer>"}]
    t = encode_row({"messages": messages, "images": ["a.png", "c.png"]}, tmp_path, proc.tokenizer,
                   proc.image_processor, chat_template=proc.chat_template)
    _, _, text = render_chat(messages, proc.tokenizer, proc.chat_template)
    assert text == proc.tokenizer.apply_chat_template(
        [{"role": m["role"], "content": _parts(m["content"])} for m in messages], tokenize=False)
    images = [load_rgb(tmp_path / "a.png"), load_rgb(tmp_path / "c.png")]
    assert t.token_ids == proc(text=[text], images=images)["input_ids"][0]
    assert text.startswith("<|im_start|>system\n" + ("S." if system else "You are a helpful assistant."))
    tok = proc.tokenizer
    trained = tok.decode([i for i, m in zip(t.token_ids, t.loss_mask) if m])
    assert trained == "<think> (3, 4) </think><|im_end|><answer> red </answer><|im_end|>" and t.num_turns == 2
    assert tok.decode(t.token_ids[:t.prompt_len]).endswith("<|im_start|>assistant\n")


def test_sft_reads_a_sharegpt_json_array_file(tmp_path, proc):
    """`vigorl sft data=FILE`: a LLaMA-Factory sharegpt JSON array (`conversations` / from / value, a system
    column), images under the file's dir; a row LLaMA-Factory would drop is a counted `not_sharegpt` skip."""
    from cluster.sft_job import load_examples

    Image.new("RGB", (56, 56)).save(tmp_path / "a.png")
    good = {"conversations": [{"from": "human", "value": "<image>Q?"}, {"from": "gpt", "value": "(5, 6) red"}],
            "system": "S.", "images": ["a.png"]}
    bad = {"conversations": [{"from": "gpt", "value": "A"}], "system": "S.", "images": []}
    (tmp_path / "sft.json").write_text(json.dumps([good, bad, good]))
    cfg = SFTConfig(data=str(tmp_path / "sft.json"), on_bad_row="skip", cutoff_len=4096)
    examples, skipped = load_examples(cfg, "train", proc.tokenizer, proc.image_processor, proc.chat_template)
    assert len(examples) == 2 and list(skipped) == ["not_sharegpt"]
    assert "sft.json row 1, column 'conversations' message 0: role 'gpt'" in skipped["not_sharegpt"][0]
    assert examples[0].images[0].source == "a.png"
    assert load_examples(cfg, "val", proc.tokenizer, proc.image_processor) == ([], {})
