"""The evaluation gallery: where the model looked, one picture per item, in one static HTML page.

`write_gallery(items, data_root, out_dir, n)` draws, for up to `n` items (first sample of each; failures
first), the original image with the model's numbered points, its crop boxes and the gold box (green) when
the gold is a box, and the crops in the order they were taken (`actors.picture`). The page
`out_dir/index.html` lists them with the pictures beside it in `out_dir/items/`, each card with the extracted
answer beside the gold and the question and the turns as page text in a block of its own beside (or below)
the picture, wrapped at any width: a small image (the learning proof's 112-px scenes) does not cut it. No
server, no external script or style, every model or dataset text HTML-escaped. A few lines of inline JS filter by subgroup and
by correct / wrong; the filter also reads the URL fragment (`index.html#subgroup=web/icon&result=wrong`),
so a filtered view can be linked.
"""

from __future__ import annotations

import html
from pathlib import Path

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 1em; }}
.item {{ border: 1px solid #ccc; margin: 0 0 1em; padding: .5em; display: flex; flex-wrap: wrap; gap: .5em 1em;
  align-items: flex-start; }} .wrong {{ border-left: 6px solid #d22; }} .correct {{ border-left: 6px solid #2a2; }}
.item.hidden {{ display: none; }} .pic {{ flex: 0 1 auto; max-width: 100%; }} .pic img {{ max-width: 100%; }}
.text {{ flex: 1 1 32em; min-width: min(32em, 100%); overflow-wrap: anywhere; }}
.text .q, .text .turn {{ white-space: pre-wrap; margin: .3em 0; }} .turn {{ font-family: monospace; font-size: 90%; }}
.meta {{ font-size: 90%; color: #333; }} .answer code {{ background: #f3f3f3; white-space: pre-wrap; }}
</style></head>
<body data-items="{n}">
<h1>{title}</h1>
<p>{summary}</p>
<p>Subgroup <select id="subgroup"><option value="">all</option>{options}</select>
Result <select id="result"><option value="">all</option><option value="wrong">wrong</option>
<option value="correct">correct</option></select> <span id="shown">{n}</span> of {n} shown.</p>
{cards}
<script>
const sub = document.getElementById("subgroup"), res = document.getElementById("result");
function apply() {{
  let shown = 0;
  for (const el of document.querySelectorAll(".item")) {{
    const ok = (!sub.value || el.dataset.subgroup === sub.value) && (!res.value || el.dataset.result === res.value);
    el.classList.toggle("hidden", !ok); shown += ok;
  }}
  document.getElementById("shown").textContent = shown;
}}
const want = new URLSearchParams(location.hash.slice(1));
sub.value = want.get("subgroup") || ""; res.value = want.get("result") || "";
sub.onchange = res.onchange = apply; apply();
</script>
</body></html>
"""

CARD = """<div class="item {result}" data-subgroup="{subgroup}" data-result="{result}" id="{anchor}">
<div class="pic"><img src="{src}" alt="{item_id}" loading="lazy"></div>
<div class="text"><div class="meta"><b>{item_id}</b> · {subgroup} · {result} · reward {reward:.3f} (format {fmt:.2f})
· {zooms} zoom(s) · end={end}</div>
<div class="answer">answer: <code>{answer}</code> / gold: <code>{gold}</code></div>
<div class="q">Q: {question}</div>
{turns}</div></div>"""


def _gold_box(gold: str) -> tuple[int, int, int, int] | None:
    from rewards.tasks import parse_box

    try:
        return parse_box(gold)
    except ValueError:  # not a box: a text answer, shown in the caption
        return None


def item_picture(item: dict, data_root: str | Path):
    """The picture of one items.jsonl line: everything in original-image pixels, crops cut from the original
    image at the line's crop boxes (the model saw the same region of its resized image). No text: the page
    shows the question, turns and answers as wrapped text (drawn text would be cut at the picture's width)."""
    from actors.picture import episode_picture
    from data_gen.images import load_rgb, resolve_under

    image = load_rgb(resolve_under(data_root, item["image"]))
    crops = [image.crop(tuple(b)) for b in item["crop_boxes"]]
    points = [tuple(p) for p in (item["tool_calls"] or item["points"])]
    return episode_picture(image, points, [tuple(b) for b in item["crop_boxes"]], crops, [],
                           gold_box=_gold_box(item["gold"]))


def _turns(item: dict) -> str:
    """The model's turns as escaped text blocks, numbered."""
    from actors.rollout import split_turns

    return "\n".join(f'<div class="turn">turn {i + 1}: {_e(t)}</div>'
                     for i, t in enumerate(split_turns(item.get("response") or "")))


def _e(v) -> str:
    """Model and dataset text is never markup: escaped for an HTML text node or attribute."""
    return html.escape(str(v), quote=True)


def write_gallery(items: list[dict], data_root: str | Path, out_dir: str | Path, n: int,
                  title: str = "vigorl eval", summary: dict | None = None) -> Path:
    """Draw up to `n` items (sample 0 of each, failures first, then in file order) into out_dir/items/ and
    write out_dir/index.html; returns the page's path."""
    out = Path(out_dir)
    (out / "items").mkdir(parents=True, exist_ok=True)
    first = [x for x in items if x.get("sample", 0) == 0]
    chosen = sorted(first, key=lambda x: x["correct"])[:n]  # stable: failures first, file order within
    cards = []
    for k, item in enumerate(chosen):
        src = f"items/{k:04d}.png"
        item_picture(item, data_root).save(out / src)
        cards.append(CARD.format(result="correct" if item["correct"] else "wrong", subgroup=_e(item["subgroup"]),
                                 anchor=f"item-{k}", src=src, item_id=_e(item["item_id"]),
                                 answer="(none)" if item.get("answer") is None else _e(item["answer"]),
                                 gold=_e(item["gold"]), reward=item["reward"]["overall"],
                                 fmt=item["reward"].get("format", 0.0), zooms=len(item["tool_calls"]),
                                 end=_e(item["end"]), question=_e(item["question"]), turns=_turns(item)))
    groups = sorted({x["subgroup"] for x in chosen})
    options = "".join(f'<option value="{html.escape(g, quote=True)}">{html.escape(g)}</option>' for g in groups)
    o = (summary or {}).get("overall", {})
    text = (f"{o.get('n', len(first))} items scored, accuracy {o['accuracy']:.3f} {tuple(o['accuracy_ci95'])}, "
            f"format rate {o['format_rate']:.3f}; {len(chosen)} drawn, failures first." if o else
            f"{len(chosen)} items drawn, failures first.")
    page = PAGE.format(title=html.escape(title), n=len(chosen), summary=html.escape(text), options=options,
                       cards="\n".join(cards))
    (out / "index.html").write_text(page, encoding="utf-8")
    return out / "index.html"
