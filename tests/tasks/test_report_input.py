"""What a report must be for a check to mean something; real reports must never be refused."""

from __future__ import annotations

import json

import pytest
from testsupport import shared_path

from radlvlm.tasks.errorcheck import compose_report
from radlvlm.tasks.report_input import check_input_problem


@pytest.mark.parametrize(
    ("report", "with_image", "expected"),
    [
        ("FINDINGS: Lungs clear.\nIMPRESSION: Normal chest.", False, None),
        ("IMPRESSION: Normal chest.", True, None),
        ("IMPRESSION: Normal chest.", False, "no findings"),
        ("FINDINGS: Lungs clear.", False, "no impression"),
        ("   ", True, "empty"),
        ("FINDINGS: \nIMPRESSION: ", True, "no findings or impression"),
        (
            "FINDINGS: Corazón de tamaño normal. Pulmones sin consolidación.\nIMPRESSION: Sin hallazgos.",
            False,
            "English",
        ),
        ("FINDINGS: 心脏大小正常。\nIMPRESSION: 无异常。", True, "English"),
    ],
)
def test_reasons(report: str, with_image: bool, expected: str | None) -> None:
    problem = check_input_problem(report, with_image=with_image)
    assert problem is None if expected is None else expected in problem


def test_no_real_report_with_both_sections_is_refused() -> None:
    folder = shared_path("iu_xray")
    rows = [
        json.loads(line) for split in ("train", "validation", "test") for line in (folder / f"{split}.jsonl").open()
    ]
    texts = [compose_report(r["findings"], r["impression"]) for r in rows if r["findings"] and r["impression"]]
    refused = [t for t in texts if check_input_problem(t, with_image=False) is not None]
    assert len(texts) > 3000 and refused == []
