"""Shared builders for tests that need a live vLLM engine with the tiny model."""

from dataclasses import dataclass
from pathlib import Path


@dataclass
class Stack:
    root: Path  # tmp dir holding model/ and data/
    model_dir: Path
    llm: object  # vllm.LLM, in this process
    processor: object
    batch: list  # (row, full image as the model sees it, image source) per prompt


def build_stack(tmp_path_factory, name: str, n_prompts: int = 2) -> Stack:
    """A fresh tiny model, `n_prompts` synthetic visual-search prompts and an in-process vLLM engine.
    Each test module builds its own: tests that reload weights must not change another module's engine."""
    from transformers import AutoProcessor

    from actors.engine import make_llm
    from actors.zoom import resize_for_model
    from data_gen.images import load_rgb, resolve_under
    from data_gen.rows import read_rows
    from data_gen.synthetic import make_dataset
    from data_gen.tiny_model import make_tiny_model

    root = tmp_path_factory.mktemp(name)
    model_dir = make_tiny_model(root / "model", vocab="small")
    make_dataset("visual_search", n_prompts, seed=0, out=root / "data", progress=False)
    llm = make_llm(str(model_dir), max_model_len=8192, seed=0)
    batch = [(r, resize_for_model(load_rgb(resolve_under(root / "data", r.image))), r.image)
             for r in read_rows(root / "data")]
    return Stack(root, model_dir, llm, AutoProcessor.from_pretrained(model_dir), batch)
