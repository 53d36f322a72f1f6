"""Safe image loading for datasets: confined to the dataset root, bombs refused, any mode -> RGB.

Every failure is an `ImageError` that names the file and what is wrong with it.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from PIL import Image

# Refuse images over this many pixels outright (PIL's own default warns at ~89 Mpx and raises at 2x).
# 50 Mpx covers 4K/8K screenshots (ScreenSpot-Pro is up to 5120x2880 = 14.7 Mpx) with room to spare.
MAX_IMAGE_PIXELS = 50_000_000


class ImageError(ValueError):
    pass


def resolve_under(root: str | Path, relative: str) -> Path:
    """`root / relative`, refusing a path that escapes root (absolute paths, `..`, symlinks out)."""
    root_r = Path(root).resolve()
    if not isinstance(relative, str) or not relative:
        raise ImageError(f"image path must be a non-empty string, got {relative!r}")
    path = (root_r / relative).resolve()
    if not path.is_relative_to(root_r):
        raise ImageError(f"image path {relative!r} escapes the dataset root {root_r}")
    return path


def load_rgb(path: str | Path, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Open, fully decode and convert to RGB (alpha composited on white). Raises ImageError."""
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
                im.load()  # decode now: truncated files fail here, not later in a worker
                return to_rgb(im)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"{path}: refused as a decompression bomb: {e}") from None
    except (OSError, SyntaxError, ValueError) as e:  # PIL reports corrupt data as these
        raise ImageError(f"{path}: corrupt, truncated or not an image: {e}") from None


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
