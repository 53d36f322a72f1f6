"""Smoke test of the real entry point: `vigorl demo` builds the tiny model and data, plays a zoom episode
through vLLM, scores it and writes the crops and picture."""

import json
import subprocess
import sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


def test_demo_end_to_end(tmp_path):
    cmd = [sys.executable, "-m", "cluster.cli", "demo", "--config", str(ROOT / "configs/demo.yaml"),
           f"out={tmp_path}/out", f"model.path={tmp_path}/model", f"data.path={tmp_path}/data",
           "n_prompts=2", "row=1", "rollout.min_zooms=2", "sampling.max_tokens_per_turn=160"]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-4000:]
    assert "=== zoom episode" in p.stdout and "score: overall=" in p.stdout
    ep = json.loads((tmp_path / "out" / "episode.json").read_text())
    assert len(ep["turns"]) >= 3 and len(ep["crops"]) >= 2 and len(ep["points"]) == len(ep["crops"])
    assert ep["end"] == "answer" and ep["score"]["format"] >= 1.0  # guided turns are well formed
    for c in ep["crops"]:
        assert Image.open(c).size == (672, 672)  # visual-search crops: r = 672
    assert Image.open(tmp_path / "out" / "episode.png").width > 672
    assert 0.0 <= ep["score"]["overall"] <= 1.24


def test_demo_config_error_is_one_clear_line(tmp_path):
    p = subprocess.run([sys.executable, "-m", "cluster.cli", "demo", "zoom.dott=1"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert "unknown config key 'zoom.dott'" in p.stderr and "Traceback" not in p.stderr
