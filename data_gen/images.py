"""Safe image loading for datasets: confined to the dataset root, bombs refused, any mode -> RGB.

Every failure is an `ImageError` that names the file and what is wrong with it.
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from contextlib import contextmanager
from pathlib import Path

from PIL import Image

# Refuse images over this many pixels outright (PIL's own default warns at ~89 Mpx and raises at 2x).
# 50 Mpx covers 4K/8K screenshots (ScreenSpot-Pro is up to 5120x2880 = 14.7 Mpx) with room to spare.
MAX_IMAGE_PIXELS = 50_000_000


class ImageError(ValueError):
    pass


# Images that a dataset carries as bytes (HF `Image` structs, raw bytes) are written once, named by the sha256 of
# their bytes, under this dir, and referenced as "sha256:<hex>" (ImageRef.source): content-addressed, so every
# command and run shares them and a re-read writes nothing. On a multi-node cluster point it at storage every
# node reads (as data.path must be), or keep images as files.
IMAGE_CACHE_ENV = "VIGORL_IMAGE_CACHE"
_SHA256 = re.compile(r"sha256:([0-9a-f]{64})")


def image_cache() -> Path:
    """$VIGORL_IMAGE_CACHE, else $VIGORL_CACHE/images, else ~/.cache/vigorl/images."""
    if os.environ.get(IMAGE_CACHE_ENV):
        return Path(os.environ[IMAGE_CACHE_ENV]).expanduser()
    return Path(os.environ.get("VIGORL_CACHE") or Path.home() / ".cache" / "vigorl").expanduser() / "images"


def store_image(data: bytes) -> str:
    """Write an embedded image's bytes once into `image_cache()` (atomically: a reader never sees half a file);
    returns its source "sha256:<hex>", which `resolve_under` maps back to the file."""
    digest = hashlib.sha256(data).hexdigest()
    path = image_cache() / digest
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{digest}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    return f"sha256:{digest}"


def resolve_under(root: str | Path, relative: str) -> Path:
    """`root / relative`, refusing a path that escapes root (absolute paths, `..`, symlinks out). A "sha256:<hex>"
    source (an embedded image, `store_image`) is its file in `image_cache()`, whatever the root."""
    if not isinstance(relative, str) or not relative:
        raise ImageError(f"image path must be a non-empty string, got {relative!r}")
    if relative.startswith("sha256:"):
        m = _SHA256.fullmatch(relative)
        if m is None:
            raise ImageError(f"image source {relative!r} is not sha256:<64 hex digits>")
        return image_cache() / m.group(1)
    root_r = Path(root).resolve()
    path = (root_r / relative).resolve()
    if not path.is_relative_to(root_r):
        raise ImageError(f"image path {relative!r} escapes the dataset root {root_r}")
    return path


@contextmanager
def _opened(path: str | Path, max_pixels: int):
    """The image at `path`, opened (not decoded) with its size checked against `max_pixels`; any PIL failure,
    in here or in the caller's block (a decode), becomes an ImageError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: image file not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
                if w * h > max_pixels:
                    raise ImageError(f"{path}: {w}x{h} = {w * h} pixels is over the {max_pixels} limit "
                                     "(decompression bomb?)")
                yield im
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"{path}: refused as a decompression bomb: {e}") from None
    except (OSError, SyntaxError, ValueError) as e:  # PIL reports corrupt data as these
        raise ImageError(f"{path}: corrupt, truncated or not an image: {e}") from None


def load_rgb(path: str | Path, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Open, fully decode and convert to RGB (alpha composited on white). Raises ImageError."""
    with _opened(path, max_pixels) as im:
        im.load()  # decode now: truncated files fail here, not later in a worker
        return to_rgb(im)


def policy_image(root: str | Path, relative: str, min_pixels: int | None = None,
                 max_pixels: int | None = None) -> Image.Image:
    """The image as the policy sees it: the dataset's file `relative` under `root` (confined, bombs refused, RGB),
    smart-resized to the model's pixel budget (docs/algorithm.md §3). Points are read on this image; the rollout
    actors, the MCTS teacher, the demo, benchmarks and tests all load a prompt's image through here.
    `min_pixels` / `max_pixels`: the model's budget (None: qwen-vl-utils' defaults)."""
    from data_gen.geometry import MAX_PIXELS, MIN_PIXELS, resize_for_model

    return resize_for_model(load_rgb(resolve_under(root, relative)), MIN_PIXELS if min_pixels is None else min_pixels,
                            MAX_PIXELS if max_pixels is None else max_pixels)


def to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB; transparency is composited on white (not on black, which hides dark UIs)."""
    if im.mode == "RGB":
        return im.copy()
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        out = Image.new("RGB", rgba.size, (255, 255, 255))
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        # 16-bit / float grayscale: scale to 8 bit by the image's own range.
        lo, hi = im.getextrema()
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        im = im.point(lambda v: (v - lo) * scale).convert("L")
    return im.convert("RGB")


def image_size(path: str | Path, max_pixels: int = MAX_IMAGE_PIXELS) -> tuple[int, int]:
    """(width, height) from the image file's header, without decoding it (fast on a large dataset; `load_rgb`
    decodes when the pixels are needed). Raises ImageError naming the file: missing, not an image, too big."""
    with _opened(path, max_pixels) as im:
        return im.size
