"""The use cases every door calls: draft a study, check a report, de-identify a file or a text.

The HTTP routers, the CLI's ``draft``/``check``, the PACS worker and ``eval predict`` translate their input,
call one of these, and translate the answer; the flow itself (ingest → de-identify → input guardrails →
engine → output guardrails → audit) is written here once, on a :class:`Runtime` built from settings.

Names are imported on first use (PEP 562): a light module of the package (``output``'s disclaimer, say) is read
without the model stack behind the use cases.
"""

from radlvlm.lazy import lazy_attributes

_EXPORTS = {
    "CheckOutcome": "radlvlm.pipeline.checking",
    "check_report": "radlvlm.pipeline.checking",
    "finish_check": "radlvlm.pipeline.checking",
    "prepare_check": "radlvlm.pipeline.checking",
    "DeidentifiedText": "radlvlm.pipeline.deid",
    "deidentify_dicom": "radlvlm.pipeline.deid",
    "deidentify_text": "radlvlm.pipeline.deid",
    "DraftOutcome": "radlvlm.pipeline.drafting",
    "DraftSession": "radlvlm.pipeline.drafting",
    "ImageFacts": "radlvlm.pipeline.drafting",
    "draft_study": "radlvlm.pipeline.drafting",
    "finish_draft": "radlvlm.pipeline.drafting",
    "prepare_draft": "radlvlm.pipeline.drafting",
    "start_draft_stream": "radlvlm.pipeline.drafting",
    "Flag": "radlvlm.pipeline.flags",
    "StudyInput": "radlvlm.pipeline.ingest",
    "Caller": "radlvlm.pipeline.runtime",
    "Runtime": "radlvlm.pipeline.runtime",
    "build_runtime": "radlvlm.pipeline.runtime",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_attributes(__name__, _EXPORTS)
