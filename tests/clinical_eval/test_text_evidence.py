"""The text-only ceiling: an injected error is revealed only where the rest of the report disagrees with it."""

from __future__ import annotations

import pytest

from radlvlm.clinical_eval.text_evidence import edit_reveals_error, text_reveals_error

NORMAL = "FINDINGS: The lungs are clear. Heart size is normal.\nIMPRESSION: No acute cardiopulmonary abnormality."
OPACITY = (
    "FINDINGS: There is a right upper lobe opacity. Heart size is normal.\nIMPRESSION: Right upper lobe pneumonia."
)


@pytest.mark.parametrize(
    ("errored", "category", "comparison", "revealed"),
    [
        # A side changed where the same finding is named again (opacity / pneumonia): revealed.
        (OPACITY.replace("IMPRESSION: Right", "IMPRESSION: Left"), "wrong_location", "", True),
        # A side changed on a finding named once: nothing to compare with.
        (
            "FINDINGS: Heart size is normal. Left apical granuloma.\nIMPRESSION: No acute abnormality.",
            "wrong_location",
            "",
            False,
        ),
        # A significant finding added under an impression that calls the study normal: revealed.
        (
            NORMAL.replace("Heart size is normal.", "Heart size is normal. Large left pleural effusion."),
            "false_finding",
            "",
            True,
        ),
        # A device added to a normal study: invisible in text.
        (
            NORMAL.replace("Heart size is normal.", "Heart size is normal. Endotracheal tube in place."),
            "false_finding",
            "",
            False,
        ),
        # A change from a prior under a COMPARISON that says there is none, and one that cites a prior.
        (NORMAL.replace("The lungs are clear.", "The effusion has resolved."), "unsupported_comparison", "None.", True),
        (
            NORMAL.replace("The lungs are clear.", "The effusion has resolved."),
            "unsupported_comparison",
            "PA 2019",
            False,
        ),
    ],
)
def test_revealed_where_the_rest_of_the_report_disagrees(
    errored: str, category: str, comparison: str, revealed: bool
) -> None:
    original = OPACITY if "opacity" in errored.lower() else NORMAL
    if "granuloma" in errored:
        original = errored.replace("Left apical", "Right apical")
    assert text_reveals_error(original, errored, category, comparison) is revealed


def test_an_injector_row_is_judged_on_the_report_rebuilt_from_its_edit() -> None:
    """The training injector's rows carry the edit (span, original text); the report before it is rebuilt."""
    errored = OPACITY.replace("IMPRESSION: Right", "IMPRESSION: Left")
    start = errored.index("Left upper lobe pneumonia")
    row = {
        "text": errored,
        "has_error": True,
        "category": "wrong_location",
        "span": [start, start + 4],
        "original": "Right",
    }
    assert edit_reveals_error(row)
    assert not edit_reveals_error({"text": OPACITY, "has_error": False, "category": None, "span": None})
