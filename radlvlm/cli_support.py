"""Shared pieces of the command line: one-line errors with exit code 2, progress bars on stderr.

Every verb module (``radlvlm.cli``, ``radlvlm.safety.cli``, ``radlvlm.clinical_eval.cli`` …) uses these, so a
radlvlm error always ends as one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from radlvlm.errors import EngineError, RadlvlmError

T = TypeVar("T")

stderr = Console(stderr=True)


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print one line to stderr and return the exit to raise."""
    stderr.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def run_guarded(job: Callable[[], T]) -> T:
    """Run ``job``; radlvlm errors exit 2 with their one-line reason (the caller can fix them), except the
    engine or model failing on the input, radlvlm's own fault, which exits 1."""
    try:
        return job()
    except EngineError as e:
        raise fail(f"{e} (a fault in radlvlm or its model, not in the input)", code=1) from None
    except RadlvlmError as e:
        raise fail(str(e)) from None


def progress_bar(description: str, enabled: bool) -> Progress:
    return Progress(
        TextColumn(description),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=stderr,
        transient=True,
        disable=not enabled,
    )
