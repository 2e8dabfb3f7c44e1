"""Drafting: the abstention message is one fixed sentence that the draft parser recognises."""

from __future__ import annotations

import pytest

from radlvlm.tasks.drafting import ABSTENTION_MESSAGE, find_repetition, is_abstention, parse_draft


def test_the_abstention_message_parses_as_an_abstention() -> None:
    draft = parse_draft(ABSTENTION_MESSAGE)
    assert draft.abstained and draft.findings == "" and draft.impression == ""
    assert draft.text == ABSTENTION_MESSAGE
    assert is_abstention("  no report: not a chest film") and is_abstention("NO REPORT")


def test_reports_are_not_abstentions() -> None:
    for text in ("FINDINGS: No report of effusion. IMPRESSION: Normal.", "There is no report of trauma.", ""):
        assert not parse_draft(text).abstained
    draft = parse_draft("FINDINGS: The lungs are clear. IMPRESSION: Normal chest.")
    assert (draft.findings, draft.impression, draft.abstained) == ("The lungs are clear.", "Normal chest.", False)


@pytest.mark.parametrize(
    "text",
    [
        "FINDINGS: Chest radiograph chest radiograph chest radiograph chest radiograph",
        "FINDINGS: The the the the lungs.",
        "IMPRESSION: Pleural effusion. Pleural effusion. Pleural effusion.",
        "FINDINGS: " + " ".join(["effusion", "left", "right", "base"] * 2 + ["effusion", "left"] * 14),
    ],
)
def test_repetition_loops_are_found(text: str) -> None:
    assert find_repetition(text) is not None


@pytest.mark.parametrize(
    "text",
    [
        "FINDINGS: No effusion. No pneumothorax. No consolidation.\nIMPRESSION: No acute cardiopulmonary abnormality.",
        "FINDINGS: Heart size normal. Lungs clear. XXXX XXXX are normal.\nIMPRESSION: Normal chest x-XXXX.",
        "FINDINGS: Small left effusion. Small left effusion is unchanged.\nIMPRESSION: Small left pleural effusion.",
        "",
    ],
)
def test_real_report_wording_is_not_a_loop(text: str) -> None:
    assert find_repetition(text) is None


def test_no_iu_report_reads_as_a_loop() -> None:
    """The detector must never withhold what radiologists actually write: every IU-Xray report passes."""
    import json
    from pathlib import Path

    data = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "iu_xray"
    if not data.is_dir():
        pytest.skip("../shared/data/iu_xray is absent (real reports needed for this check)")
    rows = [json.loads(line) for split in ("train", "validation") for line in (data / f"{split}.jsonl").open()]
    flagged = [r["uid"] for r in rows if find_repetition(f"FINDINGS: {r['findings']}\nIMPRESSION: {r['impression']}")]
    assert len(rows) > 3000 and flagged == []


def test_a_sentence_said_twice_in_a_section_is_said_once() -> None:
    from radlvlm.tasks.drafting import said_once

    assert said_once("Pneumonia. Pneumonia. Airspace opacity.") == "Pneumonia. Airspace opacity."
    assert said_once("No effusion. no effusion") == "No effusion."
    kept = "The heart is normal in size. No pneumothorax. The lungs are clear."
    assert said_once(kept) == kept and said_once("") == ""
