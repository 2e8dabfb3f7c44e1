"""The use cases every door calls: draft a study, check a report, de-identify a file or a text.

The HTTP routers, the CLI's ``draft``/``check``, the PACS worker and ``eval predict`` translate their input,
call one of these, and translate the answer; the flow itself (ingest → de-identify → input guardrails →
engine → output guardrails → audit) is written here once, on a :class:`Runtime` built from settings.
"""

from radlvlm.pipeline.checking import CheckOutcome, check_report, finish_check, prepare_check
from radlvlm.pipeline.deid import DeidentifiedText, deidentify_dicom, deidentify_text
from radlvlm.pipeline.drafting import (
    DraftOutcome,
    DraftSession,
    ImageFacts,
    draft_study,
    finish_draft,
    prepare_draft,
    start_draft_stream,
)
from radlvlm.pipeline.flags import Flag
from radlvlm.pipeline.ingest import StudyInput
from radlvlm.pipeline.runtime import Caller, Runtime, build_runtime

__all__ = [
    "Caller",
    "CheckOutcome",
    "DeidentifiedText",
    "DraftOutcome",
    "DraftSession",
    "Flag",
    "ImageFacts",
    "Runtime",
    "StudyInput",
    "build_runtime",
    "check_report",
    "deidentify_dicom",
    "deidentify_text",
    "draft_study",
    "finish_check",
    "finish_draft",
    "prepare_check",
    "prepare_draft",
    "start_draft_stream",
]
