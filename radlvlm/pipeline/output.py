"""What goes back out: generated text scanned for PHI (replaced before it leaves) and for unsupported claims
(flagged for the reader), streamed sentences released only after their scan, and error spans found in the
de-identified report mapped back to the text the caller sent."""

from __future__ import annotations

import re
from collections.abc import Iterator

from radlvlm.pipeline.flags import Flag, flag_of
from radlvlm.safety.dicom_deid import DicomDeidentifier
from radlvlm.safety.guardrails import output_findings
from radlvlm.tasks.drafting import find_repetition

# Every door shows it beside a draft or a check verdict (the API's answers, the CLI's JSON, the page).
DISCLAIMER = "AI-generated preliminary draft for radiologist review; not a diagnosis and not for clinical use."


def clean_output(
    text: str, deidentifier: DicomDeidentifier, *, has_prior: bool, has_lateral: bool
) -> tuple[str, list[Flag]]:
    """Generated text with any PHI replaced, and the guardrail flags raised on it."""
    findings = output_findings(text, has_prior=has_prior, has_lateral=has_lateral, deidentifier=deidentifier.text)
    if any(f.severity == "refuse" for f in findings):
        text = deidentifier.text.deidentify(text).text
    return text, [flag_of(f) for f in findings]


def map_span_to_original(
    span: tuple[int, int], original: str, cleaned: str, replaced: list[tuple[int, int]]
) -> tuple[int, int]:
    """Map character offsets in de-identified text back to the text the caller sent.

    Text outside replaced spans is identical in both, so offsets shift by the length differences of the
    replacements before them; an offset inside a replacement maps to the whole original span.
    """
    pieces: list[tuple[int, int, int, int]] = []  # (clean start, clean end, original start, original end)
    cursor_o = cursor_c = 0
    spans = sorted(replaced)
    for index, (start, end) in enumerate(spans):
        cursor_c += start - cursor_o
        following = original[end : spans[index + 1][0]] if index + 1 < len(spans) else original[end:]
        found = cleaned.find(following, cursor_c) if following else len(cleaned)
        replacement_end = found if found >= cursor_c else cursor_c
        pieces.append((cursor_c, replacement_end, start, end))
        cursor_c, cursor_o = replacement_end, end

    def convert(offset: int, is_end: bool) -> int:
        shift = 0
        for clean_start, clean_end, orig_start, orig_end in pieces:
            if offset < clean_start or (offset == clean_start and not is_end):
                break
            if offset < clean_end or (offset == clean_end and is_end):
                return orig_end if is_end else orig_start
            shift = orig_end - clean_end
        return max(0, min(len(original), offset + shift))

    start, end = span
    return convert(start, False), convert(end, True)


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def release_sentences(pieces: Iterator[str], deidentifier: DicomDeidentifier) -> Iterator[tuple[str, list[Flag]]]:
    """Group streamed text into sentences and release each only after its PHI scan (PHI replaced).

    Release stops at the first sentence that would make the released text a repetition loop
    (:func:`radlvlm.tasks.drafting.find_repetition`); the final parsed draft says ``repetition`` then.
    """
    buffer, released = "", ""
    for piece in pieces:
        buffer += piece
        parts = _SENTENCE_END.split(buffer)
        for sentence in parts[:-1]:
            if sentence.strip():
                if find_repetition(f"{released} {sentence}") is not None:
                    return
                released += f" {sentence}"
                yield clean_output(sentence, deidentifier, has_prior=False, has_lateral=False)
        buffer = parts[-1]
    if buffer.strip() and find_repetition(f"{released} {buffer}") is None:
        yield clean_output(buffer, deidentifier, has_prior=False, has_lateral=False)
