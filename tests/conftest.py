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


def chromium_dom(page: Path, fragment: str = "") -> str:
    """The DOM of a local page after its scripts ran, from headless Chromium (Debian's `chromium`; `.ci/run`
    installs it). Skips the calling test, saying why, where there is none."""
    import shutil
    import subprocess

    import pytest

    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("headless Chromium not installed (apt-get install chromium; .ci/run does)")
    url = page.resolve().as_uri() + (f"#{fragment}" if fragment else "")
    p = subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", url],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    return p.stdout


def vigorl(*args, check: bool = True, timeout: int = 600):
    """`python -m cluster.cli ARGS` from the repo root, as a user runs it; asserts success unless told not."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    p = subprocess.run([sys.executable, "-m", "cluster.cli", *map(str, args)], cwd=root, capture_output=True,
                       text=True, timeout=timeout)
    if check:
        assert p.returncode == 0, (p.stdout[-3000:], p.stderr[-5000:])
    return p


def jsonl(path: Path) -> list:
    import json

    return [json.loads(x) for x in Path(path).read_text().splitlines() if x.strip()]
