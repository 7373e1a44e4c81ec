"""A faster, bit-identical form of open_clip's evaluation transform for photos.

open_clip's ``image_transform_v2`` (``is_train=False``, ``resize_mode="longest"``) is a ``Compose`` of
``ResizeKeepRatio`` → ``CenterCropOrPad(fill)`` → ``MaybeConvertMode`` → ``MaybeToTensor`` → ``Normalize``:
five passes, each allocating a new image or tensor. :class:`Letterbox` does the same in one resize, one
paste onto a canvas of the fill colour and one normalisation, with the same arithmetic in the same order,
so its tensors are equal to the transform's element for element (tested on real photos) and the feature
cache key (which hashes the preprocessing configuration) stays what it was.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from open_clip.transform import CenterCropOrPad, MaybeConvertMode, MaybeToTensor, ResizeKeepRatio
from PIL import Image
from torchvision.transforms import Compose, InterpolationMode, Normalize

_PIL_MODES = {
    InterpolationMode.BICUBIC: Image.Resampling.BICUBIC,
    InterpolationMode.BILINEAR: Image.Resampling.BILINEAR,
    InterpolationMode.NEAREST: Image.Resampling.NEAREST,
    InterpolationMode.LANCZOS: Image.Resampling.LANCZOS,
}


class Letterbox:
    """``PIL.Image`` → (3, H, W) float32 tensor: resized to fit (H, W) keeping its aspect ratio, centred
    on a canvas of ``fill``, scaled to [0, 1], then ``(x - mean) / std`` per channel.

    An image that is not RGB goes through ``fallback`` (the open_clip transform itself), which resizes
    in the image's own mode first: converting before resizing would change a palette image's pixels.
    """

    def __init__(
        self,
        size: tuple[int, int],
        resample: Image.Resampling,
        fill: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        fallback: Callable[[Image.Image], torch.Tensor],
    ):
        self.size, self.resample, self.fill = size, resample, fill
        self.mean = torch.tensor(mean, dtype=torch.float32)[:, None, None]
        self.std = torch.tensor(std, dtype=torch.float32)[:, None, None]
        self.fallback = fallback

    def __call__(self, image: Image.Image) -> torch.Tensor:
        if image.mode != "RGB":
            return self.fallback(image)
        th, tw = self.size
        w, h = image.size
        ratio = max(h / th, w / tw)  # ResizeKeepRatio.get_params with longest=1
        nh, nw = round(h / ratio), round(w / ratio)
        resized = image.resize((nw, nh), self.resample)
        canvas = Image.new("RGB", (tw, th), (self.fill,) * 3)
        canvas.paste(resized, ((tw - nw) // 2, (th - nh) // 2))  # center_crop_or_pad's left/top padding
        x = torch.from_numpy(np.array(canvas, np.uint8)).permute(2, 0, 1).contiguous()
        return x.to(torch.float32).div(255).sub_(self.mean).div_(self.std)

    def __repr__(self) -> str:
        return f"Letterbox(size={self.size}, fill={self.fill}, fallback={type(self.fallback).__name__})"


def letterbox_for(transform: Callable) -> Letterbox | None:
    """The :class:`Letterbox` equal to ``transform``, or None when it is not open_clip's evaluation
    transform with ``resize_mode="longest"`` and no random scaling (then use ``transform`` as it is)."""
    steps = getattr(transform, "transforms", None)
    if not isinstance(transform, Compose) or [type(s) for s in steps or []] != [
        ResizeKeepRatio,
        CenterCropOrPad,
        MaybeConvertMode,
        MaybeToTensor,
        Normalize,
    ]:
        return None
    resize, pad, mode, _, norm = steps
    fill = pad.fill
    if (
        resize.longest != 1.0
        or resize.random_scale_prob
        or resize.random_aspect_prob
        or tuple(resize.size) != tuple(pad.size)
        or resize.interpolation not in _PIL_MODES
        or mode.mode != "RGB"
        or not isinstance(fill, int)
    ):
        return None
    return Letterbox(
        tuple(pad.size), _PIL_MODES[resize.interpolation], fill, tuple(norm.mean), tuple(norm.std), transform
    )


__all__ = ["Letterbox", "letterbox_for"]
