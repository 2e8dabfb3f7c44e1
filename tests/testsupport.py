"""Test helpers: real DICOM from pydicom's bundled data and pydicom-data, and ../shared/data."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def pydicom_file(name: str) -> Path:
    """Path of a pydicom test file (bundled with pydicom, or from the pydicom-data package); skip if absent."""
    try:
        found = get_testdata_file(name, download=False)
    except Exception as e:  # pydicom signals a missing external source in several ways
        pytest.skip(f"pydicom test file {name} unavailable: {e}")
    if not found:
        pytest.skip(f"pydicom test file {name} unavailable (install pydicom-data)")
    return Path(str(found))


def shared_path(*parts: str) -> Path:
    """A path under ../shared/data; skip the test, saying why, when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} absent: ../shared/data (real public data) is not available on this machine")
    return path


def write_dataset(ds: Dataset, path: Path, **kwargs: object) -> Path:
    ds.save_as(path, enforce_file_format=True, **kwargs)
    return path


def to_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


# A few report sentences to train tiny tokenizers on (model tests).
REPORT_CORPUS = [
    "The lungs are clear. There is no pleural effusion or pneumothorax.",
    "Heart size is normal. The mediastinal contours are unremarkable.",
    "Mild cardiomegaly. Small left pleural effusion with basilar atelectasis.",
    "No acute cardiopulmonary abnormality. No focal consolidation.",
    "Right upper lobe opacity concerning for pneumonia.",
    "Degenerative changes of the thoracic spine.",
]


def draft_prompt_for(processor: Any, indication: str | None = None, findings: Any = None) -> str:
    """A model's drafting prompt, as its drafting task builds it."""
    from radlvlm.model.generation import GenerationSettings
    from radlvlm.tasks.drafting import DraftTask

    return DraftTask(processor, GenerationSettings()).prompt(indication, findings)
