"""Synthetic tasks of the four ViGoRL families, rendered with Pillow, deterministic by seed, with truth.

    visual_search  a small target among many distractors in a large cluttered image; attribute question
                   with options (the case where zooming is needed)
    gui_grounding  a rendered screen of labelled widgets; an instruction; the gold box
    spatial        objects in a scene; a relation question with options
    web_action     a rendered page with numbered elements; an objective; the gold action
    object_colour  (visual_search task, small) what colour is the {shape} in a 112x112 scene of two or three
                   objects; the learning proof's task (bench/learn.py)

Generators register by name (`GENERATORS`). Image sizes are multiples of 28 inside the default pixel
bounds, so the model sees them unresized and golds need no scaling. `make_dataset` writes
OUT/images/*.png and OUT/prompts.parquet.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Callable

from PIL import Image, ImageDraw, ImageFont

from data_gen.rows import PROMPTS_FILE, PromptRow, write_rows

COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 200, 30),
          "purple": (140, 60, 180), "orange": (245, 140, 20)}
SHAPES = ("circle", "square", "triangle")

Generator = Callable[[random.Random, str], tuple[Image.Image, dict]]
GENERATORS: dict[str, Generator] = {}


def register(name: str):
    def deco(fn: Generator) -> Generator:
        GENERATORS[name] = fn
        return fn
    return deco


def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)  # Pillow's bundled font: same glyphs on every machine


def _shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], color) -> None:
    x0, y0, x1, y1 = box
    if shape == "circle":
        draw.ellipse(box, fill=color)
    elif shape == "square":
        draw.rectangle(box, fill=color)
    else:
        draw.polygon([((x0 + x1) // 2, y0), (x1, y1), (x0, y1)], fill=color)


def _options(rng: random.Random, gold: str, pool: list[str], k: int = 4) -> list[str]:
    opts = [gold] + rng.sample([p for p in pool if p != gold], k - 1)
    rng.shuffle(opts)
    return opts


def _mc_question(q: str, options: list[str]) -> str:
    letters = "ABCDEF"
    return q + "\n" + "\n".join(f"({letters[i]}) {o}" for i, o in enumerate(options)) + \
        "\nAnswer with the option's text."


@register("visual_search")
def visual_search(rng: random.Random, pid: str) -> tuple[Image.Image, dict]:
    w, h = 1008, 756  # 36 x 27 patches of 28 px
    img = Image.new("RGB", (w, h), (rng.randint(150, 200),) * 3)
    draw = ImageDraw.Draw(img)
    for _ in range(300):  # clutter: gray blobs the target hides among
        x, y, s = rng.randrange(w), rng.randrange(h), rng.randint(4, 30)
        g = rng.randint(90, 230)
        draw.ellipse((x, y, x + s, y + s), fill=(g, g, g))
    shape = rng.choice(SHAPES)
    color = rng.choice(list(COLORS))
    s = rng.randint(10, 14)  # small: ~1% of the image side
    x, y = rng.randint(20, w - 20 - s), rng.randint(20, h - 20 - s)
    _shape(draw, shape, (x, y, x + s, y + s), COLORS[color])
    options = _options(rng, color, list(COLORS))
    return img, dict(task="visual_search", gold=color, options=options,
                     question=_mc_question(f"What is the color of the small {shape}?", options),
                     meta={"target": shape, "box": [x, y, x + s, y + s]})


@register("gui_grounding")
def gui_grounding(rng: random.Random, pid: str) -> tuple[Image.Image, dict]:
    w, h = 1288, 728
    img = Image.new("RGB", (w, h), (245, 246, 250))
    draw = ImageDraw.Draw(img)
    draw.rectangle((0, 0, w, 56), fill=(50, 60, 80))
    labels = rng.sample(["Home", "Search", "Settings", "Profile", "Cart", "Help", "Login", "Sign up",
                         "Messages", "Upload", "Download", "Share", "Save", "Cancel", "Submit", "Next",
                         "Back", "Menu", "Filter", "Sort"], 12)
    font = _font(18)
    widgets = []
    for i, label in enumerate(labels):
        col, row = i % 4, i // 4
        x0 = 60 + col * 300 + rng.randint(0, 40)
        y0 = 110 + row * 200 + rng.randint(0, 60)
        bw = 40 + int(draw.textlength(label, font=font)) + rng.randint(0, 30)
        bh = rng.randint(36, 52)
        box = (x0, y0, x0 + bw, y0 + bh)
        draw.rounded_rectangle(box, radius=6, fill=rng.choice([(66, 133, 244), (230, 230, 235), (52, 168, 83)]),
                               outline=(120, 120, 130))
        draw.text(((box[0] + box[2]) // 2, (box[1] + box[3]) // 2), label, fill=(10, 10, 10), font=font,
                  anchor="mm")
        widgets.append((label, box))
    label, box = rng.choice(widgets)
    return img, dict(task="gui_grounding", gold="({}, {}, {}, {})".format(*box), options=[],
                     question=f"Click on the '{label}' button. Answer with the point (x, y) to click.",
                     meta={"label": label})


_RELATIONS = {"left of": lambda a, b: a[0] < b[0], "right of": lambda a, b: a[0] > b[0],
              "above": lambda a, b: a[1] < b[1], "below": lambda a, b: a[1] > b[1]}


def object_scene(rng: random.Random, size: tuple[int, int], n: int, radius: tuple[int, int],
                 apart: tuple[int, int]) -> tuple[Image.Image, list[tuple[str, tuple[int, int], int]]]:
    """`n` distinct (colour, shape) objects on a wall-and-floor background, centres at least `apart` =
    (dx, dy) apart on both axes, so relations between them are unambiguous. Returns the image and
    [(name "colour shape", centre (x, y), radius)] in drawing order. Also the scenes of `make learn`'s
    base-model captions (bench/learn.py)."""
    w, h = size
    while True:  # a placement that leaves no room for the next object starts the scene over
        objects: list[tuple[str, tuple[int, int], int]] = []
        for c, s in rng.sample([(c, s) for c in COLORS for s in SHAPES], n):
            r = rng.randint(*radius)
            for _ in range(100):
                cx, cy = rng.randint(r + 4, w - r - 5), rng.randint(r + 4, h - r - 5)
                if all(abs(cx - a) > apart[0] and abs(cy - b) > apart[1] for _, (a, b), _ in objects):
                    objects.append((f"{c} {s}", (cx, cy), r))
                    break
            else:
                break
        if len(objects) == n:
            break
    img = Image.new("RGB", (w, h), (235, 232, 225))
    draw = ImageDraw.Draw(img)
    draw.rectangle((0, h * 2 // 3, w, h), fill=(200, 190, 170))  # a floor
    for name, (cx, cy), r in objects:
        c, s = name.split()
        _shape(draw, s, (cx - r, cy - r, cx + r, cy + r), COLORS[c])
    return img, objects


@register("spatial")
def spatial(rng: random.Random, pid: str) -> tuple[Image.Image, dict]:
    img, objs = object_scene(rng, (672, 504), 3, (22, 36), (80, 60))
    (a, ca, _), (b, cb, _) = objs[0], objs[1]
    axis = rng.choice([("left of", "right of"), ("above", "below")])
    gold = axis[0] if _RELATIONS[axis[0]](ca, cb) else axis[1]
    options = list(axis)
    rng.shuffle(options)
    q = f"Is the {a} {axis[0]} or {axis[1]} the {b}?"
    return img, dict(task="spatial", gold=gold, options=options, question=_mc_question(q, options),
                     meta={"objects": [o[0] for o in objs], "centres": [o[1] for o in objs]})


# Scenes of `object_colour` and of the learning proof's base-model captions (bench/learn.py): 112x112 px,
# 16 image tokens, so that a small VLM pretrained on this CPU sees them at all. Objects 24-34 px across
# (one or two image tokens each): with 16-24 px objects a tiny VLM on a frozen random vision tower began to
# use the image only after ~100 caption steps, at this size within ~50 (measured; README, make learn).
SMALL_SCENE = dict(size=(112, 112), radius=(12, 17), apart=(28, 28))


def object_sentence(name: str, point: tuple[int, int]) -> str:
    """What is at `point`, in the words of `make learn`'s base captions and of the describing scripted teacher
    (data_gen.teachers): "The triangle at (51, 59) is orange." `name` is "colour shape". Shape first, then
    where, then colour: read left to right, a caption then teaches where a named shape is and what colour is
    at a place, the two hops an `object_colour` question needs. ("The orange triangle is at ..." taught
    the colour before the shape was known, and the fine-tuned models answered at chance: README.)"""
    colour, shape = name.split()
    return f"The {shape} at ({point[0]}, {point[1]}) is {colour}."


@register("object_colour")
def object_colour(rng: random.Random, pid: str) -> tuple[Image.Image, dict]:
    """What colour is the {shape}? Two or three objects of different shapes and colours in a small scene;
    the other objects' colours are among the four options, so "a colour I can see" is not enough."""
    while True:
        img, objs = object_scene(rng, SMALL_SCENE["size"], rng.choice((2, 3)), SMALL_SCENE["radius"],
                                 SMALL_SCENE["apart"])
        shapes = [name.split()[1] for name, _, _ in objs]
        if len(set(shapes)) == len(shapes) and len({name.split()[0] for name, _, _ in objs}) == len(objs):
            break
    (name, (cx, cy), r) = objs[0]
    colour, shape = name.split()
    present = [n.split()[0] for n, _, _ in objs[1:]]
    pool = [c for c in COLORS if c != colour and c not in present]
    options = [colour, *present, *rng.sample(pool, 3 - len(present))]
    rng.shuffle(options)
    return img, dict(task="visual_search", gold=colour, options=options,
                     question=_mc_question(f"What is the color of the {shape}?", options),
                     meta={"target": shape, "box": [cx - r, cy - r, cx + r, cy + r],
                           "objects": [o[0] for o in objs], "centres": [o[1] for o in objs],
                           "boxes": [[x - q, y - q, x + q, y + q] for _, (x, y), q in objs]})


@register("web_action")
def web_action(rng: random.Random, pid: str) -> tuple[Image.Image, dict]:
    w, h = 1008, 756
    img = Image.new("RGB", (w, h), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    font = _font(16)
    draw.rectangle((0, 0, w, 60), fill=(30, 90, 160))
    draw.text((20, 30), "Classifieds", fill=(255, 255, 255), font=_font(24), anchor="lm")
    links = rng.sample(["Home", "Cars", "Bikes", "Furniture", "Electronics", "Cart", "My account", "Post an ad"], 5)
    elements = []  # (id, kind, label, box)
    eid = rng.randint(1, 20)
    x = 220
    for label in links:
        box = (x, 18, x + int(draw.textlength(label, font=font)) + 16, 44)
        draw.text((box[0] + 8, 31), label, fill=(255, 255, 255), font=font, anchor="lm")
        elements.append((eid, "link", label, box))
        eid += 1
        x = box[2] + 14
    search = (40, 90, 700, 130)
    draw.rectangle(search, outline=(120, 120, 120), width=2)
    draw.text((50, 110), "Search listings...", fill=(150, 150, 150), font=font, anchor="lm")
    elements.append((eid, "textbox", "search", search))
    eid += 1
    for i in range(4):
        y = 170 + i * 130
        draw.rectangle((40, y, w - 40, y + 110), outline=(210, 210, 210))
        title = rng.choice(["Red bike", "Blue sofa", "Old laptop", "Green car", "Desk lamp", "Camera"])
        box = (60, y + 20, 60 + int(draw.textlength(title, font=font)) + 10, y + 44)
        draw.text((65, y + 32), title, fill=(20, 60, 200), font=font, anchor="lm")
        elements.append((eid, "link", title, box))
        eid += 1
    for e_id, _, _, box in elements:  # set-of-marks style ids
        draw.rectangle((box[0] - 2, box[1] - 14, box[0] + 22, box[1]), fill=(230, 30, 30))
        draw.text((box[0] + 10, box[1] - 7), str(e_id), fill=(255, 255, 255), font=_font(11), anchor="mm")
    kind = rng.choice(["click", "type", "scroll", "go_back"])
    if kind == "click":
        e = rng.choice([e for e in elements if e[1] == "link"])
        objective, gold = f"Open the '{e[2]}' page.", f"click [{e[0]}]"
    elif kind == "type":
        e = next(e for e in elements if e[1] == "textbox")
        query = rng.choice(["red bike", "sofa", "laptop", "camera"])
        objective, gold = f"Search the listings for '{query}'.", f"type [{e[0]}] [{query}]"
    elif kind == "scroll":
        objective, gold = "See more listings further down the page.", "scroll [down]"
    else:
        objective, gold = "Return to the previous page.", "go_back"
    question = (f"Objective: {objective}\nElements are marked with red ids. Answer with one action: "
                "click [id], type [id] [text], scroll [down|up], go_back or stop [answer].")
    return img, dict(task="web_action", gold=gold, options=[], question=question,
                     meta={"elements": [[e[0], e[1], e[2], list(e[3])] for e in elements]})


def ensure_dataset(task: str, n: int, seed: int, out: str | Path, log: str | None = None,
                   progress: bool = True) -> Path:
    """`make_dataset(task, n, seed, out)` unless `out` already is data (a prompts file in the dir, or a file):
    the demo, the recipes with `make_data`, benchmarks and tests generate their synthetic set once. `log`: a
    console prefix to announce the generation with; None generates quietly."""
    out = Path(out)
    if (out / PROMPTS_FILE).is_file() or out.is_file():
        return out
    if log:
        print(f"{log} generating {n} synthetic {task} prompts in {out}")
    make_dataset(task, n, seed, out, progress=progress)
    return out


def make_dataset(task: str, n: int, seed: int, out: str | Path, progress: bool = True) -> list[PromptRow]:
    """Generate `n` rows of `task` into `out` (images/ + prompts.parquet). Row i depends only on (seed, i)."""
    from tqdm import tqdm

    if task not in GENERATORS:
        raise ValueError(f"unknown synthetic task {task!r}; choose from {sorted(GENERATORS)}")
    if n <= 0:
        raise ValueError(f"--n must be positive, got {n}")
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in tqdm(range(n), desc=f"make-data {task}", disable=not progress, unit="img"):
        pid = f"{task}-{seed}-{i:06d}"
        img, d = GENERATORS[task](random.Random(f"{task}/{seed}/{i}"), pid)
        rel = f"images/{pid}.png"
        img.save(out / rel)
        rows.append(PromptRow(prompt_id=pid, task=d["task"], image=rel, width=img.width, height=img.height,
                              question=d["question"], gold=d["gold"], options=d["options"],
                              source=f"synthetic/{task}", meta=json.dumps(d["meta"])))
    write_rows(rows, out)
    return rows
