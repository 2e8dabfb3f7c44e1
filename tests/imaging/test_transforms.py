"""MONAI-based transforms from display pixels to model input."""

from __future__ import annotations

import pytest
import torch
from testsupport import pydicom_file

from radlvlm.errors import InputError
from radlvlm.imaging import ImageTransformConfig, ToModelInput, ToModelInputd, read_image_file


def test_pad_mode_keeps_aspect_and_pads_with_the_normalised_zero() -> None:
    pixels = torch.ones(200, 100)
    out = ToModelInput(ImageTransformConfig(size=64, channels=1, mean=(0.5,), std=(0.25,)))(pixels)
    assert out.shape == (1, 64, 64)
    # 200x100 → 64x32, padded symmetrically by 16 columns each side.
    assert torch.allclose(out[0, :, 16:48], torch.full((64, 32), 2.0))
    assert torch.allclose(out[0, :, :16], torch.full((64, 16), -2.0))
    assert torch.allclose(out[0, :, 48:], torch.full((64, 16), -2.0))


def test_crop_mode_fills_the_square_and_cuts_the_long_side() -> None:
    pixels = torch.zeros(200, 100)
    pixels[:40] = 1.0  # top fifth bright: cut away by the centre crop
    out = ToModelInput(ImageTransformConfig(size=32, resize_mode="crop", channels=1, mean=(0.0,), std=(1.0,)))(pixels)
    assert out.shape == (1, 32, 32)
    assert float(out.max()) == 0.0


def test_rgb_encoder_gets_three_channels_with_per_channel_stats() -> None:
    config = ImageTransformConfig(size=16, channels=3, mean=(0.1, 0.2, 0.3), std=(1.0, 2.0, 4.0))
    out = ToModelInput(config)(torch.full((16, 16), 0.5))
    assert out.shape == (3, 16, 16)
    assert torch.allclose(out[:, 0, 0], torch.tensor([0.4, 0.15, 0.05]))


def test_real_chest_to_518_and_dict_variant() -> None:
    image = read_image_file(pydicom_file("RG1_UNCR.dcm"))
    transform = ToModelInput()
    out = transform(image)
    assert out.shape == (3, 518, 518) and out.dtype == torch.float32
    assert type(out) is torch.Tensor  # plain tensor, not MONAI's MetaTensor
    batch = transform.batch([image, image.pixels])
    assert batch.shape == (2, 3, 518, 518) and torch.equal(batch[0], batch[1])
    data = ToModelInputd(keys="image")({"image": image, "study": "x"})
    assert torch.equal(data["image"], out) and data["study"] == "x"
    with pytest.raises(KeyError):
        ToModelInputd(keys="missing")({"image": image})


@pytest.mark.parametrize(
    "kwargs",
    [
        {"size": 0},
        {"resize_mode": "stretch"},
        {"channels": 2},
        {"mean": (0.1, 0.2)},
        {"std": (0.0,)},
        {"interpolation": "lanczos"},
    ],
)
def test_bad_configs_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(InputError):
        ImageTransformConfig(**kwargs)  # type: ignore[arg-type]


def test_wrong_input_shape_is_refused() -> None:
    with pytest.raises(InputError, match=r"\(3, 8, 8\)"):
        ToModelInput()(torch.zeros(3, 8, 8))


def test_pad_with_the_mean_fills_zero_after_normalisation() -> None:
    config = ImageTransformConfig(size=8, channels=3, mean=(0.4, 0.5, 0.6), std=(0.2, 0.2, 0.2), pad_fill="mean")
    out = ToModelInput(config)(torch.ones(8, 4))
    assert out.shape == (3, 8, 8)
    assert torch.allclose(out[:, :, :2], torch.zeros(3, 8, 2))
    assert torch.allclose(out[:, 0, 4], torch.tensor([3.0, 2.5, 2.0]))


@pytest.mark.parametrize("resize_mode", ["pad", "crop"])
def test_an_image_already_at_the_model_size_is_not_changed_in_place(resize_mode: str) -> None:
    """The classifier and the engine transform the same Image: the first must not normalise it for the second."""
    pixels = torch.rand(1, 32, 32)
    kept = pixels.clone()
    transform = ToModelInput(
        ImageTransformConfig(size=32, resize_mode=resize_mode, channels=1, mean=(0.5,), std=(0.25,))
    )
    first = transform(pixels)
    assert torch.equal(pixels, kept)
    assert torch.equal(transform(pixels), first)
