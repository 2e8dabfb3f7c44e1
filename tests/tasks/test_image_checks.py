"""Reports faithful to an image's labels or wrong about one finding, each consistent as text."""

from __future__ import annotations

import pytest

from radlvlm.reports.consistency import check_consistency
from radlvlm.reports.labeler import Label, label_report
from radlvlm.tasks.image_checks import image_check_reports, labels_report


@pytest.mark.parametrize("labels", [[], ["Effusion"], ["Pneumonia", "Infiltration"], ["Cardiomegaly", "Edema"]])
def test_the_pair_is_seeded_and_only_the_image_tells_them_apart(labels: list[str]) -> None:
    for seed in range(12):
        faithful, wrong = image_check_reports(labels, seed=seed)
        assert (faithful, wrong) == image_check_reports(labels, seed=seed)
        assert not faithful.has_error and wrong.has_error and wrong.kind in ("added", "removed", "negated")
        assert faithful.text != wrong.text
        # Neither report contradicts itself: a text-only check has nothing to find.
        assert check_consistency(faithful.text) == [] or all(f["weight"] < 1 for f in check_consistency(faithful.text))
        assert not [f for f in check_consistency(wrong.text) if f["kind"] == "contradiction"]
        if not labels:
            assert wrong.kind == "added"  # a normal image can only be given a finding it lacks


def test_the_wrong_report_says_what_the_labels_do_not() -> None:
    seen = set()
    for seed in range(40):
        _, wrong = image_check_reports(["Effusion"], seed=seed)
        labelled = label_report(wrong.text).labels
        if wrong.kind == "added":
            assert labelled["Pleural Effusion"] is Label.POSITIVE
        else:  # removed or negated: the effusion the image shows is no longer reported
            assert labelled["Pleural Effusion"] is not Label.POSITIVE
        seen.add(wrong.kind)
    assert seen == {"added", "removed", "negated"}
    assert labels_report(["No Finding"], __import__("random").Random(0)).startswith("FINDINGS: ")
