"""PHI and clinical guards: DICOM and report de-identification, guardrails, audit trail.

* :class:`DicomDeidentifier` — PS3.15 Annex E Basic Application Level Confidentiality Profile with options
  (:class:`DeidOptions`), UID remapping, per-patient date shifts, private tags, burned-in text; fail closed.
* :class:`ReportDeidentifier` — report text through Presidio (offline) plus a safe-word allowlist.
* :class:`PseudonymMap` — one keyed pseudonym map shared by both, written encrypted or not at all.
* :func:`check_input` / :func:`check_output` — guardrails; :class:`AuditTrail` — hash-chained audit log.

Importing this package loads neither Presidio nor pydicom's pixel handlers until a class is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = [
    "AuditTrail",
    "DeidOptions",
    "DicomDeidentifier",
    "PseudonymMap",
    "ReportDeidentifier",
    "TextDeidConfig",
    "check_input",
    "check_output",
    "verify_audit_trail",
]

_LOCATIONS = {
    "AuditTrail": "radlvlm.safety.audit",
    "verify_audit_trail": "radlvlm.safety.audit",
    "DeidOptions": "radlvlm.safety.profile",
    "DicomDeidentifier": "radlvlm.safety.dicom_deid",
    "PseudonymMap": "radlvlm.safety.pseudonyms",
    "ReportDeidentifier": "radlvlm.safety.text_deid",
    "TextDeidConfig": "radlvlm.safety.text_deid",
    "check_input": "radlvlm.safety.guardrails",
    "check_output": "radlvlm.safety.guardrails",
}

if TYPE_CHECKING:
    from radlvlm.safety.audit import AuditTrail, verify_audit_trail
    from radlvlm.safety.dicom_deid import DicomDeidentifier
    from radlvlm.safety.guardrails import check_input, check_output
    from radlvlm.safety.profile import DeidOptions
    from radlvlm.safety.pseudonyms import PseudonymMap
    from radlvlm.safety.text_deid import ReportDeidentifier, TextDeidConfig


def __getattr__(name: str) -> Any:
    # Lazy: `radlvlm --help` must not pay for importing spaCy/Presidio (about a second).
    if name in _LOCATIONS:
        return getattr(importlib.import_module(_LOCATIONS[name]), name)
    raise AttributeError(f"module 'radlvlm.safety' has no attribute {name!r}")
