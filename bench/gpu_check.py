"""GPU check (not a test): the parts of vigorl's GPU path that run without vLLM and Ray, on one CUDA GPU.
The GPU machines lent to development sessions have torch and transformers but no vLLM, Ray or DeepSpeed and
no package registry; DeepSpeed and its pure-Python needs travel there as wheels (docs/install.md, "GPU clusters").
`python -m bench.gpu_check` (also runs on CPU: fp32, gloo) checks, and exits 0 when all hold:

1. logprobs — the learner's batched right-padded micro-batch forward (mask-free causal attention,
   `learner.logprobs.causal_only`) gives each sequence's log-probs as a lone forward does, fp32 and bf16.
2. learner — `learner.trainer.Learner` as a GPU job builds it (bf16 DeepSpeed, an NCCL group of one) under
   ZeRO-2 and ZeRO-3: three GRPO steps on a group of image trajectories (finite losses, trained weights move,
   the frozen vision tower does not), its tokens/s.
3. publish — the weights a sync sends (`Learner.state_dict(trained_only=True)`; ZeRO-3 gathers them group
   by group) written to the shared-memory weight file (`actors.shm`, the one-GPU path) and read back into a
   fresh HF model on the GPU (standing in for the rollout actor's vLLM engine): its logits equal the
   learner's. Seconds and bytes of the write and the read against one host memcpy of the same bytes.
4. sft and checkpoints — `Learner.sft_step` lowers the loss; `save_hf` (ZeRO-3: gathered) writes a model
   whose logits equal the learner's; `save_state` -> a new learner's `load_state` gives the same
   validation loss, and the next step's loss matches the original's.
"""

from __future__ import annotations

import dataclasses
import math
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def trajectories(proc, data: Path, n: int = 4) -> list:
    """`n` episodes of one group over the dataset's first rows: full image + one crop turn in the prompt, then
    20 + 37k 'generated' tokens (loss-masked in, different lengths: real padding), advantages +-1."""
    from actors.trajectory import ImageRef, Trajectory
    from data_gen.formats import read_rows
    from data_gen.geometry import crop
    from data_gen.images import policy_image

    rng = random.Random(0)
    rows = list(read_rows(data))
    out = []
    for k in range(n):
        row = rows[k % len(rows)]
        img = policy_image(data, row.image)
        point = (100 + 40 * (k % 3), 90)
        text = proc.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text",
                                         "text": row.question}]}], add_generation_prompt=True, tokenize=False)
        crop_turn = "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|><|im_end|>\n"
        prompt = proc(text=[text + crop_turn], images=[img, crop(img, point, 182, 336)],
                      return_tensors="pt")["input_ids"][0].tolist()
        gen = [rng.randrange(300) for _ in range(20 + 37 * k)]
        w, h = img.size
        refs = [ImageRef(row.image, w, h), ImageRef(row.image, w, h, point=point, half_size=182, out_size=336)]
        ids = prompt + gen
        out.append(Trajectory(episode_id=str(k), group_id="g", prompt_id=row.prompt_id, weight_version=0,
                              token_ids=ids, loss_mask=[0] * len(prompt) + [1] * len(gen),
                              logprobs=[0.0] * len(ids), prompt_len=len(prompt), reward=float(k % 2),
                              reward_format=1.0, reward_accuracy=float(k % 2), reward_coordinate=0.0,
                              reward_diversity=0.0, advantage=1.0 if k % 2 else -1.0, num_turns=1, images=refs))
    return out


def check_logprobs(model_dir: Path, data: Path, proc, trajs) -> bool:
    from transformers import Qwen2_5_VLForConditionalGeneration

    from actors.trajectory import rebuild_images
    from learner.inputs import batch_inputs, model_inputs
    from learner.logprobs import token_logprobs

    image_id = proc.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    images = [rebuild_images(t.images, data) for t in trajs]
    worst = {}
    for dtype in (torch.float32, torch.bfloat16):
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir, dtype=dtype).to(DEV).eval()
        with torch.no_grad():
            batched = token_logprobs(model, {k: v.to(DEV) for k, v in
                                             batch_inputs(trajs, images, proc.image_processor, image_id).items()})
            diffs = []
            for i, t in enumerate(trajs):
                single = token_logprobs(model, {k: v.to(DEV) for k, v in
                                                model_inputs(t, images[i], proc.image_processor, image_id).items()})[0]
                diffs.append((batched[i, :len(t.token_ids)] - single).abs().max().item())
                assert batched[i, len(t.token_ids):].abs().sum().item() == 0.0  # padding reads 0
        worst[dtype] = max(diffs)
        print(f"[logprobs] {dtype}: max |batched - single| per sequence {['%.2e' % d for d in diffs]}")
    return worst[torch.float32] < 1e-4 and worst[torch.bfloat16] < 0.1


def check_learner(model_dir: Path, data: Path, trajs, zero_stage: int) -> bool:
    """Three GRPO steps, then the publish round trip through the shared-memory weight file."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    from actors.shm import WeightFile, WeightReader
    from configs.schema import LearnerConfig
    from learner.trainer import Learner

    tag = f"[learner zero-{zero_stage}]"
    cfg = LearnerConfig(lr=1e-4, grad_clip=1.0, warmup_ratio=0.0, mini_batch_size=0, micro_batch_size=2,
                        zero_stage=zero_stage, zero3_gather_mb=0.05, length_buckets=True)
    t0 = time.perf_counter()
    learner = Learner(model_dir, cfg, data, total_steps=3)
    dtype = next(learner.engine.module.parameters()).dtype
    print(f"{tag} built in {time.perf_counter() - t0:.1f} s on {learner.engine.device}, dtype {dtype}")
    before = {k: v.clone() for k, v in learner.state_dict().items()}  # on CPU, state_dict() aliases the weights
    tokens = sum(len(t.token_ids) for t in trajs)
    ok = True
    for step in range(3):
        sync(); t0 = time.perf_counter()
        m = learner.train_step([dataclasses.replace(t, weight_version=learner.version) for t in trajs])
        sync(); dt = time.perf_counter() - t0
        print(f"{tag} step {step + 1} ({tokens} sequence tokens): loss {m['loss']:+.4f} kl {m.get('kl', 0):.2e} "
              f"grad_norm {m['grad_norm']:.3f} {dt:.2f} s, {tokens / dt:,.0f} sequence tokens/s")
        ok &= all(math.isfinite(v) for v in m.values())
    after = learner.state_dict()
    sent = learner.state_dict(trained_only=True)
    moved = [k for k in sent if not torch.equal(before[k], after[k])]
    frozen = [k for k in after if k not in sent]
    still = all(torch.equal(before[k], after[k]) for k in frozen)
    print(f"{tag} {len(moved)}/{len(sent)} trained tensors moved; {len(frozen)} frozen (vision) tensors "
          f"unchanged: {still}")
    ok &= len(moved) > len(sent) // 2 and still and len(frozen) > 0

    # the one-GPU weight sync: learner rank 0 writes its file, the rollout side copies out of it
    nbytes = sum(t.numel() * t.element_size() for t in sent.values())
    wf = WeightFile()
    wf.write(learner.version, sent)  # first write: creates and lays out the file
    t0 = time.perf_counter(); wf.write(learner.version, sent); write_s = time.perf_counter() - t0
    fresh = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir, dtype=dtype).to(DEV).eval()
    params = dict(fresh.named_parameters(remove_duplicate=False))

    def load(views: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, v in views.items():
                params[name].copy_(v, non_blocking=True)
        sync()

    t0 = time.perf_counter(); version = WeightReader().read(wf.path.as_posix(), load); read_s = time.perf_counter() - t0
    flat = torch.cat([t.reshape(-1).view(torch.uint8) for t in sent.values()])  # host memory, as `sent`
    dst = torch.empty_like(flat)
    t0 = time.perf_counter(); dst.copy_(flat); memcpy_s = time.perf_counter() - t0
    wf.close()
    print(f"{tag} publish {nbytes / 2**20:.2f} MiB: write {write_s * 1e3:.1f} ms, read into the {DEV} model "
          f"{read_s * 1e3:.1f} ms, one memcpy {memcpy_s * 1e3:.2f} ms (version {version})")
    got, want = [], []
    with torch.no_grad():
        for t in trajs[:2]:
            inputs = learner._inputs([t])
            want.append(learner.engine.module(**inputs).logits.float())
            got.append(fresh(**inputs).logits.float())
    diff = max((a - b).abs().max().item() for a, b in zip(got, want))
    print(f"{tag} fresh model after the handover vs learner: max |logit diff| {diff:.2e}")
    return ok and version == learner.version and diff == 0.0


def check_sft(model_dir: Path, data: Path, trajs, zero_stage: int) -> bool:
    from transformers import Qwen2_5_VLForConditionalGeneration

    from configs.schema import LearnerConfig
    from learner.trainer import Learner

    tag = f"[sft zero-{zero_stage}]"
    out = Path(tempfile.mkdtemp())
    cfg = LearnerConfig(lr=1e-3, grad_clip=1.0, warmup_ratio=0.0, mini_batch_size=0, micro_batch_size=2,
                        zero_stage=zero_stage, zero3_gather_mb=0.05, kl_coef=0.0,
                        # nothing kept across steps: the two learners' validation below then runs the tower on the
                        # same image batches, and their bf16 losses can be compared exactly
                        sft_vision_cache_mb=0.0)
    learner = Learner(model_dir, cfg, data, total_steps=8)
    losses = [learner.sft_step(trajs)["loss"] for _ in range(5)]
    print(f"{tag} 5 steps on one batch: loss {' '.join('%.3f' % x for x in losses)}")
    learner.save_hf(out / "hf")
    hf = Qwen2_5_VLForConditionalGeneration.from_pretrained(out / "hf", dtype=next(learner.engine.module.parameters())
                                                            .dtype).to(DEV).eval()
    with torch.no_grad():
        inputs = learner._inputs(trajs[:1])
        hf_diff = (hf(**inputs).logits.float() - learner.engine.module(**inputs).logits.float()).abs().max().item()
    print(f"{tag} save_hf -> transformers: max |logit diff| vs the learner {hf_diff:.2e}")
    learner.save_state(out / "resume")
    again = Learner(model_dir, cfg, data, total_steps=8)
    again.load_state(out / "resume")
    val = (learner.sft_eval(trajs)["val_loss"], again.sft_eval(trajs)["val_loss"])
    nxt = (learner.sft_step(trajs)["loss"], again.sft_step(trajs)["loss"])
    print(f"{tag} save_state -> load_state: val loss {val[0]:.5f} / {val[1]:.5f}, next step's loss "
          f"{nxt[0]:.5f} / {nxt[1]:.5f}, version {learner.version} / {again.version}")
    return (losses[-1] < losses[0] and hf_diff == 0.0 and val[0] == val[1] and abs(nxt[0] - nxt[1]) < 1e-2
            and learner.version == again.version)


def sync() -> None:
    if DEV == "cuda":
        torch.cuda.synchronize()


def main() -> int:
    from transformers import AutoProcessor

    from data_gen.synthetic import make_dataset
    from data_gen.tiny_model import make_tiny_model

    root = Path(tempfile.mkdtemp())
    model_dir = make_tiny_model(root / "model", vocab="small", size="small")
    make_dataset("visual_search", 4, seed=0, out=root / "data", progress=False)
    proc = AutoProcessor.from_pretrained(model_dir)
    trajs = trajectories(proc, root / "data")
    print(f"device: {torch.cuda.get_device_name() if DEV == 'cuda' else 'cpu'}, torch {torch.__version__}")
    results = {"logprobs": check_logprobs(model_dir, root / "data", proc, trajs)}
    for stage in (2, 3):
        results[f"learner zero-{stage}"] = check_learner(model_dir, root / "data", trajs, stage)
        results[f"sft zero-{stage}"] = check_sft(model_dir, root / "data", trajs, stage)
    print("results:", {k: "ok" if v else "FAILED" for k, v in results.items()})
    return 0 if all(results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
