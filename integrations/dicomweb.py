"""DICOMweb with dicomweb-client: QIDO-RS search, WADO-RS retrieve into a ``Study``, STOW-RS store.

The PACS address is configuration, never a request parameter: a client of the radlvlm service names a study
by its StudyInstanceUID and the service fetches it from the one archive it is configured for (no request can
point the service at an arbitrary URL).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import requests
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from radlvlm.errors import InputError, PacsError
from radlvlm.settings import Settings

__all__ = ["DicomWebSettings", "DicomWebSource", "PacsError", "archive_from_settings", "as_part10"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DicomWebSettings:
    """Where the archive is and how to authenticate.

    Args:
        url (str): the DICOMweb root, e.g. ``http://orthanc:8042/dicom-web``.
        headers (dict[str, str]): extra headers, e.g. ``{"Authorization": "Bearer …"}`` for a real PACS.
        timeout_s (float, default 30): per request.
        verify_tls (bool | str, default True): certificate verification, or a CA bundle path.
    """

    url: str
    headers: dict[str, str] = field(default_factory=dict)
    timeout_s: float = 30.0
    verify_tls: bool | str = True

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise InputError("the DICOMweb URL must start with http:// or https://")


class DicomWebSource:
    """One archive reached over DICOMweb."""

    def __init__(self, settings: DicomWebSettings) -> None:
        self.settings = settings
        session = requests.Session()
        session.verify = settings.verify_tls
        self._client = DICOMwebClient(
            url=settings.url.rstrip("/"), session=session, headers=dict(settings.headers), timeout=settings.timeout_s
        )

    def search_studies(
        self,
        *,
        study_date: str | None = None,
        modality: str | None = None,
        accession_number: str | None = None,
        study_instance_uid: str | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """QIDO-RS: studies matching the filters (DICOM JSON, as the archive returns them)."""
        filters: dict[str, Any] = {}
        if study_date:
            filters["StudyDate"] = study_date  # YYYYMMDD or a range YYYYMMDD-YYYYMMDD
        if modality:
            filters["ModalitiesInStudy"] = modality
        if accession_number:
            filters["AccessionNumber"] = accession_number
        if study_instance_uid:
            filters["StudyInstanceUID"] = study_instance_uid
        return self._call("search", lambda: self._client.search_for_studies(search_filters=filters, limit=limit))

    def retrieve_study(self, study_instance_uid: str) -> list[Dataset]:
        """WADO-RS: every instance of the study as pydicom datasets."""
        if not study_instance_uid or not all(part.isdigit() for part in study_instance_uid.split(".")):
            raise InputError("a StudyInstanceUID is digits separated by dots")
        datasets = self._call("retrieve", lambda: self._client.retrieve_study(study_instance_uid))
        if not datasets:
            raise PacsError("the archive returned no instance for the study")
        return datasets

    def store(self, datasets: Sequence[Dataset]) -> Dataset:
        """STOW-RS. Each dataset is written as a conformant Part 10 file (preamble and file meta), because
        dicomweb-client sends the dataset as given and archives store exactly what they receive."""
        prepared = [as_part10(ds) for ds in datasets]
        response = self._call("store", lambda: self._client.store_instances(prepared))
        failed = response.get("FailedSOPSequence") if response is not None else None
        if failed:
            raise PacsError(f"the archive refused {len(failed)} of {len(prepared)} instance(s)")
        return response

    def _call(self, what: str, request: Any) -> Any:
        try:
            return request()
        except requests.HTTPError as e:
            status = e.response.status_code if e.response is not None else None
            raise PacsError(f"DICOMweb {what} failed: HTTP {status}", status) from None
        except (requests.ConnectionError, requests.Timeout) as e:
            raise PacsError(f"DICOMweb {what} failed: archive unreachable ({type(e).__name__})") from None


def archive_from_settings(settings: Settings) -> DicomWebSource | None:
    """The archive drafts may name studies in (``RADLVLM_DICOMWEB_URL``), or None when none is configured; the
    doors build it and hand it to the runtime, so the use cases never import an archive client."""
    if not settings.dicomweb_url:
        return None
    headers = {"Authorization": settings.dicomweb_authorization} if settings.dicomweb_authorization else {}
    return DicomWebSource(DicomWebSettings(settings.dicomweb_url, headers=headers))


def as_part10(ds: Dataset) -> Dataset:
    """A copy of ``ds`` with a 128-byte preamble and complete file meta, round-tripped through a Part 10 write."""
    copy = ds.copy()
    meta = FileMetaDataset(copy.file_meta) if getattr(copy, "file_meta", None) is not None else FileMetaDataset()
    meta.MediaStorageSOPClassUID = copy.SOPClassUID
    meta.MediaStorageSOPInstanceUID = copy.SOPInstanceUID
    if "TransferSyntaxUID" not in meta:
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
    copy.file_meta = meta
    copy.preamble = b"\x00" * 128
    buffer = io.BytesIO()
    copy.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    return dcmread(buffer)
