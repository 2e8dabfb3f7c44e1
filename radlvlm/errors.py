"""The one error hierarchy of radlvlm.

Every message names the file or the step and gives shapes, counts and tag keywords, never patient data
(names, IDs, dates, free text). Callers at a stage boundary re-raise ``from e`` naming the step.
"""

from __future__ import annotations


class RadlvlmError(Exception):
    """Base of every error radlvlm raises on purpose; the CLI turns these into one line and exit code 2."""


class InputError(RadlvlmError, ValueError):
    """The input cannot be used as given (wrong kind of file, empty folder, bad option)."""


class EmptyInputError(InputError):
    """A folder or archive holds no file that could be read."""


class NotDicomError(InputError):
    """A file is neither DICOM nor a supported image format."""


class NoPixelDataError(InputError):
    """A DICOM file carries no pixel data (for example a structured report or an RT plan)."""


class MultiFrameError(InputError):
    """A multi-frame image was given where a single frame is expected."""


class DecodeError(RadlvlmError):
    """Pixel data is present but cannot be decoded (truncated, corrupt, or no decoder can read it)."""


class UnsupportedTransferSyntaxError(DecodeError):
    """No installed pixel-data decoder handles the file's transfer syntax (or this variant of it)."""


class ReportParseError(RadlvlmError, ValueError):
    """A radiology report cannot be split into sections."""


class DeidentificationError(RadlvlmError):
    """De-identification failed or could not be verified; nothing is written for that input (fail closed)."""


class GuardrailViolation(RadlvlmError):
    """An input the model is not for, or an output that must not leave, with the reason."""


class AuditIntegrityError(RadlvlmError):
    """The audit trail's hash chain does not verify: an entry was altered, removed or inserted."""


class EvaluationInputError(InputError):
    """A predictions or references file cannot be scored as given (missing ids, duplicates, empty text …)."""


class ModelError(RadlvlmError):
    """A model, adapter or checkpoint cannot be built, loaded or converted as asked."""


class EngineError(RadlvlmError):
    """The engine or the model failed while answering a request: radlvlm's fault, never the caller's (the service
    answers 500 with a request id, the CLI exits 1, the PACS worker retries the study)."""


class ModelTimeout(RadlvlmError):
    """The model did not answer within the request timeout."""


class NoArchiveError(InputError):
    """A study was named by its archive UID where no DICOMweb archive is configured."""


class ImageTooLargeError(InputError):
    """An image declares more pixels than radlvlm decodes (refused before decoding: a decompression bomb)."""


class PacsError(RadlvlmError):
    """The archive is unreachable, slow, refused the request or answered something unusable.

    ``status`` is the archive's HTTP status when it answered (404: no such study), else None.
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status
