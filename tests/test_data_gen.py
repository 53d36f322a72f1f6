"""Synthetic tasks (deterministic, truthful), prompt rows, safe image loading on bad input."""

import io
import json
import struct
import zlib

import pytest
from PIL import Image

from data_gen.formats import read_rows
from data_gen.images import ImageError, load_rgb, resolve_under
from data_gen.rows import PromptRow, gold_for_model, scale_box_gold, write_rows
from data_gen.synthetic import COLORS, GENERATORS, make_dataset
from rewards.tasks import TASKS, parse_box


@pytest.mark.parametrize("task", sorted(GENERATORS))
def test_generators_are_deterministic_and_valid(task, tmp_path):
    a = make_dataset(task, 3, seed=7, out=tmp_path / "a", progress=False)
    b = make_dataset(task, 3, seed=7, out=tmp_path / "b", progress=False)
    c = make_dataset(task, 3, seed=8, out=tmp_path / "c", progress=False)
    assert [r.gold for r in a] == [r.gold for r in b] and [r.question for r in a] == [r.question for r in b]
    for ra, rb in zip(a, b):
        assert (tmp_path / "a" / ra.image).read_bytes() == (tmp_path / "b" / rb.image).read_bytes()
    assert [r.question for r in a] != [r.question for r in c]
    rows = read_rows(tmp_path / "a")
    assert rows == a
    for r in rows:
        assert r.source == f"synthetic/{task}" and r.task in TASKS
        assert r.width % 28 == 0 and r.height % 28 == 0  # the model sees them unresized


def test_visual_search_gold_is_the_target_colour(tmp_path):
    for r in make_dataset("visual_search", 5, seed=1, out=tmp_path, progress=False):
        meta = json.loads(r.meta)
        x0, y0, x1, y1 = meta["box"]
        img = Image.open(tmp_path / r.image)
        centre = img.getpixel(((x0 + x1) // 2, (y0 + y1 * 3) // 4))  # low centre: inside every shape
        assert centre == COLORS[r.gold], (r.prompt_id, centre)
        assert x1 - x0 <= 14 and r.gold in r.options and len(r.options) == 4


def test_gui_gold_box_holds_its_label(tmp_path):
    for r in make_dataset("gui_grounding", 4, seed=2, out=tmp_path, progress=False):
        x1, y1, x2, y2 = parse_box(r.gold)
        assert 0 <= x1 < x2 <= r.width and 0 <= y1 < y2 <= r.height
        assert json.loads(r.meta)["label"] in r.question
        img = Image.open(tmp_path / r.image).convert("RGB")
        inside = img.crop((x1 + 3, y1 + 3, x2 - 3, y2 - 3))
        assert inside.getextrema()[0][0] < 60  # the dark label text is inside the box


def test_spatial_gold_matches_geometry(tmp_path):
    for r in make_dataset("spatial", 6, seed=3, out=tmp_path, progress=False):
        (ax, ay), (bx, by) = json.loads(r.meta)["centres"][:2]
        truth = {"left of": ax < bx, "right of": ax > bx, "above": ay < by, "below": ay > by}
        assert truth[r.gold] and sorted(r.options) in (["left of", "right of"], ["above", "below"])


def test_object_colour_gold_is_the_named_shapes_colour(tmp_path):
    for r in make_dataset("object_colour", 12, seed=3, out=tmp_path, progress=False):
        meta = json.loads(r.meta)
        x0, y0, x1, y1 = meta["box"]
        img = Image.open(tmp_path / r.image).convert("RGB")
        assert img.getpixel(((x0 + x1) // 2, (y0 + y1 * 3) // 4)) == COLORS[r.gold]  # low centre: in every shape
        assert f"the {meta['target']}?" in r.question and (r.width, r.height) == (112, 112)
        others = [o.split()[0] for o in meta["objects"][1:]]  # distractors' colours are options too
        assert len(r.options) == 4 and r.gold in r.options and set(others) <= set(r.options) - {r.gold}


def test_web_action_gold_targets_an_element(tmp_path):
    for r in make_dataset("web_action", 8, seed=4, out=tmp_path, progress=False):
        ids = {e[0] for e in json.loads(r.meta)["elements"]}
        if r.gold.startswith(("click", "type")):
            assert int(r.gold.split("[")[1].split("]")[0]) in ids


def test_make_data_cli(tmp_path):
    from cluster.cli import main

    assert main(["make-data", "--task", "spatial", "--n", "2", "--seed", "0", str(tmp_path)]) == 0
    assert len(read_rows(tmp_path)) == 2
    with pytest.raises(SystemExit):
        main(["make-data", "--task", "nope", "--n", "2", str(tmp_path)])


def row(**kw):
    base = dict(prompt_id="p1", task="gui_grounding", image="a.png", width=100, height=50, question="q",
                gold="(1, 2, 3, 4)")
    base.update(kw)
    return PromptRow(**base)


@pytest.mark.parametrize("kw,msg", [
    (dict(question=""), "field 'question' is missing"),
    (dict(gold="(3, 4, 1, 2)"), "field 'gold'.*x2 < x1"),
    (dict(width=0), "'width'/'height' must be positive"),
    (dict(task="spatial", gold="left", options=["right", "up"]), "not one of the options"),
    (dict(task="nope"), "unknown task"),
])
def test_row_validation_names_row_and_field(kw, msg):
    with pytest.raises(ValueError, match=msg):
        row(**kw).validate()


def test_write_rows_refuses_duplicates(tmp_path):
    with pytest.raises(ValueError, match="unique"):
        write_rows([row(), row()], tmp_path)


def test_box_gold_scaled_to_model_frame():
    assert scale_box_gold("(10, 20, 30, 41)", (100, 100), (50, 200)) == "(5, 40, 15, 82)"
    assert gold_for_model(row(gold="(1, 1, 3, 3)"), (200, 100)) == "(2, 2, 6, 6)"
    assert gold_for_model(row(task="spatial", gold="x"), (200, 100)) == "x"


# ---- images: bad input ---------------------------------------------------------------------------------

def png_bytes(img):
    b = io.BytesIO()
    img.save(b, format="PNG")
    return b.getvalue()


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "I;16", "CMYK", "1"])
def test_any_mode_becomes_rgb(mode, tmp_path):
    img = Image.new(mode, (30, 20))
    p = tmp_path / "x.tiff" if mode in ("CMYK", "I;16") else tmp_path / "x.png"
    img.save(p)
    out = load_rgb(p)
    assert out.mode == "RGB" and out.size == (30, 20)


def test_transparent_pixels_become_white(tmp_path):
    Image.new("RGBA", (4, 4), (0, 0, 0, 0)).save(tmp_path / "t.png")
    assert load_rgb(tmp_path / "t.png").getpixel((0, 0)) == (255, 255, 255)


def test_truncated_and_corrupt_images(tmp_path):
    data = png_bytes(Image.effect_noise((64, 64), 50).convert("RGB"))
    (tmp_path / "trunc.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.png").write_bytes(b"not an image at all")
    (tmp_path / "empty.png").write_bytes(b"")
    for name in ("trunc.png", "junk.png", "empty.png"):
        with pytest.raises(ImageError, match=name):
            load_rgb(tmp_path / name)
    with pytest.raises(ImageError, match="not found"):
        load_rgb(tmp_path / "missing.png")


def test_decompression_bomb_refused(tmp_path):
    # A valid PNG header claiming 100,000 x 100,000 pixels: refused before any decoding.
    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    (tmp_path / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    with pytest.raises(ImageError, match="bomb"):
        load_rgb(tmp_path / "bomb.png")


def test_paths_escaping_the_root_are_refused(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "secret.png").write_bytes(b"x")
    (tmp_path / "data" / "link.png").symlink_to(tmp_path / "secret.png")
    for bad in ["../secret.png", "/etc/passwd", "link.png", "sub/../../secret.png"]:
        with pytest.raises(ImageError, match="escapes the dataset root"):
            resolve_under(tmp_path / "data", bad)
    assert resolve_under(tmp_path / "data", "ok/x.png") == (tmp_path / "data" / "ok" / "x.png").resolve()


def test_policy_image_is_the_confined_file_smart_resized(tmp_path):
    """The one loader of "the image as the policy sees it": RGB, both sides multiples of 28 within the budget,
    and confined to the dataset root like every dataset read."""
    from data_gen.images import policy_image

    (tmp_path / "imgs").mkdir()
    Image.new("L", (300, 100), 128).save(tmp_path / "imgs" / "a.png")
    img = policy_image(tmp_path, "imgs/a.png", min_pixels=4 * 28 * 28, max_pixels=64 * 28 * 28)
    assert img.mode == "RGB" and img.size == (308, 112)  # smart_resize(h=100, w=300) = (112, 308)
    with pytest.raises(ImageError):
        policy_image(tmp_path, "../outside.png")


def test_ensure_builds_once_and_keeps_what_is_there(tmp_path, capsys):
    """`ensure_dataset` / `ensure_tiny_model` build when missing (announced with the log prefix) and never
    rebuild or overwrite what a dir already holds."""
    from data_gen.synthetic import ensure_dataset

    out = ensure_dataset("spatial", 2, seed=1, out=tmp_path / "d", log="[t]", progress=False)
    assert "[t] generating 2 synthetic spatial prompts" in capsys.readouterr().out
    before = (out / "prompts.parquet").stat().st_mtime_ns
    assert ensure_dataset("spatial", 5, seed=2, out=tmp_path / "d", log="[t]") == out
    assert (out / "prompts.parquet").stat().st_mtime_ns == before and len(read_rows(out)) == 2
    assert capsys.readouterr().out == ""
