"""The evaluation gallery on hand-made item lines over a real image: pictures drawn, failures first, model
text escaped, the extracted answer beside the gold, the question and turns wrapped in a text block of their own
(not cut at a small picture's width), and the page's filter and layout checked in headless Chromium."""

import re
from html.parser import HTMLParser

from PIL import Image

from cluster.gallery import write_gallery
from conftest import chromium_dom


def item(i, correct, subgroup, response="<think> at (10, 12) </think>\n<answer> red </answer>"):
    return {"item_id": f"q{i}", "sample": 0, "subgroup": subgroup, "image": "img.png", "image_size": [200, 100],
            "question": "What colour?", "gold": "(5, 5, 60, 40)" if subgroup == "web/icon" else "red",
            "response": response, "answer": "red", "correct": correct, "points": [[10, 12]],
            "tool_calls": [[30, 20]] if i % 2 else [], "crop_boxes": [[0, 0, 80, 60]] if i % 2 else [],
            "reward": {"overall": float(correct), "format": 1.0}, "end": "answer"}


def test_gallery_page_pictures_and_filters(tmp_path):
    Image.new("RGB", (200, 100), (250, 250, 250)).save(tmp_path / "img.png")
    items = [item(0, True, "web/icon"), item(1, False, "web/text"), item(2, True, "web/text"),
             item(3, False, "web/icon", response="<script>alert(1)</script> & <b>bold</b>")]
    items[3]["answer"] = '<img src=x onerror="alert(1)">'  # model text in a card is escaped, never markup
    page = write_gallery(items, tmp_path, tmp_path / "gallery", n=3)
    src = page.read_text()
    assert "<script>alert(1)" not in src and "<img src=x" not in src and "&lt;img src=x onerror=&quot;" in src
    cards = re.findall(r'<div class="item (\w+)" data-subgroup="([^"]+)"', src)
    assert cards == [("wrong", "web/text"), ("wrong", "web/icon"), ("correct", "web/icon")]  # failures first
    for png in sorted((tmp_path / "gallery" / "items").glob("*.png")):
        assert Image.open(png).width > 200
    assert len(list((tmp_path / "gallery" / "items").glob("*.png"))) == 3

    dom = chromium_dom(page)
    assert len(re.findall(r'class="item (wrong|correct)"', dom)) == 3 and '<span id="shown">3</span>' in dom
    dom = chromium_dom(page, "result=wrong&subgroup=web/icon")
    assert '<span id="shown">1</span>' in dom
    assert len(re.findall(r'class="item \w+ hidden"', dom)) == 2


class Blocks(HTMLParser):
    """For each text the page shows, the classes of the elements around it, and whether one of them also holds
    the picture."""

    VOID = {"img", "br", "meta", "input", "link"}

    def __init__(self):
        super().__init__()
        self.stack, self.texts = [], []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            for el in self.stack:
                el["img"] = True
        elif tag not in self.VOID:
            self.stack.append({"tag": tag, "cls": dict(attrs).get("class") or "", "img": False})

    def handle_endtag(self, tag):
        if tag not in self.VOID and self.stack:
            self.stack.pop()

    def handle_data(self, data):
        if data.strip():
            self.texts.append((data, list(self.stack)))

    def around(self, needle):
        return [st for d, st in self.texts if needle in d]


def test_small_picture_text_wraps_beside_it_and_answer_is_shown(tmp_path):
    """A 112-px scene (the learning proof's): the question and the turns are page text in a `.text` block that
    holds no picture, with a width of its own and wrapping anywhere; each card shows answer / gold."""
    Image.new("RGB", (112, 112), (250, 250, 250)).save(tmp_path / "img.png")
    long_q = "Which object is left of the " + "very " * 60 + "small blue square?"
    unbroken = "x" * 400  # no space to break at: overflow-wrap:anywhere still wraps it
    items = [item(0, False, "scene", response=f"<think> at (10, 12) {unbroken} </think>\n<answer> red </answer>"),
             item(1, True, "scene")]
    for x in items:
        x.update(image_size=[112, 112], question=long_q, gold="blue square")
    items[0]["answer"] = None  # the judge extracted nothing
    page = write_gallery(items, tmp_path, tmp_path / "gallery", n=2)
    src = page.read_text()
    assert "answer: <code>(none)</code> / gold: <code>blue square</code>" in src
    assert "answer: <code>red</code> / gold: <code>blue square</code>" in src
    blocks = Blocks()
    blocks.feed(src)
    for needle, count in (("Q: Which object", 2), (unbroken, 1)):
        stacks = blocks.around(needle)
        assert len(stacks) == count
        for stack in stacks:  # html > body > div.item (flex, no width) > div.text > ...: no picture on the way
            assert [el["cls"].split()[0] for el in stack[2:4]] == ["item", "text"]
            assert not any(el["img"] for el in stack[3:]) and not any(el["cls"] == "pic" for el in stack)
    css = re.search(r"<style>(.*)</style>", src, re.S).group(1)
    text_rule = re.search(r"\.text \{([^}]*)\}", css).group(1)
    assert "overflow-wrap: anywhere" in text_rule and "min-width" in text_rule
    assert re.search(r"\.text \.q, \.text \.turn \{[^}]*white-space: pre-wrap", css)
    assert "width" not in re.search(r"\.item \{([^}]*)\}", css).group(1)  # nothing sizes a card to its picture

    # layout in Chromium: each text block is wider than the picture and nothing in it overflows
    probe = page.with_name("probe.html")
    probe.write_text(src.replace("</body>", """<script>
document.body.dataset.layout = JSON.stringify([...document.querySelectorAll(".text")].map(t => [
  t.getBoundingClientRect().width,
  Math.max(...[t, ...t.querySelectorAll("div")].map(e => e.scrollWidth - e.clientWidth))]));
</script></body>"""))
    dom = chromium_dom(probe)
    layout = __import__("json").loads(re.search(r'data-layout="([^"]*)"', dom).group(1).replace("&quot;", '"'))
    png_width = Image.open(tmp_path / "gallery" / "items" / "0000.png").width
    assert len(layout) == 2 and png_width < 400
    for width, overflow in layout:
        assert width > png_width and overflow <= 0
