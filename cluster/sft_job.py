"""`vigorl sft`: supervised fine-tuning (docs/algorithm.md §7) on the sharegpt rows `vigorl linearize` / `to-multiturn` write
(`data=DIR`), a LLaMA-Factory dataset_info.json entry (`data=DIR dataset=NAME`: its file_name, formatting,
columns, tags) or one file of sharegpt / alpaca rows (`data=FILE`, .json array, .jsonl, .parquet;
data_gen/formats.py), each chat rendered with the checkpoint's own chat template (learner/sft.py), with the RL
learner's own DeepSpeed code in a Ray actor:
next-token loss on assistant tokens only, `batch_size` examples per optimizer step in micro-batches, a cosine
schedule with warmup, the vision tower frozen by default. Writes an HF-format checkpoint to `<out>/model`
(loadable by transformers, vLLM and `vigorl train model.path=...`), logs loss curves to MLflow and writes
`<out>/summary.json` (last step's metrics, rows skipped by split and reason). A bad row (`learner.sft.BadRow`)
stops the job naming it (`on_bad_row=raise`, the default) or is skipped and counted by reason, on the console
and as MLflow metrics `sft/skipped_rows`, `sft/skipped_rows/<reason>` (`on_bad_row=skip`, the paper recipes:
LLaMA-Factory's SFT trained on such rows).
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

from configs.jobs import SFTConfig


def sft_data(cfg: SFTConfig):
    """What `vigorl sft` reads (data_gen.formats.sft_sources): {"train": [(file, LLaMA-Factory attributes or None:
    detected from the rows)], "val": [...]} and the image root. `data=DIR` is vigorl's train.jsonl / val.jsonl;
    `data=DIR dataset=NAME` a dataset_info.json entry; `data=FILE` one .json / .jsonl / .parquet file."""
    from data_gen.sft_formats import sft_sources

    return sft_sources(cfg.data, cfg.dataset, cfg.val_dataset, cfg.image_root)


def load_examples(cfg: SFTConfig, split: str, tokenizer, image_processor, chat_template: str | None = None
                  ) -> tuple[list, dict[str, list[str]]]:
    """Encode the rows of `split` (`sft_data`), rendered with the checkpoint's chat template (`chat_template`,
    default the tokenizer's); returns (examples, skipped rows: reason -> the BadRow messages, which name the
    rows; reasons as in `learner.sft.REASONS`; a row that is not a conversation LLaMA-Factory would read is
    `not_sharegpt`). A bad row raises naming it unless `on_bad_row=skip`; a corrupt JSON line always raises."""
    from tqdm import tqdm

    from data_gen.sft_formats import SFTAttr, read_records, to_chat
    from data_gen.tables import FormatError
    from learner.sft import BadRow, encode_row

    if cfg.on_bad_row not in ("raise", "skip"):
        raise ValueError(f"on_bad_row must be raise or skip, got {cfg.on_bad_row!r}")
    sources, root = sft_data(cfg)
    examples, skipped = [], {}
    for path, attr in sources[split]:
        records = list(read_records(path))
        for where, obj in tqdm(records, desc=f"sft {split} rows", unit="row", file=sys.stdout):
            try:
                try:
                    row = to_chat(obj, attr or SFTAttr.detect(obj, where), where)
                except FormatError as e:
                    raise BadRow(str(e), "not_sharegpt") from None
                examples.append(encode_row(row, root, tokenizer, image_processor, cfg.cutoff_len, where,
                                           chat_template=chat_template))
            except BadRow as e:
                if cfg.on_bad_row == "raise":
                    raise
                skipped.setdefault(e.reason, []).append(str(e))
    return examples, skipped


def skip_counts(skipped: dict[str, dict[str, list[str]]]) -> dict[str, int]:
    """{split: {reason: messages}} -> the MLflow metrics: `sft/skipped_rows` (all splits and reasons),
    `sft/skipped_rows/<reason>` and `sft/skipped_rows_<split>`."""
    out = {"sft/skipped_rows": sum(len(v) for by in skipped.values() for v in by.values())}
    for split, by in skipped.items():
        out[f"sft/skipped_rows_{split}"] = sum(len(v) for v in by.values())
        for reason, rows in by.items():
            out[f"sft/skipped_rows/{reason}"] = out.get(f"sft/skipped_rows/{reason}", 0) + len(rows)
    return out


def skip_report(skipped: dict[str, dict[str, list[str]]]) -> str:
    """The console line(s) for the skipped rows: count per split and reason, and the first row of each."""
    lines = []
    for split, by in skipped.items():
        for reason, rows in sorted(by.items()):
            lines.append(f"[sft] skipped {len(rows)} {split} row(s): {reason} (first: {rows[0]})")
    return "\n".join(lines)


def run(cfg: SFTConfig) -> dict:
    from tqdm import tqdm
    from transformers import AutoProcessor

    from actors.trajectory import to_batch
    from cluster.tracking import Tracker, job, ready_nodes
    from cluster.raystart import init_ray
    from learner.actor import LearnerActor

    processor = AutoProcessor.from_pretrained(cfg.model.path)
    template = getattr(processor, "chat_template", None)  # the checkpoint's own (else its tokenizer's)
    train, train_skipped = load_examples(cfg, "train", processor.tokenizer, processor.image_processor, template)
    val, val_skipped = load_examples(cfg, "val", processor.tokenizer, processor.image_processor, template)
    image_root = sft_data(cfg)[1]
    skipped = {"train": train_skipped, "val": val_skipped}
    counts = skip_counts(skipped)
    if counts["sft/skipped_rows"]:
        print(skip_report(skipped))
    if not train:
        raise ValueError(f"data={cfg.data}{f' dataset={cfg.dataset}' if cfg.dataset else ''}: no usable training "
                         f"examples ({counts['sft/skipped_rows_train']} skipped)")
    per_epoch = -(-len(train) // cfg.batch_size)
    steps = min(per_epoch * cfg.epochs, cfg.max_steps or per_epoch * cfg.epochs)
    print(f"[sft] {len(train)} train / {len(val)} val examples ({counts['sft/skipped_rows']} bad rows skipped, "
          f"on_bad_row={cfg.on_bad_row}), {steps} steps of {cfg.batch_size}; model {cfg.model.path}")
    ray = init_ray(cfg.address, cfg.learner_cpus)
    tracker = Tracker(cfg)
    summary: dict = {}
    with job(tracker, ray):
        learner = ray.remote(LearnerActor).options(num_cpus=cfg.learner_cpus, num_gpus=cfg.learner_gpus).remote(
            cfg.model.path, cfg.learner, str(image_root), steps)
        node = learner.node_id.remote()
        tracker.watch_gpus(ray, lambda: {"learner": ready_nodes(ray, [node])})  # GPU metrics of its node
        tracker.metrics({k: float(v) for k, v in counts.items()}, 0)
        rng = random.Random(cfg.seed)
        val_ref = ray.put(to_batch(val)) if val else None
        bar = tqdm(total=steps, desc="sft steps", unit="step", file=sys.stdout)
        step = 0
        for _ in range(cfg.epochs):
            order = list(range(len(train)))
            rng.shuffle(order)
            for k in range(0, len(order), cfg.batch_size):
                if step == steps:
                    break
                t0 = time.perf_counter()
                batch = [train[i] for i in order[k:k + cfg.batch_size]]  # an epoch's last may be short
                m = ray.get(learner.sft_step.remote(to_batch(batch)))
                m["step_s"] = time.perf_counter() - t0  # the batch's encoding and transfer, forwards, backwards, update
                m["examples"] = float(len(batch))
                step += 1
                if val_ref is not None and ((cfg.eval_every and step % cfg.eval_every == 0) or step == steps):
                    m |= ray.get(learner.sft_eval.remote(val_ref))
                tracker.metrics({f"sft/{key}": v for key, v in m.items()}, step)
                bar.set_postfix(loss=f"{m['loss']:.3f}", lr=f"{m['lr']:.2e}")
                bar.update(1)
                summary = m
        bar.close()
        model_dir = Path(cfg.out).resolve() / "model"
        ray.get(learner.save_hf.remote(str(model_dir), tracker.run_info(step)))  # with its lineage file
        tracker.checkpoint(model_dir, "model")  # to MLflow too with tracking.log_checkpoints
    reasons = {k.rsplit("/", 1)[1]: v for k, v in counts.items() if k.startswith("sft/skipped_rows/")}
    summary = summary | {
        "model": str(model_dir), "base_model": cfg.model.source or cfg.model.path, "run_id": tracker.run_id, "steps": step, "train_examples": len(train),
        "val_examples": len(val), "on_bad_row": cfg.on_bad_row, "skipped_rows": counts["sft/skipped_rows"],
        "skipped_rows_by_reason": reasons,
        "skipped_rows_by_split": {sp: {r: len(v) for r, v in by.items()} for sp, by in skipped.items()},
        "skipped_rows_first": {f"{sp}/{r}": v[0] for sp, by in skipped.items() for r, v in by.items()}}
    (Path(cfg.out) / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"[sft] done: loss {summary.get('loss', float('nan')):.4f}"
          + (f", val loss {summary['val_loss']:.4f}" if "val_loss" in summary else "")
          + f"; {counts['sft/skipped_rows']} bad rows skipped; HF checkpoint {model_dir}; MLflow run {tracker.run_id}"
          + f"; summary {Path(cfg.out) / 'summary.json'}")
    return summary
