"""TRL 1.16's `SFTTrainer` as the side-by-side speed baseline of `vigorl sft` (`make bench` stage 7, bench/sft.py).

What it runs, on CPU in fp32, with the settings of `configs/learn_sft.yaml` as bench/sft.py passes them:
  - the model dir bench/sft.py builds (`ensure_tiny_model(..., vocab="small", size="small")`), loaded with
    `Qwen2_5_VLForConditionalGeneration.from_pretrained(dir, dtype=torch.float32)` and `AutoProcessor`;
  - the same sharegpt rows (`<data>/train.jsonl`, read with vigorl's own readers: `data_gen.sft_formats`), each
    message turned into structured content parts *in place* (`learner.sft._parts`: an `{"type": "image"}` part where
    the row has `<image>`). This matters: TRL's `prepare_multimodal_messages` (trl/data_utils.py) puts *all* images
    before the first user message's text when contents are strings and leaves `<image>` as literal text;
  - assistant-only loss the TRL way: `SFTConfig(assistant_only_loss=True)`. For a vision dataset TRL 1.16 renders
    and tokenises in the collator (`DataCollatorForVisionLanguageModeling._collate_language_modeling`,
    trl/trainer/sft_trainer.py) with `processor.apply_chat_template(..., return_assistant_tokens_mask=True)`; the
    masks are re-aligned after image-token expansion by transformers >= 5.18 (`ProcessorMixin.apply_chat_template`,
    `text_replacement_offsets`; SFTTrainer.__init__ refuses older). Qwen2.5-VL's template has no `{% generation %}`
    markers, so SFTTrainer.__init__ swaps in `get_training_chat_template(processor)`
    (trl/chat_template_utils.py -> trl/chat_templates/qwen2_5_vl_training.jinja; the tiny model's template is
    byte-identical to TRL's qwen2_5_vl.jinja, so it is recognised). Checked on tests/test_sft_speed.py's rows: the
    same input ids as `learner.sft.encode_row`, the same trained tokens plus the "\\n" after each assistant
    `<|im_end|>` (TRL's training template puts it inside the generation block). By default that "\\n" is moved
    out of the block, so both train exactly the same tokens (`--trl-template`: TRL's template as it is);
  - frozen vision tower (`model.model.visual.requires_grad_(False)`; TRL has no option of its own), 32 examples per
    optimizer step = per_device_train_batch_size 8 x gradient_accumulation_steps 4, AdamW (torch's, not fused: as
    vigorl's CPU learner, weight decay 0.01), lr 5e-4 cosine, warmup 3 % of the steps, grad clip 1.0, no packing,
    no padding-free (SFTTrainer refuses both for vision datasets), no gradient checkpointing (TRL turns it on by
    default; vigorl's is off), no bf16 (TRL defaults bf16=True, which on CPU means bf16 autocast), max_length None
    (TRL's default 1024 would truncate; vigorl rejects rows over cutoff_len instead), no eval, no checkpoints;
  - two torch threads (vigorl's learner is a Ray actor with num_cpus=2: OMP_NUM_THREADS=2), and two rayon threads
    for the fast tokenizer, which TRL calls inside the step.

Timing: TRL prefetches a step's 4 micro-batches (`Trainer.get_batch_samples`, which runs the collator: rendering,
tokenising, image loading/processing) *before* `on_step_begin`, so a step is timed from one `on_step_end` to the
next (the first from `on_train_begin`); that includes TRL's on-the-fly collation, which vigorl does once before
training (its tokenisation is outside `sft/step_s`; its image loading/processing is inside). The collation time
is reported apart (`collate_s`) so either reading can be taken. samples/s is over the steps after the first.

Runs in-process, meant to be started in a fresh interpreter (`python -m bench.sft_trl ...`, as bench/sft.py
does): TRL patches the model's forward (`add_fused_lm_head`), accelerate keeps process-wide state, and the thread
settings must be made before torch starts its pools; none of that should leak into the vigorl side or its driver.

Needs `pip install -e .[bench]` (trl==1.16.0, which pulls accelerate; not `trl[vlm]`, whose torchvision breaks the
CPU vLLM). TRL itself does not import torchvision; the Qwen2-VL image processor works through actors/compat.py.

Usage: python -m bench.sft_trl --model DIR --data DIR --out DIR [--steps 6] [--trl-template]
       -> one line "TRL {json}" (samples_per_s, step_s, settings, ...)
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

BATCH, MICRO, LR, WARMUP, CLIP, THREADS, WEIGHT_DECAY = 32, 8, 5e-4, 0.03, 1.0, 2, 0.01


def pin_threads(n: int) -> None:
    """n torch (OpenMP) threads and n rayon threads (the fast tokenizer's); the env vars only bind if set before
    torch / tokenizers start their pools, so call first thing in a fresh interpreter."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "RAYON_NUM_THREADS", "RAYON_RS_NUM_CPUS"):
        os.environ[var] = str(n)
    import torch

    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(n)
    except RuntimeError:  # already set, or parallel work already ran
        pass


def read_rows(data_dir: Path) -> tuple[list[dict], Path]:
    """The train rows as `vigorl sft data=DIR` reads them ({"messages", "images", ...}) and the image root."""
    from data_gen.sft_formats import SFTAttr, read_records, sft_sources, to_chat

    sources, root = sft_sources(str(data_dir))
    rows = [to_chat(obj, attr or SFTAttr.detect(obj, where), where)
            for path, attr in sources["train"] for where, obj in read_records(path)]
    if not rows:
        raise ValueError(f"{data_dir}: no train rows")
    return rows, Path(root)


def structured(messages: list[dict]) -> list[dict]:
    """Every message's content as a list of parts, images where the `<image>` placeholders are (learner.sft._parts).
    All messages get lists (a string one would make Arrow mix types, and a string first user message would make
    TRL put every image there). Image parts carry text None (Arrow unifies the part structs)."""
    from learner.sft import _parts

    out = []
    for m in messages:
        p = _parts(str(m["content"]))
        parts = [{"type": "text", "text": p}] if isinstance(p, str) else [
            {"type": x["type"], "text": x.get("text")} for x in p]
        out.append({"role": m["role"], "content": parts})
    return out


def build_dataset(rows: list[dict], root: Path):
    """A `datasets.Dataset` (SFTTrainer takes nothing else) with `messages` and `images` (paths, decoded from disk
    on access, as vigorl's learner reads its images)."""
    import datasets

    from data_gen.images import resolve_under

    from PIL import Image

    for k, r in enumerate(rows):  # vigorl resizes a first image to a different image_size (encode_row); not done here
        if r.get("image_size") and r["images"] and \
                list(Image.open(resolve_under(root, r["images"][0])).size) != list(r["image_size"]):
            raise NotImplementedError(f"row {k}: its image_size is not its first image's size; resize it first")
    ds = datasets.Dataset.from_dict({
        "messages": [structured(r["messages"]) for r in rows],
        "images": [[str(resolve_under(root, p)) for p in r["images"]] for r in rows]})
    return ds.cast_column("images", datasets.List(datasets.Image()))


def vigorl_mask_template(training_template: str) -> str:
    """TRL's Qwen2.5-VL training template with the "\\n" after an assistant's <|im_end|> moved out of the
    `{% generation %}` block: the assistant mask of `learner.sft.render_chat` (content + <|im_end|>)."""
    open_tag, close_tag, im_end = "{%- generation -%}", "{%- endgeneration -%}", "{{- '<|im_end|>\\n' }}"
    head, rest = training_template.split(open_tag)
    body, tail = rest.split(close_tag)
    if body.count(im_end) != 2:
        raise ValueError("TRL's Qwen2.5-VL training template changed: cannot move the newline out of the block")
    return head + open_tag + body.replace(im_end, "{{- '<|im_end|>' }}") + close_tag + "{{- '\\n' }}" + tail


def check_parity(rows: list[dict], root: Path, processor, template: str | None, original: str, ds, n: int = 8
                 ) -> dict:
    """TRL's collation of the first `n` rows (with `template`, None: the processor's) against vigorl's encoding with
    the checkpoint's template `original` (learner.sft.encode_row): same ids? how many more trained tokens per row?
    (outside the timing)."""
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    from learner.sft import encode_row

    n = min(n, len(rows))
    collator = DataCollatorForVisionLanguageModeling(processor=processor, assistant_only_loss=True,
                                                     chat_template=template)
    batch = collator([dict(ds[i]) for i in range(n)])
    same, extra = True, 0
    for i in range(n):
        t = encode_row(rows[i], root, processor.tokenizer, processor.image_processor, where=f"row {i}",
                       chat_template=original)
        keep = batch["attention_mask"][i].bool()
        same &= batch["input_ids"][i][keep].tolist() == t.token_ids
        extra += int((batch["labels"][i][keep] != -100).sum()) - sum(t.loss_mask)
    return {"rows_checked": n, "same_input_ids": same, "extra_trained_tokens_per_row": extra / n}


def run_trl(model_dir: str | Path, data_dir: str | Path, out_dir: str | Path, steps: int,
            exact_mask: bool = True, threads: int = THREADS) -> dict:
    """TRL's SFTTrainer for `steps` optimizer steps in this process (a fresh interpreter: see the module doc)."""
    t_start = time.perf_counter()
    pin_threads(threads)
    import torch
    import transformers
    import trl
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration, TrainerCallback
    from trl import SFTConfig, SFTTrainer
    from trl.chat_template_utils import get_training_chat_template

    model_dir, data_dir, out_dir = Path(model_dir), Path(data_dir), Path(out_dir)
    rows, root = read_rows(data_dir)
    ds = build_dataset(rows, root)
    processor = AutoProcessor.from_pretrained(model_dir)
    original = processor.chat_template  # the checkpoint's, as vigorl renders with
    template = get_training_chat_template(processor)  # what SFTTrainer swaps in by itself (None: already marked)
    if exact_mask:
        processor.chat_template = vigorl_mask_template(template)  # has markers: SFTTrainer then keeps it
    parity = check_parity(rows, root, processor, None if exact_mask else template, original, ds)

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32)
    model.model.visual.requires_grad_(False)
    args = SFTConfig(
        output_dir=str(out_dir), use_cpu=True, bf16=False, fp16=False, seed=0,
        per_device_train_batch_size=MICRO, gradient_accumulation_steps=BATCH // MICRO, max_steps=steps,
        learning_rate=LR, lr_scheduler_type="cosine", warmup_steps=WARMUP,  # < 1: a ratio (transformers 5 has no warmup_ratio)
        max_grad_norm=CLIP, optim="adamw_torch", weight_decay=WEIGHT_DECAY,
        gradient_checkpointing=False, assistant_only_loss=True, packing=False, padding_free=False, max_length=None,
        eval_strategy="no", save_strategy="no", report_to="none", logging_strategy="steps", logging_steps=1,
        disable_tqdm=True, dataloader_num_workers=0, dataloader_pin_memory=False)
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=processor)

    collate: list[tuple[float, float]] = []  # (end time, seconds) of each collator call
    micro: list[tuple[float, int, int, int, int]] = []  # (time, examples, tokens, padded, trained) per micro-batch
    inner_collator, inner_step = trainer.data_collator, trainer.training_step

    def timed_collator(examples):
        t0 = time.perf_counter()
        out = inner_collator(examples)
        t1 = time.perf_counter()
        collate.append((t1, t1 - t0))
        return out

    def counted_step(model, inputs, *a, **kw):  # runs inside the optimizer step it belongs to
        micro.append((time.perf_counter(), int(inputs["input_ids"].shape[0]), int(inputs["attention_mask"].sum()),
                      int(inputs["attention_mask"].numel()), int((inputs["labels"] != -100).sum())))
        return inner_step(model, inputs, *a, **kw)

    # get_train_dataloader (in train()) reads the collator; the loop calls self.training_step per micro-batch
    trainer.data_collator, trainer.training_step = timed_collator, counted_step
    marks: list[float] = []

    class Clock(TrainerCallback):
        def on_train_begin(self, *a, **kw):
            marks.append(time.perf_counter())

        def on_step_end(self, *a, **kw):
            marks.append(time.perf_counter())

    trainer.add_callback(Clock())
    start_s = time.perf_counter() - t_start
    trainer.train()
    step_s = [b - a for a, b in zip(marks, marks[1:])]
    per_step = [[m for m in micro if a < m[0] <= b] for a, b in zip(marks, marks[1:])]
    samples = [sum(m[1] for m in ms) for ms in per_step]
    n = len(step_s) - 1
    if n < 1:
        raise RuntimeError(f"need at least 2 steps to time, got {len(step_s)}")
    rate = sum(samples[1:]) / sum(step_s[1:])
    # accelerate's dataloader runs one micro-batch ahead, so collations are summed over the timed steps as a whole
    collate_s = sum(c[1] for c in collate if marks[1] < c[0] <= marks[-1]) / n
    logs = [h for h in trainer.state.log_history if "loss" in h]
    settings = {
        "side": "trl", "trl": trl.__version__, "transformers": transformers.__version__, "torch": torch.__version__,
        "threads": torch.get_num_threads(), "batch": BATCH, "micro_batch": MICRO,
        "gradient_accumulation": BATCH // MICRO, "lr": LR, "schedule": "cosine", "warmup": WARMUP, "grad_clip": CLIP,
        "optim": "adamw_torch", "weight_decay": WEIGHT_DECAY, "dtype": "float32", "vision_tower": "frozen",
        "gradient_checkpointing": False, "packing": False, "padding_free": False, "max_length": None,
        "loss": ("assistant tokens (TRL assistant_only_loss; vigorl's mask exactly)" if exact_mask else
                 "assistant tokens (TRL assistant_only_loss, its training template: + the newline after <|im_end|>)")
        + ", token mean over the 32-example step",
        "micro_batches": "random order (no length buckets)", "vision_cache": "none (the tower runs every forward)",
        "collation": "in the step (render, tokenise, load and process images)", "parity": parity}
    return {"samples_per_s": rate, "examples_per_s": rate, "step_s": step_s, "first_step_s": step_s[0],
            "start_s": start_s, "samples_per_step": samples,
            "collate_s": collate_s,  # mean per timed step, inside step_s
            "tokens_per_step": [sum(m[2] for m in ms) for ms in per_step],
            "padded_tokens_per_step": [sum(m[3] for m in ms) for ms in per_step],
            "trained_tokens_per_step": [sum(m[4] for m in ms) for ms in per_step],
            "loss": [h["loss"] for h in logs], "settings": settings}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="the tiny Qwen2.5-VL dir (bench/sft.py's setup)")
    p.add_argument("--data", required=True, help="dir with train.jsonl (sharegpt rows, images relative to it)")
    p.add_argument("--out", required=True, help="TRL's output_dir (nothing is saved there)")
    p.add_argument("--steps", type=int, default=6, help="optimizer steps (the first is warm-up)")
    p.add_argument("--trl-template", action="store_true",
                   help="TRL's training template as it is (it also trains the newline after each <|im_end|>)")
    p.add_argument("--threads", type=int, default=THREADS)
    a = p.parse_args()
    res = run_trl(a.model, a.data, a.out, a.steps, exact_mask=not a.trl_template, threads=a.threads)
    print("TRL " + json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
