"""Display-ready pixels → model input tensor, with MONAI transforms, configured per model.

Two geometries: ``pad`` (longest side to ``size``, aspect kept, zero-padded to a square; no anatomy is cut)
and ``crop`` (shortest side to ``size``, centre-cropped to a square, as LLaVA-Rad's preprocessing does).
Then the grayscale channel is repeated to the encoder's channel count and normalised with its mean/std.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import set_track_meta
from monai.transforms import (
    CenterSpatialCrop,
    Compose,
    MapTransform,
    NormalizeIntensity,
    RepeatChannel,
    Resize,
    SpatialPad,
    Transform,
)
from PIL import Image as PILImage

from radlvlm.errors import InputError
from radlvlm.imaging.study import Image

# MONAI's MetaTensor bookkeeping costs ~1.6 ms per chest image and nothing in radlvlm reads it. Its switch is
# process-wide, so it is set once, here, rather than flipped and restored per call, which races between the
# service's threads (one call's restore turning tracking back on under another's transform).
set_track_meta(False)

ResizeMode = Literal["pad", "crop"]
PadFill = Literal["black", "mean"]


@dataclass(frozen=True)
class ImageTransformConfig:
    """How an encoder wants its input.

    Args:
        size (int, default 518): output height and width in pixels.
        resize_mode ("pad" | "crop", default "pad"): keep the whole image and pad, or fill and centre-crop.
        channels (int, default 3): 1 for grayscale encoders, 3 for encoders trained on RGB.
        mean (tuple[float, ...], default (0.5,)): per-channel mean subtracted from [0, 1] pixels (one value or
            one per channel).
        std (tuple[float, ...], default (0.5,)): per-channel divisor after the mean.
        interpolation (str, default "area"): torch interpolation mode; "area" anti-aliases when shrinking.
        pad_fill ("black" | "mean", default "black"): what ``pad`` fills with: black pixels, or the encoder's mean
            (LLaVA's ``image_aspect_ratio="pad"``, which is 0 after normalisation).
        resampler ("monai" | "pil", default "monai"): who resizes. ``pil`` reproduces the preprocessing CLIP and
            open_clip towers were trained with, for converted models: 8-bit pixels, PIL's (anti-aliased)
            resampling, torchvision's crop rounding, LLaVA's ``expand2square`` for ``pad``.
    """

    size: int = 518
    resize_mode: ResizeMode = "pad"
    channels: int = 3
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.5,)
    interpolation: str = "area"
    pad_fill: PadFill = "black"
    resampler: Literal["monai", "pil"] = "monai"

    def __post_init__(self) -> None:
        if self.size < 1:
            raise InputError(f"size must be a positive number of pixels, got {self.size}")
        if self.resize_mode not in ("pad", "crop"):
            raise InputError(f"resize_mode must be 'pad' or 'crop', got {self.resize_mode!r}")
        if self.channels not in (1, 3):
            raise InputError(f"channels must be 1 or 3, got {self.channels}")
        for label, values in (("mean", self.mean), ("std", self.std)):
            if len(values) not in (1, self.channels):
                raise InputError(f"{label} needs 1 or {self.channels} values, got {len(values)}")
        if any(s <= 0 for s in self.std):
            raise InputError(f"std values must be positive, got {self.std}")
        if self.interpolation not in ("area", "bilinear", "bicubic", "nearest", "nearest-exact"):
            raise InputError(f"unknown interpolation {self.interpolation!r}")
        if self.pad_fill not in ("black", "mean"):
            raise InputError(f"pad_fill must be 'black' or 'mean', got {self.pad_fill!r}")
        if self.resampler not in ("monai", "pil"):
            raise InputError(f"resampler must be 'monai' or 'pil', got {self.resampler!r}")
        if self.resampler == "pil" and self.interpolation not in _PIL_FILTERS:
            raise InputError(f"the pil resampler takes {', '.join(_PIL_FILTERS)}, got {self.interpolation!r}")

    def per_channel(self, values: tuple[float, ...]) -> list[float]:
        return list(values) * self.channels if len(values) == 1 else list(values)


_PIL_FILTERS = ("bicubic", "bilinear", "nearest")


def pil_preprocess(pixels: np.ndarray, config: ImageTransformConfig) -> torch.Tensor:
    """Display pixels in [0, 1] → the encoder input a CLIP/open_clip tower was trained on, step for step.

    Those towers saw 8-bit RGB images (the JPEGs of MIMIC-CXR) resized by PIL: ``crop`` is open_clip's and
    CLIP's eval transform (shortest side to ``size`` with the long side truncated as torchvision's ``Resize``
    computes it, then a centre crop with torchvision's rounding); ``pad`` is LLaVA's ``expand2square`` (the
    image centred on a square of the mean colour) before that resize. PIL resamples with anti-aliasing, which
    an interpolating resize does not: on a 2-3k-pixel radiograph the difference is not small.
    """
    resample = {"bicubic": PILImage.BICUBIC, "bilinear": PILImage.BILINEAR, "nearest": PILImage.NEAREST}
    gray = PILImage.fromarray(np.clip(np.round(pixels * 255.0), 0, 255).astype(np.uint8), mode="L")
    picture = gray.convert("RGB")
    size = config.size
    if config.resize_mode == "pad":
        side = max(picture.size)
        fill = tuple(round(255 * m) for m in config.per_channel(config.mean)[:3] * (3 // config.channels))
        square = PILImage.new("RGB", (side, side), fill if config.pad_fill == "mean" else (0, 0, 0))
        square.paste(picture, ((side - picture.width) // 2, (side - picture.height) // 2))
        picture = square
    width, height = picture.size
    target = (size, int(size * height / width)) if width <= height else (int(size * width / height), size)
    picture = picture.resize(target, resample=resample[config.interpolation])
    left = round((picture.width - size) / 2.0)
    top = round((picture.height - size) / 2.0)
    picture = picture.crop((left, top, left + size, top + size))
    array = np.asarray(picture, dtype=np.float32) / 255.0  # (size, size, 3)
    tensor = torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))
    if config.channels == 1:
        tensor = tensor[:1]
    mean = torch.tensor(config.per_channel(config.mean), dtype=torch.float32).view(-1, 1, 1)
    std = torch.tensor(config.per_channel(config.std), dtype=torch.float32).view(-1, 1, 1)
    return (tensor - mean) / std


class ResizeShortestSide(Transform):
    """Resize a channel-first image so its shortest side equals ``size`` (aspect kept)."""

    def __init__(self, size: int, mode: str = "area") -> None:
        self.size = size
        self.mode = mode

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        height, width = int(img.shape[-2]), int(img.shape[-1])
        scale = self.size / min(height, width)
        target = (max(self.size, round(height * scale)), max(self.size, round(width * scale)))
        return Resize(spatial_size=target, mode=self.mode)(img)


class ToModelInput(Transform):
    """(rows, columns) or (1, rows, columns) pixels in [0, 1] → (channels, size, size) float32 tensor."""

    def __init__(self, config: ImageTransformConfig | None = None) -> None:
        self.config = config or ImageTransformConfig()
        c = self.config
        channel = [RepeatChannel(repeats=c.channels)] if c.channels > 1 else []
        normalise = NormalizeIntensity(
            subtrahend=c.per_channel(c.mean), divisor=c.per_channel(c.std), channel_wise=True
        )
        steps: list[Any]
        if c.resize_mode == "crop":
            steps = [ResizeShortestSide(c.size, c.interpolation), CenterSpatialCrop(roi_size=(c.size, c.size))]
            steps += [*channel, normalise]
        else:
            resize = Resize(spatial_size=c.size, size_mode="longest", mode=c.interpolation)
            pad = SpatialPad(spatial_size=(c.size, c.size), mode="constant")
            # Padding after normalisation fills with 0, i.e. the mean; before it, with black.
            steps = [resize, *channel, normalise, pad] if c.pad_fill == "mean" else [resize, pad, *channel, normalise]
        self._pipeline = Compose(steps)

    def __call__(self, img: torch.Tensor | Image) -> torch.Tensor:
        pixels = img.pixels if isinstance(img, Image) else img
        if pixels.ndim == 2:
            pixels = pixels.unsqueeze(0)
        if pixels.ndim != 3 or pixels.shape[0] != 1:
            raise InputError(
                f"expected grayscale pixels (rows, columns) or (1, rows, columns), got {tuple(pixels.shape)}"
            )
        if self.config.resampler == "pil":
            return pil_preprocess(pixels[0].float().numpy(), self.config)
        # A copy: MONAI normalises a float tensor in place, and where no resize makes a new one first (an image
        # already at the model's size) the caller's pixels (an Image shared by the classifier and the engine)
        # would be normalised twice.
        out = self._pipeline(pixels.to(torch.float32, copy=True))
        return out.as_tensor() if hasattr(out, "as_tensor") else torch.as_tensor(out)

    def batch(self, images: Sequence[torch.Tensor | Image]) -> torch.Tensor:
        """Stack several images into (batch, channels, size, size)."""
        return torch.stack([self(image) for image in images])


class ToModelInputd(MapTransform):
    """Dictionary form of ``ToModelInput`` over ``keys`` (MONAI's dict-in, dict-out convention)."""

    def __init__(
        self, keys: KeysCollection, config: ImageTransformConfig | None = None, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = ToModelInput(config)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        out = dict(data)
        for key in self.key_iterator(out):
            out[key] = self.transform(out[key])
        return out
