"""``radlvlm draft PATH`` and ``radlvlm check [PATH] --report FILE``: the model on one study, from the shell.

They take the service's safety path (DICOM de-identified before the model, input guardrails, PHI scan of the
output) and print JSON. ``--model`` names a radlvlm model directory; without it they run the embedded default
model shipped in the package (:mod:`radlvlm.model.default`: demonstration only, not for clinical use).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from radlvlm.cli_support import fail, run_guarded

ModelOption = Annotated[
    Path | None,
    typer.Option(help="A radlvlm model directory (default: the embedded model).", exists=True, file_okay=False),
]
AdapterOption = Annotated[
    Path | None, typer.Option(help="A MoLE or LoRA adapter directory.", exists=True, file_okay=False)
]
KeyOption = Annotated[Path, typer.Option(help="Project key for pseudonyms (created 0600 if absent).")]


def _engine(model: Path | None, adapter: Path | None, max_new_tokens: int) -> Any:
    from radlvlm.engine.loading import load_engine
    from radlvlm.model.default import choose_model
    from radlvlm.model.generation import GenerationSettings

    choice = run_guarded(lambda: choose_model(model, adapter))
    settings = GenerationSettings(max_new_tokens=max_new_tokens)
    engine, _ = run_guarded(
        lambda: load_engine(
            "torch", choice.base, adapter_dir=choice.adapter, model_id=choice.model_id, generation=settings
        )
    )
    return engine


def _deidentifier(key_file: Path) -> Any:
    from radlvlm.safety.dicom_deid import DicomDeidentifier
    from radlvlm.safety.pseudonyms import PseudonymMap, load_or_create_key

    key, _ = run_guarded(lambda: load_or_create_key(key_file))
    return DicomDeidentifier(PseudonymMap(key, record=False))


def draft_command(
    path: Annotated[
        Path, typer.Argument(help="A frontal chest radiograph: DICOM, PNG or JPEG.", exists=True, dir_okay=False)
    ],
    model: ModelOption = None,
    adapter: AdapterOption = None,
    indication: Annotated[str | None, typer.Option(help="Reason for the exam.")] = None,
    view: Annotated[str | None, typer.Option(help="PA or AP, for a PNG/JPEG.")] = None,
    max_new_tokens: int = 256,
    key_file: KeyOption = Path("radlvlm-deid.key"),
) -> None:
    """Draft findings and impression for one study and print them as JSON."""
    from radlvlm.engine.base import DraftRequest
    from radlvlm.service.pipeline import check_input_image, clean_output, deidentified_image

    if view is not None and view not in ("PA", "AP"):
        raise fail("--view must be PA or AP")
    deidentifier = _deidentifier(key_file)
    image = run_guarded(lambda: deidentified_image(path.read_bytes(), deidentifier, view=view))
    flags = run_guarded(lambda: check_input_image(image))
    clean_indication = deidentifier.text.deidentify(indication).text if indication else None
    engine = _engine(model, adapter, max_new_tokens)
    try:
        result = run_guarded(lambda: engine.run(DraftRequest(image=image, indication=clean_indication)))
    finally:
        engine.close()
    findings, f_flags = clean_output(result.findings, deidentifier, has_prior=False, has_lateral=False)
    impression, i_flags = clean_output(result.impression, deidentifier, has_prior=False, has_lateral=False)
    out = {
        "model_id": result.model_id,
        "findings": findings,
        "impression": impression,
        "guardrail_flags": [f.model_dump() for f in flags + f_flags + i_flags],
        "timings": result.timings.as_dict(),
        "disclaimer": "AI-generated preliminary draft for radiologist review; not for clinical use.",
    }
    typer.echo(json.dumps(out, indent=2))


def check_command(
    path: Annotated[
        Path | None, typer.Argument(help="The study's frontal radiograph; omit for a text-only check.", dir_okay=False)
    ] = None,
    report: Annotated[Path | None, typer.Option(help="The report text file to check.", dir_okay=False)] = None,
    mode: Annotated[str, typer.Option(help="simple (yes/no) or complex (type and span).")] = "simple",
    model: ModelOption = None,
    adapter: AdapterOption = None,
    view: Annotated[str | None, typer.Option(help="PA or AP, for a PNG/JPEG.")] = None,
    key_file: KeyOption = Path("radlvlm-deid.key"),
) -> None:
    """Check a report for errors (against the image when given) and print the verdict as JSON."""
    from radlvlm.engine.base import CheckRequest
    from radlvlm.service.pipeline import check_input_image, deidentified_image
    from radlvlm.tasks.errorcheck import ErrorCheckTask

    if report is None:
        raise fail("--report FILE is required")
    if not report.is_file():
        raise fail(f"{report}: no such report file")
    if mode not in ("simple", "complex"):
        raise fail("--mode must be simple or complex")
    if path is not None and not path.is_file():
        raise fail(f"{path}: no such image file")
    text = report.read_text(encoding="utf-8", errors="replace")
    if not text.strip():
        raise fail(f"{report}: the report is empty")
    deidentifier = _deidentifier(key_file)
    image = None
    if path is not None:
        image = run_guarded(lambda: deidentified_image(path.read_bytes(), deidentifier, view=view))
        run_guarded(lambda: check_input_image(image))
    cleaned = deidentifier.text.deidentify(text).text
    engine = _engine(model, adapter, 96)
    try:
        result = run_guarded(lambda: engine.run(CheckRequest(report=cleaned, image=image, mode=ErrorCheckTask(mode))))
    finally:
        engine.close()
    out = {
        "model_id": result.model_id,
        "check_type": "text_only" if result.text_only else "image",
        "has_error": result.has_error,
        "confidence": result.confidence,
        "error_probability": result.error_probability,
        "calibrated": result.calibrated,
        "findings": [
            {"category": f.category.value if f.category else None, "span_in_deidentified_report": f.span}
            for f in result.findings
        ],
        "answer_valid": result.answer_valid,
        "reason": result.reason,
        "timings": result.timings.as_dict(),
    }
    typer.echo(json.dumps(out, indent=2))
