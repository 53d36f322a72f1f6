"""What a `make learn` base model perceives: `python -m bench.probe MODEL_DIR [DATA_DIR]`. A diagnostic
for the learning proof (docs/results/learning-proof.md), never part of the tests.

Two measurements, on scenes that are not the held-out set (DATA_DIR defaults to a learn run's RL prompts,
seed 2; the tower probe draws its own scenes):

- **captions**: greedy caption completions of `object_colour` scenes, in the base's own caption words
  (`data_gen.synthetic.object_sentence`): free captions (are the colours it names in the scene? does the
  point of its first sentence fall on an object, and is the colour it gives that object's?), "The {shape}
  at (" (does the point land on that shape?) and "The {shape} at ({true centre}) is" (the right colour?).
- **tower**: a linear probe on the vision tower's output (all tokens of a one-object scene, standardised):
  how well an object's shape and colour can be read from what the language model is given at all.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

import torch

PROMPT = "Describe the objects in the image and where they are."  # the caption pretraining's (bench.learn)


class Captioner:
    """Greedy completions of a caption prefix by a Qwen2.5-VL model dir (transformers, CPU)."""

    def __init__(self, model_dir: str):
        from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

        self.proc = AutoProcessor.from_pretrained(model_dir)
        self.model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir).eval()

    @torch.no_grad()
    def complete(self, image, prefix: str, max_new_tokens: int) -> str:
        msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]}]
        text = self.proc.apply_chat_template(msgs, add_generation_prompt=True) + prefix
        inputs = self.proc(text=[text], images=[image], return_tensors="pt")
        out = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        return self.proc.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)

    @torch.no_grad()
    def tower(self, image) -> torch.Tensor:
        """The vision tower's output for one image, flattened: [tokens * hidden]."""
        pix = self.proc.image_processor(images=[image], return_tensors="pt")
        grid = pix["image_grid_thw"]
        return self.model.model.get_image_features(pix["pixel_values"], grid).pooler_output[0].flatten()


def captions(cap: Captioner, data: Path, n: int) -> dict:
    """Rates over the first `n` `object_colour` rows of `data` (see the module docstring)."""
    from PIL import Image

    from data_gen.formats import read_rows
    from data_gen.synthetic import COLORS
    from data_gen.teachers import scene_of

    c = dict.fromkeys(["colours_named", "colours_present", "first_point_on_object", "first_colour_right",
                       "shape_point_on_shape", "colour_at_true_centre"], 0)
    rows = list(read_rows(data))[:n]
    for row in rows:
        meta = json.loads(row.meta)
        scene = scene_of(row, (row.width, row.height))  # seen_at(point): "colour shape" of the object there
        image = Image.open(Path(data) / row.image).convert("RGB")
        free = cap.complete(image, "", 40)
        named = [w for w in re.findall(r"is (\w+)", free) if w in COLORS]
        c["colours_named"] += len(named)
        c["colours_present"] += sum(w in {o.split()[0] for o in meta["objects"]} for w in named)
        m = re.match(r"The (\w+) at \((\d+), (\d+)\) is (\w+)", free)
        if m:
            there = scene.seen_at((int(m[2]), int(m[3])))
            c["first_point_on_object"] += there is not None
            c["first_colour_right"] += there is not None and there.split()[0] == m[4]
        target, centre = meta["objects"][0], meta["centres"][0]  # the row's question is about the first object
        colour, shape = target.split()
        m = re.match(r"(\d+), (\d+)\)", cap.complete(image, f"The {shape} at (", 8))
        c["shape_point_on_shape"] += bool(m) and scene.seen_at((int(m[1]), int(m[2]))) == target
        said = cap.complete(image, f"The {shape} at ({centre[0]}, {centre[1]}) is", 3).strip()
        c["colour_at_true_centre"] += said.startswith(colour)
    return {"scenes": len(rows), "colours_named": c["colours_named"],
            "named_colours_in_scene": c["colours_present"] / max(1, c["colours_named"]),
            **{k: c[k] / max(1, len(rows)) for k in ("first_point_on_object", "first_colour_right",
                                                     "shape_point_on_shape", "colour_at_true_centre")}}


def tower(cap: Captioner, n_train: int = 1500, n_test: int = 500, seed: int = 0) -> dict:
    """Held-out accuracy of linear probes (softmax regression, Adam, small L2) for an object's shape and colour
    from the tower's output on one-object scenes (data_gen.synthetic's small scenes); chance 1/classes."""
    from data_gen.synthetic import SMALL_SCENE, object_scene

    def scenes(n: int, split: str):
        xs, shapes, colours = [], [], []
        for i in range(n):
            rng = random.Random(f"probe/{seed}/{split}/{i}")
            image, objs = object_scene(rng, SMALL_SCENE["size"], 1, SMALL_SCENE["radius"], SMALL_SCENE["apart"])
            colour, shape = objs[0][0].split()
            xs.append(cap.tower(image))
            shapes.append(shape)
            colours.append(colour)
        return torch.stack(xs), shapes, colours

    xtr, str_, ctr = scenes(n_train, "train")
    xte, ste, cte = scenes(n_test, "test")
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    xtr, xte = (xtr - mu) / sd, (xte - mu) / sd
    torch.manual_seed(seed)

    def probe(ytr: list[str], yte: list[str]) -> dict:
        classes = sorted(set(ytr))
        yi, yt = (torch.tensor([classes.index(y) for y in ys]) for ys in (ytr, yte))
        w = torch.zeros(xtr.shape[1], len(classes), requires_grad=True)
        b = torch.zeros(len(classes), requires_grad=True)
        opt = torch.optim.Adam([w, b], lr=1e-2)
        for _ in range(500):
            opt.zero_grad()
            (torch.nn.functional.cross_entropy(xtr @ w + b, yi) + 1e-3 * w.pow(2).sum()).backward()
            opt.step()
        with torch.no_grad():
            acc = ((xte @ w + b).argmax(1) == yt).float().mean().item()
        return {"accuracy": round(acc, 3), "chance": round(1 / len(classes), 3)}

    return {"shape": probe(str_, ste), "colour": probe(ctr, cte), "train": n_train, "test": n_test}


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="python -m bench.probe", description=__doc__.split("\n")[0])
    p.add_argument("model", help="a model dir (e.g. ~/.cache/vigorl/learn-base-v4/stage-2/model)")
    p.add_argument("data", nargs="?", default="runs/learn/data/rl",
                   help="object_colour rows for the caption probe (default: a learn run's RL prompts, seed 2)")
    p.add_argument("--scenes", type=int, default=120, help="caption probe: rows used")
    a = p.parse_args()
    torch.set_num_threads(2)
    cap = Captioner(a.model)
    print(json.dumps({"model": a.model, "captions": captions(cap, Path(a.data), a.scenes), "tower": tower(cap)},
                     indent=2))
