"""The image check compares what a report asserts with the classifier's reading, label by label, and says what it
cannot see; its fusion turns the evidence into one probability."""

from __future__ import annotations

from pathlib import Path

import pytest

from radlvlm.errors import InputError
from radlvlm.model.findings import ABNORMAL, ImageFindings, LabelFinding
from radlvlm.tasks.image_check import ImageCheckFusion, compare_report


def _reading(abnormal: float, effusion: float, pneumothorax: float = 0.01) -> ImageFindings:
    return ImageFindings(
        "test",
        (
            LabelFinding(ABNORMAL, abnormal, 0.5, abnormal >= 0.5, True),
            LabelFinding("Effusion", effusion, 0.3, effusion >= 0.3, True),
            LabelFinding("Pneumothorax", pneumothorax, 0.3, pneumothorax >= 0.3, False),  # not validated
        ),
    )


def _by_observation(report: str, reading: ImageFindings) -> dict[str, object]:
    return {c.observation: c for c in compare_report(report, reading).labels}


def test_a_stated_finding_the_image_does_not_show_disagrees() -> None:
    comparison = compare_report("FINDINGS: Large left pleural effusion. IMPRESSION: Effusion.", _reading(0.2, 0.05))
    rows = {c.observation: c for c in comparison.labels}
    assert rows["Pleural Effusion"].report == "positive" and rows["Pleural Effusion"].agrees is False
    assert rows["No Finding"].agrees is False  # an abnormal report on an image read as normal
    assert comparison.features["asserted"] > 0 and comparison.features["denied"] == 0
    assert "laterality (which side)" in comparison.not_checked
    assert "Pneumothorax" not in rows  # not validated: never compared


def test_a_denied_finding_the_image_shows_disagrees_and_agreement_agrees() -> None:
    rows = _by_observation("FINDINGS: No pleural effusion. IMPRESSION: Normal chest.", _reading(0.9, 0.8))
    assert rows["Pleural Effusion"].report == "negative" and rows["Pleural Effusion"].agrees is False
    assert rows["No Finding"].report == "positive" and rows["No Finding"].agrees is False
    agree = compare_report("FINDINGS: No pleural effusion. IMPRESSION: Normal chest.", _reading(0.1, 0.05))
    assert agree.disagreements == [] and agree.features["normal"] < 0


def test_a_hedged_mention_is_a_band_not_checked_and_listed() -> None:
    comparison = compare_report("IMPRESSION: Pleural effusion cannot be excluded.", _reading(0.6, 0.05))
    effusion = next(c for c in comparison.labels if c.observation == "Pleural Effusion")
    assert effusion.report == "uncertain" and effusion.agrees is None
    assert "pleural effusion (hedged in the report)" in comparison.not_checked


def test_findings_outside_the_validated_labels_are_listed_as_not_checked() -> None:
    comparison = compare_report("FINDINGS: Small right pneumothorax. Sternotomy wires.", _reading(0.7, 0.05))
    assert any(item.startswith("pneumothorax (not a finding the classifier calls") for item in comparison.not_checked)
    assert "lines, tubes and devices" in comparison.not_checked


def test_fusion_uses_text_weights_only_for_its_own_model(tmp_path: Path) -> None:
    image_only = ImageCheckFusion(weights={"asserted": 2.0, "normal": 1.0}, bias=-1.0, threshold=0.5)
    fusion = ImageCheckFusion(
        weights={"text": 1.0, "asserted": 2.0}, bias=0.0, threshold=0.5, text_model="m1", image_only=image_only
    )
    assert fusion.for_text_model("m1", True) is fusion
    assert fusion.for_text_model("other", True) is image_only
    assert fusion.for_text_model("m1", False) is image_only
    comparison = compare_report("FINDINGS: Pleural effusion.", _reading(0.2, 0.01))
    assert fusion.probability(comparison, 0.9) > fusion.probability(comparison, 0.1)
    fusion.save(tmp_path)
    assert ImageCheckFusion.load(tmp_path) == fusion
    with pytest.raises(InputError):
        ImageCheckFusion(weights={"bogus": 1.0}, bias=0.0, threshold=0.5)


def test_a_draft_that_departs_from_its_findings_is_described() -> None:
    from radlvlm.tasks.image_findings import draft_disagreement

    assert draft_disagreement("IMPRESSION: Pleural effusion.", ["Pleural Effusion"]) is None
    differs = draft_disagreement("IMPRESSION: Pulmonary nodule.", ["Lung Opacity", "Pneumonia"])
    assert differs is not None
    assert differs.stated_not_given == ("Lung Lesion",)
    assert differs.given_not_stated == ("Pneumonia", "Lung Opacity")
    assert "leaves out pneumonia, lung opacity" in differs.message()


def test_a_validated_finding_the_classifier_never_calls_is_not_compared_and_is_listed() -> None:
    reading = _reading(0.7, 0.05)
    never_called = LabelFinding("Pleural_Thickening", 0.2, None, False, True)  # validated, no precise threshold
    comparison = compare_report(
        "FINDINGS: Pleural thickening at the right apex.", ImageFindings("test", (*reading.findings, never_called))
    )
    assert "Pleural Other" not in {c.observation for c in comparison.labels}
    assert any(item.startswith("pleural other (not a finding the classifier calls") for item in comparison.not_checked)
