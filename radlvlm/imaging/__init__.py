"""DICOM (and PNG/JPEG) → typed ``Study`` with display-ready pixels, and transforms to model input."""

from typing import TYPE_CHECKING, Any

from radlvlm.imaging.dicom import dataset_to_image, read_image_file
from radlvlm.imaging.loader import Failure, LoadResult, iter_images, load_studies
from radlvlm.imaging.study import Image, Laterality, Series, Study, View

if TYPE_CHECKING:
    from radlvlm.imaging.transforms import ImageTransformConfig, ToModelInput, ToModelInputd

# The model-input transforms are MONAI's, and importing MONAI costs seconds (its package import loads its
# networks and transformers' BERT): a CLI verb that only reads DICOM must not pay for it.
_TRANSFORMS = ("ImageTransformConfig", "ToModelInput", "ToModelInputd")


def __getattr__(name: str) -> Any:
    if name in _TRANSFORMS:
        from radlvlm.imaging import transforms  # noqa: PLC0415 - MONAI: seconds to import, only when a model-input transform is used

        return getattr(transforms, name)
    raise AttributeError(f"module 'radlvlm.imaging' has no attribute {name!r}")


__all__ = [
    "Failure",
    "Image",
    "ImageTransformConfig",
    "Laterality",
    "LoadResult",
    "Series",
    "Study",
    "ToModelInput",
    "ToModelInputd",
    "View",
    "dataset_to_image",
    "iter_images",
    "load_studies",
    "read_image_file",
]
