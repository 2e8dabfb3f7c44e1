"""The API contract: pydantic models for what comes in and what goes out (the response models filter)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from radlvlm.pipeline.output import DISCLAIMER


class ErrorDetail(BaseModel):
    code: str = Field(description="Machine-readable error code, e.g. 'not_dicom', 'unauthorized', 'rate_limited'")
    message: str = Field(description="Human-readable reason; never contains patient data")
    request_id: str | None = Field(
        default=None,
        description="On a 5xx (the service's own fault): the request's id, as in its X-Request-ID header and the "
        "server log; quote it to the operator",
    )


class ErrorBody(BaseModel):
    error: ErrorDetail


class TimingsOut(BaseModel):
    queued_ms: float
    compute_ms: float
    total_ms: float
    batch_size: int
    request_ms: float = Field(description="Wall time of the whole HTTP request, including decoding and de-id")


class GuardrailFlag(BaseModel):
    code: str
    message: str
    severity: Literal["info", "warning", "block"] = "warning"


class ImageFacts(BaseModel):
    modality: str | None
    body_part: str | None
    view: str
    view_source: str = Field(
        description='Where the view came from: a DICOM attribute (e.g. "ViewPosition"), "request" (the view sent), '
        'or "default" (a PNG/JPEG states no view and is taken as PA)'
    )
    rows: int
    columns: int


class LabelFindingOut(BaseModel):
    label: str = Field(description="An NIH ChestX-ray14 finding, or 'Abnormal' (any finding)")
    probability: float = Field(description="Calibrated probability that the finding is present")
    threshold: float | None = Field(
        description="The probability at which it is called present (null: never called, as no threshold was precise)"
    )
    present: bool
    validated: bool = Field(
        description="Whether its accuracy was validated (out-of-fold AUROC with enough patients): only validated "
        "findings are stated in drafts or compared with a report"
    )


class ImageFindingsOut(BaseModel):
    classifier: str = Field(description="The finding classifier that read the image")
    abnormal: LabelFindingOut
    stated: list[str] = Field(description="The findings the draft was given to state (empty: a normal study)")
    labels: list[LabelFindingOut]


class ActivationMapOut(BaseModel):
    label: str = Field(description="A finding the draft states (the classifier's label)")
    probability: float = Field(description="The classifier's calibrated probability of it")
    threshold: float | None = Field(
        description="The probability at which it is called present (null: never called, as no threshold was precise)"
    )
    png_base64: str = Field(
        description="Where the classifier saw it: a class activation map as a transparent PNG (base64) with the "
        "image's aspect, to stretch over the displayed radiograph; brighter and more opaque where the evidence is"
    )


class DraftOut(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    model_id: str
    findings: str
    impression: str
    image: ImageFacts
    image_findings: ImageFindingsOut | None = Field(
        default=None, description="What the finding classifier read in the image; null when the model has none"
    )
    activation_maps: list[ActivationMapOut] | None = Field(
        default=None,
        description="With explain=true: one map per stated finding (empty for a normal study or a model without a "
        "finding classifier); null when not asked",
    )
    guardrail_flags: list[GuardrailFlag]
    finish_reason: str
    timings: TimingsOut
    disclaimer: str = DISCLAIMER


class CheckFindingOut(BaseModel):
    category: str | None
    span: tuple[int, int] | None = Field(description="Character offsets [start, end) in the submitted report")
    text: str | None = Field(
        description="The report text inside the span; without a span, the observation the error concerns (a "
        "rule-checker inconsistency such as 'Pleural Effusion' or 'Comparison', or a disagreement with the image)"
    )


class LabelComparisonOut(BaseModel):
    observation: str = Field(description="The CheXpert observation ('No Finding': normal vs abnormal)")
    classifier_label: str
    report: Literal["positive", "negative", "uncertain", "not mentioned"] = Field(
        description="What the report says of it (the labeler's reading, negation-aware; hedges are 'uncertain')"
    )
    image_probability: float
    threshold: float
    agrees: bool | None = Field(description="None: hedged in the report, so not checked")


class ImageComparisonOut(BaseModel):
    compared: list[LabelComparisonOut]
    disagreements: list[str]
    not_checked: list[str] = Field(description="What this check cannot see (side, size, devices, comparisons ...)")
    text_error_probability: float | None = Field(description="The text check's own probability, fused in")


class CheckOut(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    model_id: str
    mode: Literal["simple", "complex"]
    check_type: Literal["image", "text_only"] = Field(
        description="'text_only' when no image was given: a findings-vs-impression consistency check only"
    )
    has_error: bool | None = Field(description="None when the check could not be done (see 'reason')")
    confidence: float | None = Field(description="Probability of the verdict given (SIMPLE)")
    error_probability: float | None = Field(
        default=None, description="Calibrated probability that the report contains an error (SIMPLE)"
    )
    calibrated: bool = Field(
        default=False, description="Whether the probability comes from the model's fitted calibration"
    )
    findings: list[CheckFindingOut]
    answer_valid: bool
    reason: str | None = Field(default=None, description="Why the check could not be done, when it could not")
    image_findings: ImageFindingsOut | None = Field(
        default=None, description="An image check: what the finding classifier read in the image"
    )
    image_comparison: ImageComparisonOut | None = Field(
        default=None, description="An image check: the report compared with the image, finding by finding"
    )
    guardrail_flags: list[GuardrailFlag]
    timings: TimingsOut
    disclaimer: str = DISCLAIMER


class DeidTextOut(BaseModel):
    text: str
    replaced: dict[str, int] = Field(description="How many spans of each PHI type were replaced")


class ModelOut(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    id: str
    backend: str
    architecture: dict[str, str | int | None]
    adapter: str | None
    embedded_default: bool = Field(
        default=False, description="True for the small model shipped in the package: demonstration only"
    )


class ModelsOut(BaseModel):
    models: list[ModelOut]


class HealthOut(BaseModel):
    status: Literal["ok", "starting", "failed", "unavailable"]
    detail: str | None = None
