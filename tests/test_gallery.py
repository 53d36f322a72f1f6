"""The evaluation gallery on hand-made item lines over a real image: pictures drawn, failures first, model
text escaped, and the page's filter working in headless Chromium."""

import re

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
