"""Command-line verbs of ``radlvlm.safety``: ``radlvlm deid IN OUT`` and ``radlvlm audit verify|head``.

Wired into ``radlvlm.cli`` as ``app.command("deid")(deid_command)`` and ``app.add_typer(audit_app, name="audit")``.

``deid`` writes only de-identified files under OUT, named by their new UIDs (input file names can carry
names or MRNs). The per-file outcome report names the input files, so it is written beside OUT, not in it,
and it doubles as the journal that makes a run resumable. The pseudonym map (original → pseudonym) is
written only when asked, and then only encrypted with a passphrase read from an environment variable (a
command-line argument would show in the process list and shell history). Nothing with PHI goes to logs.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from pathlib import Path
from typing import IO, TYPE_CHECKING, Annotated, Any

import typer

from radlvlm.cli_support import fail, progress_bar, run_guarded, stderr
from radlvlm.errors import InputError

if TYPE_CHECKING:  # imported inside the functions: Presidio and spaCy take seconds to import, and
    # `radlvlm --help` or any other verb must not pay for them.
    from radlvlm.safety.audit import AuditTrail
    from radlvlm.safety.dicom_deid import DicomDeidentifier, FileOutcome
    from radlvlm.safety.profile import DeidOptions
    from radlvlm.safety.pseudonyms import PseudonymMap
    from radlvlm.safety.text_deid import ReportDeidentifier

__all__ = ["audit_app", "deid_command", "run_deid"]

_TEXT_SUFFIXES = {".txt"}


def _inputs(source: Path) -> list[Path]:
    if source.is_file():
        return [source]
    files = [p for p in sorted(source.rglob("*")) if p.is_file() and not p.name.startswith(".")]
    if not files:
        raise InputError(f"{source}: no files to de-identify")
    return files


def _load_journal(report: Path) -> dict[str, dict[str, Any]]:
    """Earlier outcomes by source (the last line for a source wins), for resuming."""
    done: dict[str, dict[str, Any]] = {}
    if report.exists():
        for line in report.read_text("utf-8").splitlines():
            try:
                row = json.loads(line)
                done[row["source"]] = row
            except (ValueError, KeyError):
                continue  # a line cut by an interrupted run
    return done


def _fingerprint(path: Path) -> list[int]:
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns]


def _check_paths(
    source: Path,
    output: Path,
    *,
    key_file: Path,
    report: Path | None,
    map_path: Path | None,
    map_passphrase: str | None,
) -> tuple[Path, Path]:
    """Refuse a layout that would leak PHI into OUT or read outputs back as inputs, before anything is written.

    Returns OUT resolved and the outcome report's path (``<OUT>.report.jsonl`` beside OUT by default).
    """
    if not source.exists():
        raise InputError(f"{source}: no such file or folder")
    output = output.resolve()
    if source.is_dir() and (output == source.resolve() or source.resolve() in output.parents):
        raise InputError("OUT must not be inside IN (de-identified files would be read as inputs)")
    if map_path is not None and not map_passphrase:
        raise InputError("--map needs a passphrase in the environment variable named by --map-passphrase-env")
    if key_file.resolve().is_relative_to(output):
        raise InputError("the project key must not be stored inside OUT")
    report = report or output.with_name(output.name + ".report.jsonl")
    if report.resolve().is_relative_to(output):
        raise InputError("the outcome report names input files; it must not be written inside OUT")
    return output, report


def _project_key(key_file: Path) -> bytes:
    """The project key, created on first use (and said so: the user must keep the new file safe)."""
    from radlvlm.safety.pseudonyms import load_or_create_key

    key, created = load_or_create_key(key_file)
    if created:
        stderr.print(f"created a new project key at {key_file}; keep it secret and away from OUT", highlight=False)
    return key


def _pseudonym_map(key: bytes, map_path: Path | None, map_passphrase: str | None) -> PseudonymMap:
    """The project's pseudonyms, continuing an earlier run's map when one is asked for and exists."""
    from radlvlm.safety.pseudonyms import PseudonymMap

    pseudonyms = PseudonymMap(key, record=map_path is not None)
    if map_path is not None and map_path.exists():
        pseudonyms.merge(PseudonymMap.load_encrypted(map_path, map_passphrase or ""))
    return pseudonyms


def _report_deidentifier(files: list[Path]) -> ReportDeidentifier | None:
    """The report de-identifier, built only when there are reports to clean (Presidio takes seconds to import)."""
    if not any(p.suffix.lower() in _TEXT_SUFFIXES for p in files):
        return None
    from radlvlm.safety.text_deid import ReportDeidentifier

    return ReportDeidentifier()


def _audit_trail(audit: Path | None, key: bytes, output: Path) -> AuditTrail | None:
    """The audit trail to record written files in, if one is asked for; never inside OUT."""
    from radlvlm.safety.audit import AuditTrail

    # Keyed with the project key: entries carry MACs, and content digests cannot be tested against guesses.
    trail = AuditTrail(audit, key=key) if audit is not None else None
    if trail is not None and audit is not None and audit.resolve().is_relative_to(output):
        raise InputError("the audit trail must not be written inside OUT")
    return trail


def _already_written(previous: dict[str, Any] | None, path: Path) -> bool:
    """Whether an earlier run wrote this very file (same size and mtime) and its output is still there."""
    return bool(
        previous is not None
        and previous.get("status") == "written"
        and previous.get("fingerprint") == _fingerprint(path)
        and previous.get("output")
        and Path(previous["output"]).exists()
    )


def _record_in_audit(trail: AuditTrail, outcome: FileOutcome, path: Path, *, actor: str, options: DeidOptions) -> None:
    """One audit entry for a written file: hashes of its input and output bytes, under the new study UID."""
    if outcome.status == "written" and outcome.output and outcome.study:
        trail.record(
            actor=actor,
            action="deid",
            study=outcome.study,
            request=path.read_bytes(),
            response=Path(outcome.output).read_bytes(),
            details={"profile": "annex_e_basic", **dict.fromkeys(options.enabled, True)},
        )


def _journal_row(label: str, outcome: FileOutcome, path: Path) -> dict[str, Any]:
    """The outcome report's line for one file; its fingerprint lets a resumed run skip the file."""
    return {
        "source": label,
        "status": outcome.status,
        "output": outcome.output,
        "reason": outcome.reason,
        "actions": outcome.actions,
        "fingerprint": _fingerprint(path),
    }


def _deid_files(
    files: list[Path],
    log: IO[str],
    *,
    journal: dict[str, dict[str, Any]],
    output: Path,
    deid: DicomDeidentifier,
    text: ReportDeidentifier | None,
    pseudonyms: PseudonymMap,
    trail: AuditTrail | None,
    actor: str,
    options: DeidOptions,
    on_progress: Any,
) -> Counter[str]:
    """De-identify each file not already done, journaling each outcome as it comes; counts by status."""
    counts: Counter[str] = Counter()
    for done, path in enumerate(files, 1):
        label = str(path)
        if _already_written(journal.get(label), path):
            counts["skipped"] += 1
        else:
            outcome = _one(path, label, output, deid, text, pseudonyms)
            counts[outcome.status] += 1
            if trail is not None:
                _record_in_audit(trail, outcome, path, actor=actor, options=options)
            log.write(json.dumps(_journal_row(label, outcome, path)) + "\n")
            log.flush()  # a line per file on disk at once: an interrupted run resumes after the last one
        if on_progress is not None:
            on_progress(done, len(files))
    return counts


def run_deid(
    source: Path,
    output: Path,
    *,
    key_file: Path,
    options: DeidOptions,
    report: Path | None = None,
    map_path: Path | None = None,
    map_passphrase: str | None = None,
    audit: Path | None = None,
    actor: str = "radlvlm",
    on_progress: Any = None,
) -> dict[str, Any]:
    """De-identify every file under ``source`` into ``output``; returns a PHI-free summary.

    Args:
        source (Path): a DICOM or ``.txt`` report file, or a folder searched recursively.
        output (Path): the folder for de-identified files (created).
        key_file (Path): the project key (created when missing); keep it away from ``output``.
        options (DeidOptions): Annex E options and policies.
        report (Path | None, default None): per-file outcome journal (JSON lines); default ``<output>.report.jsonl``.
        map_path (Path | None, default None): where to write the encrypted pseudonym map; None: not written.
        map_passphrase (str | None, default None): the map's passphrase (required with ``map_path``).
        audit (Path | None, default None): audit trail to record each written file in (hashes of the input
            and output bytes, the new study UID, ``actor``).
        actor (str, default "radlvlm"): who runs the export, as a short code.
        on_progress (callable | None): called with (done, total) after each file.
    """
    from radlvlm.safety.dicom_deid import DicomDeidentifier

    output, report = _check_paths(
        source, output, key_file=key_file, report=report, map_path=map_path, map_passphrase=map_passphrase
    )
    files = _inputs(source)
    key = _project_key(key_file)
    pseudonyms = _pseudonym_map(key, map_path, map_passphrase)
    text = _report_deidentifier(files)
    deid = DicomDeidentifier(pseudonyms, options, text)
    trail = _audit_trail(audit, key, output)
    journal = _load_journal(report)
    output.mkdir(parents=True, exist_ok=True)
    report.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(report, "a", encoding="utf-8") as log:
            counts = _deid_files(
                files,
                log,
                journal=journal,
                output=output,
                deid=deid,
                text=text,
                pseudonyms=pseudonyms,
                trail=trail,
                actor=actor,
                options=options,
                on_progress=on_progress,
            )
    finally:
        # Written even after an interruption, so a resumed run's map still covers the files done so far.
        if map_path is not None:
            pseudonyms.save_encrypted(map_path, map_passphrase or "")
    return {
        "files": len(files),
        "written": counts["written"],
        "skipped": counts["skipped"],
        "failed": counts["failed"],
        "report": str(report),
        "map": str(map_path) if map_path is not None else None,
    }


def _one(
    path: Path,
    label: str,
    output: Path,
    deid: DicomDeidentifier,
    text: ReportDeidentifier | None,
    pseudonyms: PseudonymMap,
) -> FileOutcome:
    from radlvlm.safety.dicom_deid import FileOutcome
    from radlvlm.safety.vocabulary import ENGLISH_SHARE, english_share

    if path.suffix.lower() in _TEXT_SUFFIXES:
        try:
            content = path.read_text("utf-8")
        except (OSError, UnicodeDecodeError) as e:
            return FileOutcome(label, "failed", reason=f"{label}: not a UTF-8 text report ({type(e).__name__})")
        share = english_share(content)
        if share is None or share < ENGLISH_SHARE:
            # Fail closed: what does not read as report text (encoded data, another language) is where the
            # de-identifier's recognisers are least sure to find identifiers.
            return FileOutcome(label, "failed", reason=f"{label}: does not read as an English report; not exported")
        assert text is not None  # built by run_deid whenever there is a .txt input
        result = text.deidentify(content, pseudonyms)
        # The report's name can hold PHI too: it is replaced by a keyed pseudonym of the input path.
        destination = output / "reports" / f"{pseudonyms.identifier(label, 'TXT')}.txt"
        destination.parent.mkdir(parents=True, exist_ok=True)
        destination.write_text(result.text, "utf-8")
        return FileOutcome(label, "written", str(destination), actions=result.counts, study=destination.stem)
    return deid.deidentify_file(path, output, name=label, by_uid=True)


def deid_command(
    source: Annotated[Path, typer.Argument(help="A DICOM file or .txt report, or a folder (searched recursively).")],
    output: Annotated[Path, typer.Argument(help="Folder for the de-identified files (named by their new UIDs).")],
    key_file: Annotated[
        Path | None,
        typer.Option(
            "--key-file",
            help="Project key (created if missing; default: RADLVLM_DEID_KEY_PATH or the radlvlm state folder). "
            "Same key: same pseudonyms.",
        ),
    ] = None,
    modified_dates: Annotated[
        bool, typer.Option("--modified-dates", help="Retain Longitudinal Temporal Information, Modified Dates.")
    ] = False,
    full_dates: Annotated[bool, typer.Option("--full-dates", help="Retain Longitudinal, Full Dates.")] = False,
    patient_characteristics: Annotated[
        bool, typer.Option("--patient-characteristics", help="Retain Patient Characteristics (sex, age…).")
    ] = False,
    device_identity: Annotated[bool, typer.Option("--device-identity", help="Retain Device Identity.")] = False,
    institution_identity: Annotated[
        bool, typer.Option("--institution-identity", help="Retain Institution Identity.")
    ] = False,
    retain_uids: Annotated[bool, typer.Option("--retain-uids", help="Retain UIDs (no remapping).")] = False,
    clean_descriptors: Annotated[bool, typer.Option("--clean-descriptors", help="Clean Descriptors.")] = False,
    clean_structured_content: Annotated[
        bool, typer.Option("--clean-structured-content", help="Clean Structured Content.")
    ] = False,
    safe_private: Annotated[
        Path | None,
        typer.Option(help='Retain Safe Private: JSON list of ["creator", group, element byte] kept.'),
    ] = None,
    ocr: Annotated[bool, typer.Option("--ocr", help="Search pixels for burned-in text with tesseract.")] = False,
    burned_in: Annotated[str, typer.Option(help="Burned-in text: 'refuse' the image or 'redact' the text.")] = "refuse",
    report: Annotated[
        Path | None, typer.Option(help="Per-file outcome journal (default OUT.report.jsonl, beside OUT).")
    ] = None,
    map_path: Annotated[
        Path | None, typer.Option("--map", help="Write the pseudonym map here, encrypted (default: not written).")
    ] = None,
    map_passphrase_env: Annotated[
        str, typer.Option(help="Environment variable holding the map passphrase.")
    ] = "RADLVLM_MAP_PASSPHRASE",
    audit: Annotated[
        Path | None, typer.Option(help="Record each written file in this audit trail (hashes, new study UID).")
    ] = None,
    actor: Annotated[str, typer.Option(help="Who runs the export (a short code) for the audit trail.")] = "radlvlm",
    progress: Annotated[bool, typer.Option(help="Show a progress bar on stderr.")] = True,
) -> None:
    """De-identify DICOM files and text reports (PS3.15 Annex E; docs/deidentification.md says what is not covered)."""
    options = run_guarded(
        lambda: _deid_options(
            safe_private,
            modified_dates=modified_dates,
            full_dates=full_dates,
            patient_characteristics=patient_characteristics,
            device_identity=device_identity,
            institution_identity=institution_identity,
            retain_uids=retain_uids,
            clean_descriptors=clean_descriptors,
            clean_structured_content=clean_structured_content,
            ocr=ocr,
            burned_in=burned_in,
        )
    )
    summary = _run_deid_with_progress(
        source,
        output,
        options=options,
        key_file=key_file,
        report=report,
        map_path=map_path,
        map_passphrase_env=map_passphrase_env,
        audit=audit,
        actor=actor,
        show_progress=progress and sys.stderr.isatty(),
    )
    _report_outcome(summary)


def _deid_options(
    safe_private: Path | None,
    *,
    modified_dates: bool,
    full_dates: bool,
    patient_characteristics: bool,
    device_identity: bool,
    institution_identity: bool,
    retain_uids: bool,
    clean_descriptors: bool,
    clean_structured_content: bool,
    ocr: bool,
    burned_in: str,
) -> DeidOptions:
    """The Annex E options the command line asks for (``--safe-private`` read from its JSON file)."""
    from radlvlm.safety.profile import DeidOptions

    safe: tuple[tuple[str, int, int], ...] = ()
    if safe_private is not None:
        try:
            safe = tuple((str(c), int(g), int(e)) for c, g, e in json.loads(safe_private.read_text()))
        except (OSError, ValueError, TypeError) as e:
            raise InputError(f"{safe_private}: not a JSON list of [creator, group, element]") from e
    return DeidOptions(
        retain_long_modified_dates=modified_dates,
        retain_long_full_dates=full_dates,
        retain_patient_characteristics=patient_characteristics,
        retain_device_identity=device_identity,
        retain_institution_identity=institution_identity,
        retain_uids=retain_uids,
        clean_descriptors=clean_descriptors,
        clean_structured_content=clean_structured_content,
        retain_safe_private=bool(safe),
        safe_private=safe,
        ocr=ocr,
        burned_in=burned_in,  # type: ignore[arg-type]
    )


def _run_deid_with_progress(
    source: Path,
    output: Path,
    *,
    options: DeidOptions,
    key_file: Path | None,
    report: Path | None,
    map_path: Path | None,
    map_passphrase_env: str,
    audit: Path | None,
    actor: str,
    show_progress: bool,
) -> dict[str, Any]:
    """``run_deid`` behind a progress bar on stderr, its radlvlm errors turned into a one-line exit."""
    # The passphrase comes from the environment: an argument would show in the process list and shell history.
    passphrase = os.environ.get(map_passphrase_env) if map_path is not None else None
    with progress_bar("de-identifying", show_progress) as bar:
        task = bar.add_task("deid", total=None)

        def advance(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        return run_guarded(
            lambda: run_deid(
                source,
                output,
                key_file=key_file or _default_key_file(),  # inside the guard: settings can be invalid
                options=options,
                report=report,
                map_path=map_path,
                map_passphrase=passphrase,
                audit=audit,
                actor=actor,
                on_progress=advance,
            )
        )


def _report_outcome(summary: dict[str, Any]) -> None:
    """Print the summary; exit 2 when nothing could be de-identified, 1 when only some files could."""
    typer.echo(json.dumps(summary))
    if summary["failed"] and not summary["written"] and not summary["skipped"]:
        raise fail(f"none of the {summary['failed']} file(s) could be de-identified; see {summary['report']}")
    if summary["failed"]:  # some written, some not: exit 1, the outcome report names which
        stderr.print(
            f"{summary['failed']} file(s) were not de-identified (no output written for them); see {summary['report']}",
            highlight=False,
        )
        raise typer.Exit(1)


def _default_key_file() -> Path:
    from radlvlm.settings import load_settings

    return load_settings().deid_key_path


audit_app = typer.Typer(help="Check the tamper-evident audit trail.", no_args_is_help=True, add_completion=False)


@audit_app.command("verify")
def audit_verify(
    path: Annotated[Path, typer.Argument(help="The audit trail (JSON lines).")],
    key_file: Annotated[
        Path | None, typer.Option(help="The project key file the trail was written with (the service's DEID key).")
    ] = None,
    key_env: Annotated[
        str | None, typer.Option(help="Environment variable holding the HMAC key (hex), instead of --key-file.")
    ] = None,
    chain_only: Annotated[
        bool,
        typer.Option(
            "--chain-only",
            help="Without a key: check the hash chain alone (which whoever can write the file can recompute).",
        ),
    ] = False,
    expected_head: Annotated[
        str | None, typer.Option(help="The last hash recorded elsewhere; detects a rewritten or cut trail.")
    ] = None,
) -> None:
    """Verify every entry's hash, chain link and sequence, and with the key every MAC; exit 2 naming the first
    bad line. A trail with MACs is refused without its key unless --chain-only asks for the chain alone."""

    def verify() -> str:
        from radlvlm.safety.audit import verify_audit_trail
        from radlvlm.safety.pseudonyms import load_or_create_key

        if key_file is not None and key_env is not None:
            raise InputError("give --key-file or --key-env, not both")
        key = None
        if key_file is not None:
            key, _ = load_or_create_key(key_file, create=False)
        elif key_env is not None:
            raw = os.environ.get(key_env)
            if not raw:
                raise InputError(f"environment variable {key_env} is not set")
            try:
                key = bytes.fromhex(raw)
            except ValueError as e:
                raise InputError(f"environment variable {key_env} does not hold a hex key") from e
        result = verify_audit_trail(path, key=key, expected_head=expected_head, chain_only=chain_only)
        mode = "hashes and MACs" if result.authenticated else "hash chain only; MACs not checked without the key"
        return f"ok: {result.entries} entries verified ({mode}); head {result.head}"

    typer.echo(run_guarded(verify))


@audit_app.command("head")
def audit_head(path: Annotated[Path, typer.Argument(help="The audit trail (JSON lines).")]) -> None:
    """Print the last entry's hash, to keep somewhere the trail's writer cannot change."""

    from radlvlm.safety.audit import AuditTrail

    typer.echo(run_guarded(lambda: AuditTrail(path).head()))
