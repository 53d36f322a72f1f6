"""`vigorl demo`: the whole core on one prompt — tiny model, synthetic data, one zoom episode played by the
training actor's episode code (`actors.rollout.Rollout`) against vLLM, scored by the ViGoRL rewards, crops
and a picture saved as files."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from configs.jobs import DemoConfig


def run(cfg: DemoConfig) -> dict:
    from transformers import AutoProcessor

    from actors.engine import make_llm
    from actors.picture import episode_picture
    from actors.rollout import Rollout, assistant_turns, score_response
    from actors.trajectory import rebuild_images
    from actors.zoom import ZoomSettings
    from data_gen.formats import read_rows
    from data_gen.geometry import crop_box
    from data_gen.images import policy_image
    from data_gen.rows import gold_for_model
    from data_gen.synthetic import ensure_dataset
    from data_gen.tiny_model import ensure_tiny_model

    t0 = time.time()
    model_dir, data_dir, out = Path(cfg.model.path), Path(cfg.data.path), Path(cfg.out)
    ensure_tiny_model(model_dir, log="[demo]", vocab=cfg.vocab, max_pixels=cfg.model.max_pixels,
                      min_pixels=cfg.model.min_pixels)
    ensure_dataset(cfg.data.task, cfg.n_prompts, seed=0, out=data_dir, log="[demo]")
    rows = read_rows(data_dir)
    if not 0 <= cfg.row < len(rows):
        raise ValueError(f"row={cfg.row} but {data_dir} has {len(rows)} rows")
    row = rows[cfg.row]
    image = policy_image(data_dir, row.image, cfg.model.min_pixels, cfg.model.max_pixels)
    settings = ZoomSettings(**dataclasses.asdict(cfg.zoom))

    print(f"[demo] starting vLLM on {model_dir}")
    llm = make_llm(str(model_dir), dtype=cfg.model.dtype, max_model_len=cfg.model.max_model_len,
                   max_images=settings.max_images, seed=cfg.sampling.seed)
    processor = AutoProcessor.from_pretrained(str(model_dir))
    r, sp = cfg.rollout, cfg.sampling
    rollout = Rollout(llm, processor, settings, group_size=1, prompt=r.prompt, mode=cfg.data.mode,
                      temperature=sp.temperature, top_p=sp.top_p, max_tokens_per_turn=sp.max_tokens_per_turn,
                      response_budget=r.response_budget, max_model_len=cfg.model.max_model_len, guided=r.guided,
                      min_zooms=r.min_zooms)
    [traj] = rollout.play([(row, image, row.image)], weight_version=0)
    tok = processor.tokenizer
    turns = assistant_turns(tok, traj.token_ids, traj.prompt_len)
    s = score_response(tok, traj.token_ids, traj.prompt_len, traj.end == "truncated", row, image.size, cfg.data.mode)
    zooms = [ref.point for ref in traj.images[1:]]
    boxes = [crop_box(p, image.size, settings.half_size) for p in zooms]
    crops = rebuild_images(traj.images, data_dir)[1:]
    gold = gold_for_model(row, image.size)

    out.mkdir(parents=True, exist_ok=True)
    image.save(out / "image.png")
    crop_files = []
    for i, c in enumerate(crops):
        crop_files.append(str(out / f"crop_{i + 1}.png"))
        c.save(crop_files[-1])
    lines = [f"Q: {row.question}", f"gold: {gold}"] + [f"turn {i + 1}: {t}" for i, t in enumerate(turns)] + [
        f"reward {s.overall:.3f} (accuracy {s.accuracy:.2f}, format {s.format:.2f}) end={traj.end}"]
    episode_picture(image, zooms, boxes, crops, lines).save(out / "episode.png")
    result = {"prompt_id": row.prompt_id, "task": row.task, "mode": cfg.data.mode, "question": row.question,
              "gold": gold, "image": str(out / "image.png"), "image_size": list(image.size), "turns": turns,
              "points": [list(p) for p in zooms], "crop_boxes": [list(b) for b in boxes],
              "crops": crop_files, "end": traj.end,
              "score": {k: v for k, v in dataclasses.asdict(s).items() if k != "points"},
              "guided": r.guided, "seconds": round(time.time() - t0, 1)}
    (out / "episode.json").write_text(json.dumps(result, indent=2))

    print("\n=== zoom episode", row.prompt_id, f"({row.task}, {cfg.data.mode}) ===")
    print("question:", row.question.replace("\n", " | "))
    print("gold:", gold, "| image:", f"{image.width}x{image.height}")
    for i, t in enumerate(turns):
        print(f"--- assistant turn {i + 1} ---\n{t}")
        if i < len(crops):
            print(f"    -> zoom at {zooms[i]}, box {boxes[i]}, crop saved to {crop_files[i]}")
    print(f"--- end: {traj.end}; points {zooms}")
    print(f"score: overall={s.overall:.3f} accuracy={s.accuracy:.2f} format={s.format:.2f} "
          f"diversity={s.diversity:.2f} {('error: ' + s.error) if s.error else ''}")
    print(f"files: {out}/episode.png (picture), {out}/episode.json, {len(crop_files)} crop(s)")
    return result
