"""From MCTS trees to SFT data (docs/algorithm.md §6): linearisation into single-turn chains, and conversion of chains into
multi-turn zoom dialogues. Output rows are LLaMA-Factory sharegpt rows (`messages`, `images`) plus
`gt_answer`, `question_id`, `task` and `image_size` (the frame of the coordinates); images are stored once
under OUT_DIR/images/ by content hash and named relative to OUT_DIR (LLaMA-Factory's media dir): readable by
`vigorl sft` and by LLaMA-Factory unchanged.

    direct chain     <think>\\n{steps joined by one space}\\n</think>\\n<answer> {ans} </answer>
    corrected chain  <think>\\n{wrong steps}\\nWait, this seems off. Let's try something else.\\n{correct steps}
                     \\n</think>\\n<answer> {correct ans} </answer>
(steps with <think>, </think>, <answer>, </answer> removed and stripped), from every node's stored rollouts:
a direct chain per correct rollout (reward >= 1), a corrected chain per (wrong, correct) pair. As the released
`process_text_chain` (Gabesarch/grounded-rl@e7970c0:scripts/mcts/build_reasoning_chains_from_mcts.py) reads a
rollout: a rollout that never wrote an answer was judged on its last step, so that step is its answer and
leaves the think text (of wrong rollouts too); a leading option letter (`A. `) is dropped from the answer, as
the released search drops it before judging.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

from data_gen.geometry import FORCED_ANSWER_PREFIX, crop, observation_text, resize_for_model
from data_gen.records import read_jsonl

BACKTRACK = "Wait, this seems off. Let's try something else."
_TAGS = ("<think>", "</think>", "<answer>", "</answer>")


def read_trees(path: Path, truncate_partial: bool = False) -> list[dict]:
    """The tree lines of a trees.jsonl (`records.read_jsonl`: a half-written last line is dropped with a
    warning, any other bad line raises naming file and line)."""
    def check(tree) -> None:
        if not isinstance(tree, dict) or "question_id" not in tree or not isinstance(tree.get("nodes"), list):
            raise ValueError("no question_id / nodes")

    return read_jsonl(path, check, "a tree line", truncate_partial)


def clean_step(text: str) -> str:
    for tag in _TAGS:
        text = text.replace(tag, "")
    return text.strip()


def chain_body(steps: list[str]) -> str:
    """Cleaned steps joined by one space; an empty step is kept (the released join keeps it)."""
    return " ".join(clean_step(x) for x in steps)


def wrap(body: str, answer: str) -> str:
    return f"<think>\n{body}\n</think>\n<answer> {answer.strip()} </answer>"


_OPTION_LETTER = re.compile(r"^[A-Z]\. ")


def rollout_parts(rollout: dict) -> tuple[list[str], str]:
    """(think steps, answer) of one stored rollout, read as the released linearisation reads its texts
    (Gabesarch/grounded-rl@e7970c0:scripts/mcts/build_reasoning_chains_from_mcts.py `process_text_chain`:
    the last text is the answer, the others are the think steps). A rollout that never answered stores its
    last step as the judged answer (`mcts.rollout`): that step becomes the answer only, not a think step too.
    The answer is cleaned of tags and of a leading option letter `A. ` (the released search's `^[A-Z]\\. `)."""
    steps, answer = list(rollout["steps"]), rollout["answer"]
    if steps and answer in (steps[-1], _OPTION_LETTER.sub("", steps[-1])):
        steps = steps[:-1]
    return steps, _OPTION_LETTER.sub("", clean_step(answer))


def node_chains(node: dict) -> list[str]:
    """The chains of one node's stored rollouts: corrected ones (each wrong x each correct), then direct. A
    correct rollout whose answer is empty gives no chain (with no step either, the released code fails on it)."""
    good = [rollout_parts(r) for r in node["rollouts"] if r["reward"] >= 1.0]
    good = [(steps, answer) for steps, answer in good if answer]
    bad = [rollout_parts(r)[0] for r in node["rollouts"] if r["reward"] < 1.0]
    out = [wrap(f"{chain_body(w)}\n{BACKTRACK}\n{chain_body(c)}", a) for w in bad for c, a in good]
    return out + [wrap(chain_body(c), a) for c, a in good]


@dataclass
class LinearizeConfig:
    """`vigorl linearize TREES.jsonl OUT_DIR`: trees -> single-turn SFT chains."""

    max_per_question: int = 10_000  # chains kept per question (a seeded sample when there are more)
    val_fraction: float = 0.05  # share of questions in val.jsonl (split by question, seeded)
    seed: int = 42  # sampling and split
    system_prompt_file: str = ""  # system message of every row ("" = vigorl's single-turn RL prompt of the task)
    mode: str = "single_turn"  # whose RL system prompt: single_turn | multi_turn


def _split(ids: list[str], fraction: float, seed: int) -> set[str]:
    rng = random.Random(seed)
    order = sorted(ids)
    rng.shuffle(order)
    n_val = 0 if len(order) < 2 else max(1, round(fraction * len(order))) if fraction > 0 else 0
    return set(order[:n_val])


def linearize(trees_path: str | Path, out_dir: str | Path, cfg: LinearizeConfig = LinearizeConfig()) -> dict:
    """Write OUT_DIR/train.jsonl and val.jsonl; returns counts."""
    from data_gen.prompts import system_prompt
    from rewards import is_multi_turn

    trees = read_trees(Path(trees_path))
    if not trees:
        raise ValueError(f"{trees_path}: no trees to linearize")
    fixed = None
    if cfg.system_prompt_file:
        from data_gen.prompts import read_system_prompt

        fixed = read_system_prompt(cfg.system_prompt_file)
    val = _split([t["question_id"] for t in trees], cfg.val_fraction, cfg.seed)
    counts = {"questions": len(trees), "no_correct_rollout": 0, "chains": 0, "duplicates": 0, "capped": 0,
              "train": 0, "val": 0}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "train.jsonl", "w") as ftrain, open(out / "val.jsonl", "w") as fval:
        for t in trees:
            chains = [c for n in t["nodes"] for c in node_chains(n)]
            if not chains:
                counts["no_correct_rollout"] += 1
                continue
            unique = list(dict.fromkeys(chains))
            counts["duplicates"] += len(chains) - len(unique)
            if len(unique) > cfg.max_per_question:
                counts["capped"] += len(unique) - cfg.max_per_question
                unique = random.Random(f"{cfg.seed}/{t['question_id']}").sample(unique, cfg.max_per_question)
            system = fixed or system_prompt(t["task"], is_multi_turn(cfg.mode))
            split = "val" if t["question_id"] in val else "train"
            f = fval if split == "val" else ftrain
            image = _copy_image(t["image"], out)
            for chain in unique:
                f.write(json.dumps(sft_row(system, t, chain, [image])) + "\n")
            counts["chains"] += len(unique)
            counts[split] += len(unique)
    return counts


def sft_row(system: str, tree: dict, assistant: str | list[dict], images: list[str] | None = None) -> dict:
    """A sharegpt row: system, user (`<image>` + question), then the assistant turn(s)."""
    turns = [{"role": "assistant", "content": assistant}] if isinstance(assistant, str) else assistant
    return {"messages": [{"role": "system", "content": system},
                         {"role": "user", "content": "<image>" + tree["question"]}] + turns,
            "images": images or [tree["image"]], "gt_answer": tree["gold"], "question_id": tree["question_id"],
            "task": tree["task"], "image_size": tree.get("image_size")}


# ---- multi-turn conversion ----------------------------------------------------------------------------
# After the released `convert_chain_to_dialogue`, rewritten here
# (Gabesarch/grounded-rl@e7970c0:scripts/mcts/build_reasoning_chains_from_mcts_multiturn.py).

_NUM = r"(\d+\.?\d*|\.\d+)"  # the released `[\d.]+`, limited to what float() reads
_COORD = re.compile(rf"\(\s*{_NUM}\s*,\s*{_NUM}\s*\)")
_SENTENCE_END = re.compile(r"[.!?](?:\s|$)")
_CHAIN = re.compile(r"<think>(.*?)</think>\s*<answer>(.*?)</answer>", re.S)


@dataclass
class MultiTurnConfig:
    """`vigorl to-multiturn IN_DIR OUT_DIR`: single-turn chains -> multi-turn zoom dialogues (docs/algorithm.md §6)."""

    half_size: int = 182  # crop half side o (docs/algorithm.md §3: web grounding SFT 100, V* 182)
    out_size: int = 672  # crop side r (web grounding SFT 512, V* 672)
    dot: bool = False  # red dot at the zoom point (web grounding: true)
    max_calls: int = 5  # tool calls per dialogue
    shuffle_prob: float = 0.2  # chance that the first (call, observation) pair is moved later
    # the full image is resized as the released converter does (qwen-vl-utils fetch_image with these bounds:
    # smart_resize, factor 28, bicubic), so a small image is up-scaled to about 2.7 MP; coordinates follow
    min_pixels: int = 2_700_000
    max_pixels: int = 2_850_000
    seed: int = 42  # the shuffle
    system_prompt_file: str = ""  # system message ("" = vigorl's multi-turn RL prompt of the task)


def scale_coords(text: str, sx: float, sy: float) -> str:
    """Every `(x, y)` of `text` rewritten as `(int(x * sx), int(y * sy))` (truncated, per axis); the text is
    left as written when both scales are 1 (the released `extract_coordinates`)."""
    if sx == 1.0 and sy == 1.0:
        return text
    return _COORD.sub(lambda m: f"({int(float(m.group(1)) * sx)}, {int(float(m.group(2)) * sy)})", text)


def _point(m: re.Match) -> tuple[int, int]:
    return int(float(m.group(1))), int(float(m.group(2)))


def dialogue(chain: str, frame: tuple[int, int], target: tuple[int, int], cfg: MultiTurnConfig,
             rng: random.Random) -> tuple[list[dict], list[tuple[int, int]]] | None:
    """Assistant/observation turns of one chain, as the released converter builds them. Every coordinate of
    the chain is scaled from `frame` to `target` first (think text and answer alike). Per coordinate of the
    think text, the text since the last one up to the end of its sentence is added to the pending reasoning;
    a new point (at most `max_calls`) then closes a think turn holding that reasoning with a tool call,
    followed by the observation. The answer's coordinates come last (the released converter finds them in the
    whole chain): a GUI answer point is zoomed on before answering, its think turn the think text left after
    the last sentence with a point, then the point. Then the fixed final turn; a coordinate answer is written
    `(x, y)`. Returns (turns, zoom points), or None when the chain has no answer; raises _OutsideImage when a
    zoomed point lies outside the image (x > W or y > H)."""
    m = _CHAIN.search(chain)
    if m is None:
        return None
    sx, sy = target[0] / frame[0], target[1] / frame[1]
    text, answer = scale_coords(m.group(1), sx, sy).strip(), scale_coords(m.group(2), sx, sy).strip()
    if (a := _COORD.fullmatch(answer)) is not None:
        answer = "({}, {})".format(*_point(a))
    spots, cursor = [], 0  # (point or None, its reasoning chunk) in text order
    for c in _COORD.finditer(text):
        end = _SENTENCE_END.search(text, c.end())
        stop = end.end() if end else len(text)
        # text since the cursor (none when the point sits in the sentence already taken) to the sentence end
        spots.append((_point(c), (text[cursor:c.start()] + text[c.start():stop]).strip()))
        cursor = max(cursor, stop)
    answer_points = list(_COORD.finditer(answer))
    if answer_points:
        # the released chunk of the answer point is the rest of the think text, the tags and the point; the
        # tags are left out here (taken literally they would put "<answer> (x, y) </answer>" in the think)
        spots.append((None, text[cursor:].strip()))
        spots += [(_point(c), c.group(0)) for c in answer_points]
    turns, points, pending = [], [], ""
    before, after = observation_text(cfg.dot)
    for point, chunk in spots:
        if chunk:
            pending = f"{pending}\n\n{chunk}" if pending else chunk
        if point is None or point in points or len(points) >= cfg.max_calls:
            continue
        if not (0 <= point[0] <= target[0] and 0 <= point[1] <= target[1]):
            raise _OutsideImage
        points.append(point)
        call = json.dumps({"name": "search_coordinate", "arguments": {"coordinate": list(point)}})
        turns.append({"role": "assistant", "content": f"<think> {pending} </think>\n<tool_call>\n{call}\n</tool_call>"})
        turns.append({"role": "user", "content": f"{before}<image>{after}"})
        pending = ""
    turns.append({"role": "assistant", "content": f"{FORCED_ANSWER_PREFIX} {answer} </answer>"})
    if len(points) >= 2 and rng.random() < cfg.shuffle_prob:
        # the released converter: take the first (call, observation) pair out and put it back after 0 .. k-2
        # of the other pairs (0 leaves it where it was; it never goes after the last pair)
        slot = rng.randrange(len(points) - 1)
        pair, pt = turns[:2], points[0]
        turns = turns[2:2 + 2 * slot] + pair + turns[2 + 2 * slot:]
        points = points[1:1 + slot] + [pt] + points[1 + slot:]
    return turns, points


class _OutsideImage(Exception):
    pass


def to_multiturn(in_dir: str | Path, out_dir: str | Path, cfg: MultiTurnConfig = MultiTurnConfig()) -> dict:
    """Convert IN_DIR/{train,val}.jsonl (linearised chains) into OUT_DIR/{train,val}.jsonl multi-turn rows; the
    resized full image and every crop are saved once under OUT_DIR/images/ by content hash."""
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    from data_gen.prompts import system_prompt
    from data_gen.images import load_rgb, resolve_under

    fixed = None
    if cfg.system_prompt_file:
        from data_gen.prompts import read_system_prompt

        fixed = read_system_prompt(cfg.system_prompt_file)
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    counts = {"rows": 0, "written": 0, "outside_image": 0, "no_answer": 0}
    rng = random.Random(cfg.seed)
    full_cache: dict[str, tuple] = {}
    for split in ("train", "val"):
        src = Path(in_dir) / f"{split}.jsonl"
        if not src.is_file():
            raise FileNotFoundError(f"{src}: no linearised chains (run `vigorl linearize` first)")
        with open(src) as fin, open(out / f"{split}.jsonl", "w") as fout:
            for number, line in enumerate(fin, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    chain, image_path = row["messages"][-1]["content"], row["images"][0]
                except (ValueError, KeyError, IndexError, TypeError) as e:
                    raise ValueError(f"{src} line {number}: not a linearised row ({type(e).__name__}: {e})") from None
                counts["rows"] += 1
                if image_path not in full_cache:
                    img = load_rgb(resolve_under(in_dir, image_path))
                    full = resize_for_model(img, cfg.min_pixels, cfg.max_pixels)
                    full_cache[image_path] = (full, _save(full, out), img.size)
                full, full_file, original = full_cache[image_path]
                frame = tuple(row.get("image_size") or original)
                try:
                    conv = dialogue(chain, frame, full.size, cfg, rng)
                except _OutsideImage:
                    counts["outside_image"] += 1
                    continue
                if conv is None:
                    counts["no_answer"] += 1
                    continue
                turns, points = conv
                crops = [_save(crop(full, p, cfg.half_size, cfg.out_size, cfg.dot), out) for p in points]
                system = fixed or system_prompt(row.get("task", ""), True)
                tree = {"question": row["messages"][1]["content"].removeprefix("<image>"),
                        "gold": row["gt_answer"], "question_id": row["question_id"], "task": row.get("task", ""),
                        "image": full_file, "image_size": list(full.size)}
                fout.write(json.dumps(sft_row(system, tree, turns, [full_file] + crops)) + "\n")
                counts["written"] += 1
    return counts


def _save(image, out: Path) -> str:
    """Save once as out/images/<sha256 of the PNG>.png; returns the path relative to `out`."""
    import io

    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return _store(buf.getvalue(), ".png", out)


def _copy_image(path: str, out: Path) -> str:
    """The original image file, stored once under out/images/ by content hash; the path relative to `out`."""
    src = Path(path)
    if not src.is_file():
        raise FileNotFoundError(f"{src}: image of a tree not found")
    return _store(src.read_bytes(), src.suffix.lower() or ".png", out)


def _store(data: bytes, suffix: str, out: Path) -> str:
    rel = f"images/{hashlib.sha256(data).hexdigest()[:32]}{suffix}"
    (out / "images").mkdir(parents=True, exist_ok=True)
    if not (out / rel).is_file():
        (out / rel).write_bytes(data)
    return rel
