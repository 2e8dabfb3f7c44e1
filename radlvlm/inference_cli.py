"""``radlvlm draft PATH`` and ``radlvlm check [PATH] --report FILE``: the model on one study, from the shell.

They call the same use cases as the service (:mod:`radlvlm.pipeline`: DICOM de-identified before the model,
input guardrails, PHI scan of the output, one audit entry) on a runtime built from the same ``RADLVLM_*``
settings (backend, device, dtype, project key, audit trail), and print the answer as JSON. ``--model`` names a
radlvlm model directory; without it they run the embedded default model shipped in the package
(:mod:`radlvlm.model.default`: demonstration only, not for clinical use).
"""

from __future__ import annotations

import getpass
import json
import re
from pathlib import Path
from typing import Annotated, Any

import typer

from radlvlm.cli_support import fail, run_guarded

ModelOption = Annotated[
    Path | None,
    typer.Option(
        help="A radlvlm model directory (default: RADLVLM_MODEL_DIR, else the embedded model).", file_okay=False
    ),
]
AdapterOption = Annotated[Path | None, typer.Option(help="A MoLE or LoRA adapter directory.", file_okay=False)]
KeyOption = Annotated[
    Path | None,
    typer.Option(help="Project key for pseudonyms (default: RADLVLM_DEID_KEY_PATH, else the radlvlm state folder)."),
]
VIEW_HELP = (
    "PA or AP: the view of a PNG/JPEG, which states none (default PA, and the answer says it was assumed; "
    "pass --view AP for an AP film). A DICOM's header gives its own."
)


def _runtime(model: Path | None, adapter: Path | None, key_file: Path | None, **overrides: Any) -> Any:
    """The runtime of the RADLVLM_* settings with this command's options on top."""
    from radlvlm.pipeline import build_runtime
    from radlvlm.settings import load_settings

    for folder, option in ((model, "--model"), (adapter, "--adapter")):
        if folder is not None and not folder.is_dir():
            raise fail(f"{option} {folder}: no such directory")
    values = {"model_dir": model, "adapter_dir": adapter, "deid_key_path": key_file, **overrides}
    settings = run_guarded(lambda: load_settings(**values))
    # The model loads on first use, after the input was read and checked: a wrong file is refused at once.
    return run_guarded(lambda: build_runtime(settings, lazy=True))


def _caller() -> Any:
    from radlvlm.pipeline import Caller

    # The audit's actor is a short code: the login name when it is one, else just "cli".
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # a container user without a passwd entry or login variables
        user = ""
    return Caller(f"cli:{user}" if re.fullmatch(r"[A-Za-z0-9_.\-]{1,48}", user or "") else "cli", "cli")


def _image_file(path: Path, view: str | None) -> Any:
    from radlvlm.pipeline import StudyInput

    if not path.exists():
        raise fail(f"{path}: no such file")
    if not path.is_file():
        raise fail(f"{path}: not a file")
    if view is not None and view not in ("PA", "AP"):
        raise fail("--view must be PA or AP")
    return run_guarded(lambda: StudyInput(data=path.read_bytes(), view=view, name=str(path)))


def draft_command(
    path: Annotated[
        Path, typer.Argument(help="A frontal chest radiograph: DICOM, or PNG/JPEG (taken as PA unless --view AP).")
    ],
    model: ModelOption = None,
    adapter: AdapterOption = None,
    indication: Annotated[str | None, typer.Option(help="Reason for the exam.")] = None,
    view: Annotated[str | None, typer.Option(help=VIEW_HELP)] = None,
    max_new_tokens: int = 256,
    key_file: KeyOption = None,
    explain: Annotated[
        bool,
        typer.Option(
            "--explain",
            help="Also show where the finding classifier saw each stated finding (activation_maps: transparent "
            "PNGs, base64, to lay over the image).",
        ),
    ] = False,
) -> None:
    """Draft findings and impression for one study and print them as JSON."""
    from radlvlm.pipeline import draft_study
    from radlvlm.pipeline.output import DISCLAIMER

    study = _image_file(path, view)
    runtime = _runtime(model, adapter, key_file, max_new_tokens=max_new_tokens)
    try:
        outcome = run_guarded(lambda: draft_study(runtime, study, _caller(), indication=indication, explain=explain))
    finally:
        runtime.close()
    answer = outcome.answer()
    out = {**answer, "timings": {**outcome.timings.as_dict(), "request_ms": outcome.request_ms}}
    out["disclaimer"] = DISCLAIMER
    typer.echo(json.dumps(out, indent=2))


def check_command(
    path: Annotated[
        Path | None, typer.Argument(help="The study's frontal radiograph; omit for a text-only check.")
    ] = None,
    report: Annotated[Path | None, typer.Option(help="The report text file to check.", dir_okay=False)] = None,
    mode: Annotated[str, typer.Option(help="simple (yes/no) or complex (type and span).")] = "simple",
    model: ModelOption = None,
    adapter: AdapterOption = None,
    view: Annotated[str | None, typer.Option(help=VIEW_HELP)] = None,
    key_file: KeyOption = None,
) -> None:
    """Check a report for errors (against the image when given) and print the verdict as JSON."""
    from radlvlm.pipeline import check_report
    from radlvlm.pipeline.output import DISCLAIMER

    if report is None:
        raise fail("--report FILE is required")
    if not report.is_file():
        raise fail(f"{report}: no such report file")
    if mode not in ("simple", "complex"):
        raise fail("--mode must be simple or complex")
    image = _image_file(path, view) if path is not None else None
    text = report.read_text(encoding="utf-8", errors="replace")
    if not text.strip():
        raise fail(f"{report}: the report is empty")
    runtime = _runtime(model, adapter, key_file)
    try:
        outcome = run_guarded(lambda: check_report(runtime, text, _caller(), image=image, mode=mode))
    finally:
        runtime.close()
    out = {**outcome.answer(), "timings": {**outcome.timings.as_dict(), "request_ms": outcome.request_ms}}
    out["disclaimer"] = DISCLAIMER
    typer.echo(json.dumps(out, indent=2))
