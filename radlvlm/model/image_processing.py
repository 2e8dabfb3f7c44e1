"""radlvlm's image processor: a transformers ``BaseImageProcessor`` around the transforms in :mod:`radlvlm.imaging`.

transformers' own image processors start from 8-bit RGB. A radiograph starts as grayscale pixels in [0, 1] after
the DICOM LUTs (often 12-16 bits deep), and radlvlm's encoders want it padded (LLaVA's ``expand2square``) or
cropped by MONAI's resampling, or, for a converted CLIP/open_clip tower, by PIL exactly as it was trained
(``resampler="pil"``). This class wraps those transforms (:class:`~radlvlm.imaging.ImageTransformConfig`,
:class:`~radlvlm.imaging.ToModelInput`) behind transformers' interface, so the processor, ``AutoImageProcessor``,
HF's ``LlavaProcessor`` and vLLM all prepare an image the one way the model was trained on. It is saved in
``preprocessor_config.json`` (or nested in ``processor_config.json``) as ``"image_processor_type":
"RadImageProcessor"``; importing radlvlm registers it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, fields
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image as PILImage
from transformers import AutoImageProcessor, BatchFeature
from transformers.image_processing_utils import BaseImageProcessor

from radlvlm.errors import InputError
from radlvlm.imaging import Image, ImageTransformConfig, ToModelInput
from radlvlm.model.configuration import PooledRadLlavaConfig

__all__ = ["RadImageInput", "RadImageProcessor", "pixels_in_unit_range"]

RadImageInput = Image | torch.Tensor | np.ndarray | PILImage.Image
# PIL modes holding more than 8 bits per pixel, and the value that is white in each.
_DEEP_MODES = {"I;16": 65535.0, "I;16B": 65535.0, "I;16L": 65535.0, "I;16N": 65535.0}
# Keys transformers writes beside an image processor's own settings; they are not settings.
_META_KEYS = ("image_processor_type", "processor_class", "auto_map", "_processor_class")


class RadImageProcessor(BaseImageProcessor):
    """Radiograph → ``pixel_values`` of shape (channels, size, size), normalised as the encoder wants.

    Args:
        size, resize_mode, channels, interpolation, pad_fill, resampler: as :class:`ImageTransformConfig`.
        image_mean, image_std (sequence of float): per-channel mean and divisor (transformers' names).
    """

    model_input_names: ClassVar[list[str]] = ["pixel_values"]

    def __init__(
        self,
        size: int = 518,
        resize_mode: str = "pad",
        channels: int = 3,
        image_mean: Sequence[float] = (0.5,),
        image_std: Sequence[float] = (0.5,),
        interpolation: str = "area",
        pad_fill: str = "black",
        resampler: str = "monai",
        **kwargs: Any,
    ) -> None:
        for key in _META_KEYS:
            kwargs.pop(key, None)
        if kwargs:
            # An unknown setting is most likely a typo or a newer format; ignoring it would preprocess differently.
            raise InputError(f"RadImageProcessor has no setting(s) {', '.join(sorted(kwargs))}")
        super().__init__()
        if isinstance(size, dict):  # transformers' {"height": h, "width": w} form, as some tools write it
            size = int(size.get("height") or size.get("shortest_edge") or 0)
        self._config = ImageTransformConfig(
            size=int(size),
            resize_mode=resize_mode,  # type: ignore[arg-type]
            channels=int(channels),
            mean=tuple(float(m) for m in image_mean),
            std=tuple(float(s) for s in image_std),
            interpolation=interpolation,
            pad_fill=pad_fill,  # type: ignore[arg-type]
            resampler=resampler,  # type: ignore[arg-type]
        )
        self._transform = ToModelInput(self._config)

    @classmethod
    def from_transform_config(cls, config: ImageTransformConfig) -> RadImageProcessor:
        values = asdict(config)
        mean, std = values.pop("mean"), values.pop("std")
        return cls(**values, image_mean=mean, image_std=std)

    @property
    def transform_config(self) -> ImageTransformConfig:
        return self._config

    @property
    def size(self) -> int:
        return self._config.size

    @property
    def image_mean(self) -> list[float]:
        return self._config.per_channel(self._config.mean)

    @property
    def image_std(self) -> list[float]:
        return self._config.per_channel(self._config.std)

    @property
    def crop_size(self) -> dict[str, int]:
        """The output's height and width, under the name HF's Llava processors read it."""
        return {"height": self._config.size, "width": self._config.size}

    def to_dict(self) -> dict[str, Any]:
        values = {f.name: getattr(self._config, f.name) for f in fields(ImageTransformConfig)}
        values["image_mean"], values["image_std"] = list(values.pop("mean")), list(values.pop("std"))
        return {**values, "image_processor_type": type(self).__name__}

    def preprocess(  # type: ignore[override]
        self, images: RadImageInput | Sequence[RadImageInput], return_tensors: str | None = "pt", **kwargs: Any
    ) -> BatchFeature:
        """One image or a list → ``BatchFeature(pixel_values=(n, channels, size, size))``.

        Accepted: radlvlm's ``Image``; grayscale pixels in [0, 1] as a tensor or array ((rows, columns) or
        (1, rows, columns)); an 8-bit array; a PIL image (``F`` is taken as [0, 1], 16-bit modes as 0-65535, anything
        else through 8-bit grayscale); or an already prepared (channels, size, size) tensor, passed through.
        ``return_tensors`` is "pt" (or None) for torch, "np" for numpy. Other keyword arguments a caller such as HF's
        ``LlavaProcessor`` adds are accepted and ignored: the settings are the model's, not the call's.
        """
        if return_tensors not in (None, "pt", "np"):
            raise InputError(f"RadImageProcessor returns torch tensors or numpy arrays, not {return_tensors!r}")
        batch = list(images) if isinstance(images, (list, tuple)) else [images]
        if not batch:
            raise InputError("no images given")
        pixel_values = torch.stack([self.prepare(image, index) for index, image in enumerate(batch)])
        return BatchFeature(data={"pixel_values": pixel_values.numpy() if return_tensors == "np" else pixel_values})

    def prepare(self, image: RadImageInput, index: int = 0) -> torch.Tensor:
        """One image → (channels, size, size) float32."""
        config = self._config
        if isinstance(image, Image):
            return self._transform(image)
        if isinstance(image, torch.Tensor):
            expected = (config.channels, config.size, config.size)
            if image.ndim == 3 and tuple(image.shape) == expected:
                return image.float()  # already prepared
            if image.ndim == 2 or (image.ndim == 3 and image.shape[0] == 1):
                return self._transform(image.float())
            raise InputError(
                f"image {index}: tensor of shape {tuple(image.shape)} is neither pixels (rows, columns) nor "
                f"prepared {expected}"
            )
        if isinstance(image, PILImage.Image):
            return self._transform(torch.from_numpy(pixels_in_unit_range(image)))
        if isinstance(image, np.ndarray):
            array = image.astype(np.float32) / 255.0 if image.dtype == np.uint8 else image.astype(np.float32)
            return self.prepare(torch.from_numpy(np.ascontiguousarray(array)), index)
        raise InputError(f"image {index}: unsupported type {type(image).__name__}")


def pixels_in_unit_range(picture: PILImage.Image) -> np.ndarray:
    """A PIL image as float32 grayscale in [0, 1] (rows, columns), keeping the depth of 16-bit and float modes."""
    if picture.mode == "F":
        return np.asarray(picture, dtype=np.float32).copy()
    if picture.mode in _DEEP_MODES:
        return np.asarray(picture, dtype=np.float32) / _DEEP_MODES[picture.mode]
    return np.asarray(picture.convert("L"), dtype=np.float32) / 255.0


# ``AutoImageProcessor`` finds the class by the ``image_processor_type`` saved with it.
AutoImageProcessor.register(PooledRadLlavaConfig, slow_image_processor_class=RadImageProcessor, exist_ok=True)
