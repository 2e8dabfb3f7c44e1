"""The ``radlvlm`` command line: one typer app, one verb per job.

Every radlvlm error becomes one line on stderr and exit code 2; no traceback reaches the user.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from radlvlm.cli_support import fail, progress_bar, run_guarded, stderr
from radlvlm.clinical_eval.cli import eval_app
from radlvlm.inference_cli import check_command, draft_command
from radlvlm.integrations.cli import pacs_app
from radlvlm.model.cli import convert_app
from radlvlm.safety.cli import audit_app, deid_command
from radlvlm.service.serve import apikey_command, serve_command
from radlvlm.training.cli import train_command
from radlvlm.training.embedded_cli import embedded_app

app = typer.Typer(
    name="radlvlm",
    help="Open clinical radiology assistant: chest X-ray report drafting and error checking.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

app.add_typer(convert_app, name="convert")
app.add_typer(eval_app, name="eval")
app.command("deid")(deid_command)
app.add_typer(audit_app, name="audit")
app.add_typer(pacs_app, name="pacs")
app.add_typer(embedded_app, name="embedded")
app.command("serve")(serve_command)
app.command("apikey")(apikey_command)
app.command("draft")(draft_command)
app.command("train")(train_command)
app.command("check")(check_command)

SAMPLE_STUDY = "RG1_UNCR.dcm"  # a real CR chest PA (MONOCHROME1) shipped by the pydicom-data package (MIT)


@app.callback()
def main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress details to stderr.")] = False,
) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    # pydicom logs each failed decoder attempt with a traceback; radlvlm reports the failure itself, in one
    # line, so those records are only shown when asked for. (Import first: pydicom sets its level on import.)
    import pydicom.config  # noqa: F401

    logging.getLogger("pydicom").setLevel(logging.DEBUG if verbose else logging.CRITICAL)


@app.command()
def version() -> None:
    """Print the radlvlm version and the versions of the libraries it decodes and computes with."""
    from importlib.metadata import version as installed  # metadata, not imports: MONAI alone takes seconds

    libraries = ", ".join(f"{name} {installed(name)}" for name in ("torch", "pydicom", "monai"))
    typer.echo(f"radlvlm {installed('radlvlm')} ({libraries})")


@app.command()
def inspect(
    path: Annotated[
        Path | None, typer.Argument(help="A DICOM/PNG/JPEG file, a folder (searched recursively) or a .zip.")
    ] = None,
    sample: Annotated[
        bool,
        typer.Option("--sample", help=f"Inspect the bundled sample study ({SAMPLE_STUDY}, needs the 'samples' extra)."),
    ] = False,
    frame: Annotated[
        int | None, typer.Option(help="For multi-frame images, the frame to read (default: refuse multi-frame).")
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write the JSON here instead of stdout.")
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar on stderr.")] = True,
) -> None:
    """Summarise the studies under PATH as JSON (UIDs, views, modality, geometry; no patient data)."""
    from radlvlm.imaging.loader import inspect_path

    if sample == (path is not None):
        raise fail("give either PATH or --sample")
    target = _sample_path() if sample else path
    assert target is not None
    with progress_bar("reading images", progress and sys.stderr.isatty()) as bar:
        task = bar.add_task("read", total=None)

        def advance(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        summary: dict[str, Any] = run_guarded(lambda: inspect_path(target, frame=frame, on_progress=advance))
    text = json.dumps(summary, indent=2)
    if output is not None:
        output.write_text(text + "\n")
    else:
        typer.echo(text)
    if summary["n_failed"]:
        stderr.print(f"{summary['n_failed']} file(s) could not be read; see 'failures' in the output", highlight=False)
    if summary["n_images"] == 0:
        raise fail(f"{target}: no readable image ({summary['n_failed']} file(s) failed)")


def _sample_path() -> Path:
    from pydicom.data import get_testdata_file

    try:
        found = get_testdata_file(SAMPLE_STUDY, download=False)
    except Exception:  # pydicom reports a missing optional data source in several ways
        found = None
    if not found:
        raise fail(f"sample study {SAMPLE_STUDY} is not installed: pip install 'radlvlm[samples]'")
    return Path(str(found))


if __name__ == "__main__":
    app()


def run(argv: list[str] | None = None) -> None:
    """The ``radlvlm`` console script: the typer app, with usage errors (a missing argument, an unknown option
    or verb) said in one line with exit code 2, like every other refusal, instead of click's framed box."""
    try:
        code = app(args=argv, prog_name="radlvlm", standalone_mode=False)
    except KeyboardInterrupt:
        fail("interrupted")
        raise SystemExit(130) from None
    except Exception as e:  # click's UsageError family (typer vendors click, so matched by what it offers)
        exit_code, message = getattr(e, "exit_code", None), getattr(e, "format_message", None)
        if not isinstance(exit_code, int) or message is None:
            raise
        fail(f"{message()} (see 'radlvlm --help')")
        raise SystemExit(exit_code) from None
    raise SystemExit(code if isinstance(code, int) else 0)
