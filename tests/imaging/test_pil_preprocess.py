"""Converted CLIP/open_clip towers get the pixels they were trained on: open_clip's and CLIP's eval transform
(8-bit RGB, PIL bicubic to the shortest side, centre crop) or LLaVA's expand2square, on a real radiograph."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image as PILImage
from testsupport import pydicom_file

from radlvlm.imaging import ImageTransformConfig, ToModelInput, read_image_file

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _reference(pixels: np.ndarray, size: int, pad: bool) -> torch.Tensor:
    """The steps as the towers' own code takes them, written out with PIL and numpy."""
    rgb = PILImage.fromarray(np.clip(np.round(pixels * 255), 0, 255).astype(np.uint8)).convert("RGB")
    if pad:  # LLaVA's expand2square with the image mean colour as background
        side = max(rgb.size)
        background = PILImage.new("RGB", (side, side), tuple(round(255 * m) for m in CLIP_MEAN))
        background.paste(rgb, ((side - rgb.width) // 2, (side - rgb.height) // 2))
        rgb = background
    w, h = rgb.size
    short, long = min(w, h), max(w, h)
    new_long = int(size * long / short)  # torchvision Resize(int): the long side truncated
    rgb = rgb.resize((size, new_long) if w <= h else (new_long, size), PILImage.BICUBIC)
    top, left = round((rgb.height - size) / 2.0), round((rgb.width - size) / 2.0)
    array = np.asarray(rgb.crop((left, top, left + size, top + size)), dtype=np.float32) / 255.0
    array = (array - np.array(CLIP_MEAN, dtype=np.float32)) / np.array(CLIP_STD, dtype=np.float32)
    return torch.from_numpy(array.transpose(2, 0, 1).copy())


@pytest.mark.parametrize("mode", ["crop", "pad"])
def test_the_pil_resampler_matches_the_towers_preprocessing_on_a_real_radiograph(mode: str) -> None:
    image = read_image_file(pydicom_file("RG1_UNCR.dcm"))
    assert min(image.shape) > 1500  # a real detector-sized film, where resampling choices matter
    config = ImageTransformConfig(
        size=518, resize_mode=mode, pad_fill="mean", channels=3, mean=CLIP_MEAN, std=CLIP_STD,
        interpolation="bicubic", resampler="pil",
    )  # fmt: skip
    ours = ToModelInput(config)(image)
    reference = _reference(image.array, 518, pad=mode == "pad")
    assert ours.shape == reference.shape == (3, 518, 518)
    assert float((ours - reference).abs().max()) < 1e-5  # the same operations: equal up to float rounding
    # MONAI's interpolating resize (no anti-aliasing) is not what the tower saw: the reason for the option.
    interpolated = ToModelInput(
        ImageTransformConfig(**{**config.__dict__, "resampler": "monai"})  # type: ignore[arg-type]
    )(image)
    assert float((interpolated - reference).abs().mean()) > 10 * float((ours - reference).abs().mean()) + 1e-3
