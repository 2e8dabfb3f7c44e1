"""DICOM PS3.15 Annex E, Table E.1-1, as data, and the options that select an action per attribute.

The table itself is not written here: ``annex_e_table.json`` is the standard's Table E.1-1 (620 rows, 2024e),
converted from innolitics/dicom-standard's parse of the standard's HTML (the JSON names its source). pydicom
does not ship the table; ``deid`` ships recipes of its own rather than the table with its option columns, and
``dicognito`` hard-codes a subset of handlers with no option columns, so neither can say "the action of attribute
T under options O" for every row. What is written by hand here is only the rule that picks one action from the
standard's codes, which the standard leaves to the implementer (see :func:`resolve_action`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from functools import lru_cache
from importlib import resources
from typing import Literal

from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.tag import BaseTag

from radlvlm.errors import InputError

__all__ = ["OPTION_COLUMNS", "AnnexERow", "DeidOptions", "annex_e_rows", "resolve_action"]

# Table columns for the options, in the table's order, each with its CID 7050 code.
OPTION_COLUMNS: dict[str, Code] = {
    "retain_safe_private": codes.DCM.RetainSafePrivateOption,
    "retain_uids": codes.DCM.RetainUidsOption,
    "retain_device_identity": codes.DCM.RetainDeviceIdentityOption,
    "retain_institution_identity": codes.DCM.RetainInstitutionIdentityOption,
    "retain_patient_characteristics": codes.DCM.RetainPatientCharacteristicsOption,
    "retain_long_full_dates": codes.DCM.RetainLongitudinalTemporalInformationFullDatesOption,
    "retain_long_modified_dates": codes.DCM.RetainLongitudinalTemporalInformationModifiedDatesOption,
    "clean_descriptors": codes.DCM.CleanDescriptorsOption,
    "clean_structured_content": codes.DCM.CleanStructuredContentOption,
}

Action = Literal["D", "Z", "X", "K", "C", "U"]


@dataclass(frozen=True)
class DeidOptions:
    """Which Annex E options apply, plus radlvlm's fail-closed limits and burned-in text policy.

    Defaults are the Basic Application Level Confidentiality Profile with no option: the most conservative.

    Args:
        retain_long_modified_dates (bool, default False): dates and date-times are shifted by a per-patient
            offset (whole days, 1 to 3652 days back) instead of removed; times of day are kept.
        retain_long_full_dates (bool, default False): dates kept as they are (exclusive with the above).
        retain_patient_characteristics (bool, default False): sex, age (ages over 89 become ``090Y``, as HIPAA
            Safe Harbor asks), size, weight, smoking and pregnancy status kept.
        retain_device_identity (bool, default False): device serial numbers, station names kept; AE titles
            replaced by pseudonyms.
        retain_institution_identity (bool, default False): institution name, address and department kept.
        retain_uids (bool, default False): UIDs kept instead of remapped (only for an export that stays inside).
        clean_descriptors (bool, default False): descriptions (study, series, protocol …) cleaned with the report
            de-identifier instead of removed; a radiograph's "CHEST PA" survives, names and dates do not.
        clean_structured_content (bool, default False): SR content and acquisition context sequences are
            walked and cleaned instead of emptied.
        retain_safe_private (bool, default False): private attributes listed in ``safe_private`` kept.
        safe_private (tuple[tuple[str, int, int], ...], default ()): (private creator, group, element byte)
            triples known to be safe (from a vendor's conformance statement or PS3.15 Table E.3.10-1).
        ocr (bool, default False): run tesseract on the pixels and treat found text as burned-in annotation.
        burned_in (Literal["refuse", "redact"], default "refuse"): what to do with an image that carries
            burned-in text (BurnedInAnnotation YES, or text found by OCR): refuse it (no output), or black
            out the text boxes OCR finds (refused anyway when OCR finds none for a YES image).
        max_depth (int, default 16): deepest sequence nesting accepted; deeper input is refused.
        max_elements (int, default 200_000): most data elements accepted in one file; more is refused.
    """

    retain_long_modified_dates: bool = False
    retain_long_full_dates: bool = False
    retain_patient_characteristics: bool = False
    retain_device_identity: bool = False
    retain_institution_identity: bool = False
    retain_uids: bool = False
    clean_descriptors: bool = False
    clean_structured_content: bool = False
    retain_safe_private: bool = False
    safe_private: tuple[tuple[str, int, int], ...] = ()
    ocr: bool = False
    burned_in: Literal["refuse", "redact"] = "refuse"
    max_depth: int = 16
    max_elements: int = 200_000

    def __post_init__(self) -> None:
        if self.retain_long_modified_dates and self.retain_long_full_dates:
            raise InputError("choose one of retain_long_modified_dates and retain_long_full_dates, not both")
        if self.burned_in not in ("refuse", "redact"):
            raise InputError(f"burned_in must be 'refuse' or 'redact', not {self.burned_in!r}")
        if self.safe_private and not self.retain_safe_private:
            raise InputError("safe_private is listed but retain_safe_private is off")
        if self.max_depth < 1 or self.max_elements < 1:
            raise InputError("max_depth and max_elements must be positive")
        for entry in self.safe_private:
            if len(entry) != 3 or not isinstance(entry[0], str) or entry[1] % 2 == 0:
                raise InputError("safe_private entries are (private creator, odd group, element byte)")

    @property
    def enabled(self) -> list[str]:
        """Names of the Annex E options in force, in the table's column order."""
        return [name for name in OPTION_COLUMNS if getattr(self, name)]

    def to_dict(self) -> dict[str, object]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class AnnexERow:
    """One row of Table E.1-1: the basic-profile action code and the option columns that change it."""

    group: str  # 4 hex digits, 'X' where the standard repeats the group (50XX, 60XX)
    element: str
    name: str
    basic: str
    options: dict[str, str]


@lru_cache(maxsize=1)
def annex_e_rows() -> tuple[dict[int, AnnexERow], tuple[AnnexERow, ...]]:
    """Table E.1-1 as (exact tag → row, rows with repeating groups such as (60XX,3000))."""
    data = json.loads(resources.files("radlvlm.safety").joinpath("annex_e_table.json").read_text("utf-8"))
    exact: dict[int, AnnexERow] = {}
    repeating: list[AnnexERow] = []
    option_names = set(OPTION_COLUMNS) | {"clean_graphics"}
    for item in data["attributes"]:
        tag = item["tag"].upper()
        options = {key: value for key, value in item.items() if key in option_names}
        row = AnnexERow(tag[:4], tag[4:], item["name"], item["basic"], options)
        if "X" in tag:
            repeating.append(row)
        else:
            exact[int(tag, 16)] = row
    return exact, tuple(repeating)


def lookup_row(tag: BaseTag) -> AnnexERow | None:
    """The table row for ``tag``, matching repeating groups (50XX curves, 60XX overlays) by pattern."""
    exact, repeating = annex_e_rows()
    row = exact.get(int(tag))
    if row is not None:
        return row
    hex_tag = f"{int(tag):08X}"
    for candidate in repeating:
        pattern = candidate.group + candidate.element
        if all(p == "X" or p == h for p, h in zip(pattern, hex_tag, strict=True)):
            return candidate
    return None


# The standard's combined codes (X/Z, X/D, Z/D, X/Z/D) depend on whether the attribute is Type 1, 2 or 3 in the
# IOD at hand; radlvlm does not model every IOD, so it takes the last alternative, which always keeps the file
# conformant (a dummy can stand where an empty value or a removal could not) and is as private as the others.
# U* (Referenced/Source Image Sequence) means "keep the sequence, replace the UIDs in it".
_COMBINED: dict[str, Action] = {"X/Z": "Z", "X/D": "D", "Z/D": "D", "X/Z/D": "D", "X/Z/U*": "U", "X/Z/U": "U"}


def resolve_action(row: AnnexERow, options: DeidOptions) -> Action:
    """The one action for ``row`` under ``options``.

    An enabled option's column overrides the basic profile. When two enabled options disagree, C (clean) wins
    over K (keep): keeping is only right when no option in force asks for cleaning.
    """
    chosen: list[str] = [row.options[name] for name in options.enabled if name in row.options]
    if "C" in chosen:
        return "C"
    if "K" in chosen:
        return "K"
    basic = row.basic.strip()
    if basic in _COMBINED:
        return _COMBINED[basic]
    if basic not in ("D", "Z", "X", "K", "C", "U"):
        # An unknown code in the data file is a broken table: refuse rather than guess.
        raise InputError(f"Annex E table: unknown action {basic!r} for ({row.group},{row.element})")
    return basic  # type: ignore[return-value]
