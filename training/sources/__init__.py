"""Where training data comes from: one class per source (one module each), each yielding study-level records or
drops.

A source never builds prompts: it reads its files, checks them, and yields :class:`Record` (one study, or one
image of a public set, with report sections and a lazy :class:`ImageRef`) or :class:`Drop` (a study left out,
with a PHI-free reason). :func:`radlvlm.training.data.build_examples` turns records into examples.

Sources:

* :class:`IUXraySource` — the IU-Xray split manifests (``train/validation/test.jsonl`` or ``.csv``). Text only
  unless ``image_root`` holds the Kaggle or Open-i PNGs.
* :class:`CovidSource` — the COVID-19 image data collection manifest (images with clinical notes).
* :class:`NIHSource` — the NIH ChestX-ray14 manifest (images with the 14 finding labels).
* :class:`HospitalSource` — a folder or zip of DICOM studies plus a reports file; de-identification enforced.
* :class:`radlvlm.training.pseudo_pairs.LabelMatchedPairs` — NIH images paired with label-matched IU reports.

Every check that can fail on a file's layout runs in ``validate()``, before any record is read; errors are
:class:`~radlvlm.errors.InputError` naming the file, the row (line number) and the key, never report text or a
header value.
"""

from radlvlm.model.findings import NIH_LABELS
from radlvlm.training.sources.base import (
    SPLITS,
    TASKS,
    Drop,
    ImageRef,
    Item,
    Note,
    Record,
    Source,
    assign_split,
)
from radlvlm.training.sources.covid import CovidSource, covid_findings
from radlvlm.training.sources.hospital import HospitalSource, is_deidentified
from radlvlm.training.sources.iu_xray import IUXraySource
from radlvlm.training.sources.nih import NO_FINDING_PHRASE, NIHSource, nih_impression
from radlvlm.training.sources.recipe import sources_from_config

__all__ = [
    "NIH_LABELS",
    "NO_FINDING_PHRASE",
    "SPLITS",
    "TASKS",
    "CovidSource",
    "Drop",
    "HospitalSource",
    "IUXraySource",
    "ImageRef",
    "Item",
    "NIHSource",
    "Note",
    "Record",
    "Source",
    "assign_split",
    "covid_findings",
    "is_deidentified",
    "nih_impression",
    "sources_from_config",
]
