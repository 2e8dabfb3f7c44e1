"""Drafting: the abstention message is one fixed sentence that the draft parser recognises."""

from __future__ import annotations

from radlvlm.tasks.drafting import ABSTENTION_MESSAGE, is_abstention, parse_draft


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
