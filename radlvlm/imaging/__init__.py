"""DICOM (and PNG/JPEG) → typed ``Study`` with display-ready pixels, and transforms to model input."""

from radlvlm.imaging.dicom import dataset_to_image, read_image_file
from radlvlm.imaging.loader import Failure, LoadResult, iter_images, load_studies
from radlvlm.imaging.study import Image, Laterality, Series, Study, View
from radlvlm.imaging.transforms import ImageTransformConfig, ToModelInput, ToModelInputd

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
