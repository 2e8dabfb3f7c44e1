"""View position and laterality of a radiograph from its DICOM header.

Sources in order of trust: View Position (0018,5101), the coded View Code Sequence (0054,0220; CID 4010,
SNOMED CT or the legacy SNOMED RT codes), then words in the series/protocol description. The free-text
descriptions are read here and never stored.
"""

from __future__ import annotations

import re

from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from radlvlm.imaging.study import Laterality, View

_VIEW_POSITION = {
    "PA": View.PA,
    "AP": View.AP,
    "LL": View.LL,
    "LATERAL": View.LATERAL,
    "LAT": View.LATERAL,
    "RL": View.LATERAL,
}

_VIEW_CODES: list[tuple[Code, View]] = [
    (codes.SCT.PosteroAnterior, View.PA),
    # CID 4010 listed postero-anterior as SNOMED RT R-10214; pydicom's RT→CT table maps 272479007 elsewhere.
    (Code("R-10214", "SRT", "postero-anterior"), View.PA),
    (codes.SCT.AnteroPosterior, View.AP),
    (codes.SCT.LeftLateral, View.LL),
    (codes.SCT.RightLateral, View.LATERAL),
    (Code("399067008", "SCT", "lateral"), View.LATERAL),
    (codes.SCT.LateralMedial, View.LATERAL),
    (Code("399260004", "SCT", "medial-lateral"), View.LATERAL),
]

# Code meanings, for files that use a coding scheme pydicom does not map (e.g. "SNM3").
_VIEW_MEANINGS = [
    (re.compile(r"postero[- ]?anterior", re.I), View.PA),
    (re.compile(r"antero[- ]?posterior", re.I), View.AP),
    (re.compile(r"left lateral", re.I), View.LL),
    (re.compile(r"lateral", re.I), View.LATERAL),
]

# Description words; checked in this order so that "PA and LAT" in one image's description says PA.
_DESCRIPTION_PATTERNS = [
    (re.compile(r"\b(P\.?A|POSTERO[- ]?ANTERIOR|FRONTAL)\b", re.I), View.PA),
    (re.compile(r"\b(A\.?P|ANTERO[- ]?POSTERIOR|PORTABLE|SUPINE)\b", re.I), View.AP),
    (re.compile(r"\b(LL|LEFT[- ]LAT(ERAL)?)\b", re.I), View.LL),
    (re.compile(r"\b(LAT|LATERAL|LATERAL[- ]VIEW)\b", re.I), View.LATERAL),
]


def detect_view(ds: Dataset) -> tuple[View, str]:
    """Return (view, source attribute keyword), ``(View.UNKNOWN, "none")`` when nothing says."""
    position = str(ds.get("ViewPosition", "") or "").strip().upper()
    if position in _VIEW_POSITION:
        return _VIEW_POSITION[position], "ViewPosition"
    coded = _view_from_code_sequence(ds)
    if coded is not None:
        return coded, "ViewCodeSequence"
    for keyword in ("SeriesDescription", "ProtocolName", "AcquisitionDeviceProcessingDescription"):
        text = str(ds.get(keyword, "") or "")
        view = view_from_description(text)
        if view is not None:
            return view, keyword
    return View.UNKNOWN, "none"


def view_from_description(text: str) -> View | None:
    """View from free text such as "CHEST PA", "Thorax LAT" or "AP PORTABLE"; None when no word says."""
    if not text:
        return None
    for pattern, view in _DESCRIPTION_PATTERNS:
        if pattern.search(text):
            return view
    return None


def _view_from_code_sequence(ds: Dataset) -> View | None:
    for item in ds.get("ViewCodeSequence", None) or []:
        value = str(item.get("CodeValue", "") or "")
        scheme = str(item.get("CodingSchemeDesignator", "") or "")
        # "SNM3" (SNOMED version 3) is an old designator for the SNOMED RT codes that "SRT" now names.
        scheme = "SRT" if scheme.upper() == "SNM3" else scheme
        meaning = str(item.get("CodeMeaning", "") or "")
        if value and scheme:
            try:
                code = Code(value, scheme, meaning or value)
            except (ValueError, TypeError):
                code = None
            if code is not None:
                for known, view in _VIEW_CODES:
                    if code == known:
                        return view
        for pattern, view in _VIEW_MEANINGS:
            if pattern.search(meaning):
                return view
    return None


def detect_laterality(ds: Dataset) -> Laterality | None:
    """Image Laterality (0020,0062), else series Laterality (0020,0060); None when absent or empty."""
    for keyword in ("ImageLaterality", "Laterality"):
        value = str(ds.get(keyword, "") or "").strip().upper()
        if value:
            try:
                return Laterality(value)
            except ValueError:
                continue
    return None
