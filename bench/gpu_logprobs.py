"""GPU check (not a test): the learner's batched, right-padded micro-batch forward (learner.logprobs) gives
the same per-token log-probs as one sequence at a time, in bf16 and fp32 on CUDA, with image tokens.
Needs only torch + transformers + the repo: `python -m bench.gpu_logprobs` on a GPU machine."""

from __future__ import annotations

import random
import sys
import tempfile
from pathlib import Path

import torch


def main() -> int:
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    from actors.trajectory import ImageRef, Trajectory
    from actors.zoom import resize_for_model
    from data_gen.images import load_rgb
    from data_gen.rows import read_rows
    from data_gen.synthetic import make_dataset
    from data_gen.tiny_model import make_tiny_model
    from actors.trajectory import rebuild_images
    from learner.logprobs import batch_inputs, model_inputs, token_logprobs

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    root = Path(tempfile.mkdtemp())
    model_dir = make_tiny_model(root / "model", vocab="small", size="small")
    make_dataset("visual_search", 3, seed=0, out=root / "data", progress=False)
    proc = AutoProcessor.from_pretrained(model_dir)
    image_id = proc.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    rng = random.Random(0)
    trajs = []
    for k, row in enumerate(read_rows(root / "data")):
        img = resize_for_model(load_rgb(root / "data" / row.image))
        text = proc.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text",
                                         "text": row.question}]}], add_generation_prompt=True, tokenize=False)
        crop_turn = "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|><|im_end|>\n"
        from actors.zoom import crop

        images = [img, crop(img, (100 + 40 * k, 90), 182, 336)]
        ids = proc(text=[text + crop_turn], images=images, return_tensors="pt")["input_ids"][0].tolist()
        ids += [rng.randrange(300) for _ in range(20 + 37 * k)]  # different lengths: real padding
        w, h = img.size
        refs = [ImageRef(row.image, w, h), ImageRef(row.image, w, h, point=(100 + 40 * k, 90), half_size=182,
                                                    out_size=336)]
        trajs.append(Trajectory(episode_id=str(k), group_id="g", prompt_id=row.prompt_id, weight_version=0,
                                token_ids=ids, loss_mask=[1] * len(ids), logprobs=[0.0] * len(ids),
                                prompt_len=len(ids), reward=0.0, reward_format=0.0, reward_accuracy=0.0,
                                reward_coordinate=0.0, reward_diversity=0.0, advantage=0.0, num_turns=1,
                                images=refs))
    worst = {}
    for dtype in (torch.float32, torch.bfloat16):
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir, dtype=dtype).to(dev).eval()
        images = [rebuild_images(t.images, root / "data") for t in trajs]
        with torch.no_grad():
            batched = token_logprobs(model, {k: v.to(dev) for k, v in
                                             batch_inputs(trajs, images, proc.image_processor, image_id).items()})
            diffs = []
            for i, t in enumerate(trajs):
                single = token_logprobs(model, {k: v.to(dev) for k, v in
                                                model_inputs(t, images[i], proc.image_processor, image_id).items()})[0]
                diffs.append((batched[i, :len(t.token_ids)] - single).abs().max().item())
                assert batched[i, len(t.token_ids):].abs().sum().item() == 0.0  # padding reads 0
        worst[str(dtype)] = max(diffs)
        print(f"{dtype}: max |batched - single| log-prob per sequence {['%.2e' % d for d in diffs]}")
    print(f"device: {torch.cuda.get_device_name() if dev == 'cuda' else 'cpu'}")
    return 0 if worst["torch.float32"] < 1e-4 and worst["torch.bfloat16"] < 0.1 else 1


if __name__ == "__main__":
    sys.exit(main())
