"""Guardrails: input refusal with reasons, output PHI and unsupported claims."""

from __future__ import annotations

import numpy as np
import pytest
from testsupport import pydicom_file, shared_path

from radlvlm.errors import GuardrailViolation
from radlvlm.imaging import Image, Study, View, read_image_file
from radlvlm.safety.guardrails import check_input, check_output, input_findings, output_findings


def synthetic(view: View, modality: str | None = "DX", body_part: str | None = "CHEST", uid: str = "2.25.1") -> Image:
    pixels = np.linspace(0, 1, 128 * 128, dtype=np.float32).reshape(128, 128)
    return Image(pixels, uid, "2.25.2", "2.25.3", "synthetic", modality=modality, body_part=body_part, view=view)


def study_of(*images: Image) -> Study:
    study = Study("2.25.3")
    for image in images:
        study.add(image)
    return study


def codes(study: Study, **kwargs) -> set[str]:
    return {finding.code for finding in input_findings(study, **kwargs)}


def test_real_chest_radiographs_pass() -> None:
    for path in (pydicom_file("RG1_UNCR.dcm"), shared_path("dicom", "deid-data", "cat.dcm")):
        check_input(study_of(read_image_file(path)))


def test_real_non_radiographs_are_refused() -> None:
    ct = read_image_file(shared_path("dicom", "deid-data", "ctbrain1.dcm"))
    assert {"not_radiograph", "not_chest"} <= codes(study_of(ct))
    photo = read_image_file(shared_path("dicom", "deid-data", "image1.dcm"))
    assert "not_radiograph" in codes(study_of(photo))


def test_lateral_only_is_refused_when_frontal_needed() -> None:
    lateral = study_of(synthetic(View.LATERAL))
    assert codes(lateral) == {"lateral_only"}
    assert codes(lateral, require_frontal=False) == set()
    assert codes(study_of(synthetic(View.LATERAL), synthetic(View.PA, uid="2.25.9"))) == set()
    with pytest.raises(GuardrailViolation, match="lateral_only"):
        check_input(lateral)


def test_other_body_parts_and_blank_images_are_refused() -> None:
    assert "not_chest" in codes(study_of(synthetic(View.PA, body_part="KNEE")))
    blank = Image(np.zeros((128, 128), np.float32), "2.25.1", "2.25.2", "2.25.3", "x", modality="CR", view=View.PA)
    assert "blank_image" in codes(study_of(blank))
    assert codes(Study("2.25.3")) == {"no_images"}


def test_output_phi_is_withheld_and_message_has_no_phi() -> None:
    with pytest.raises(GuardrailViolation) as raised:
        check_output("Findings discussed with Dr. Patel at 10:30.", has_prior=False)
    assert "Patel" not in str(raised.value) and "10:30" not in str(raised.value)


def test_unsupported_prior_comparison_is_flagged() -> None:
    text = "Unchanged cardiomegaly compared with the prior study. Interval improvement of the effusion."
    flagged = {f.code for f in check_output(text, has_prior=False)}
    assert flagged == {"claims_prior"}
    assert check_output(text, has_prior=True) == []
    assert check_output("No prior studies for comparison. Lungs are clear.", has_prior=False) == []


def test_lateral_and_communication_claims_are_flagged() -> None:
    text = "On the lateral view there is a small effusion. Results were discussed with the team."
    found = {f.code for f in output_findings(text, has_prior=True, has_lateral=False)}
    assert found == {"claims_lateral", "claims_communication"}
    examination = "Streaky airspace disease is demonstrated on the lateral examination."
    assert {f.code for f in output_findings(examination, has_prior=True, has_lateral=False)} == {"claims_lateral"}
    anatomy = "Subcutaneous emphysema of the left lateral chest wall."
    assert not output_findings(anatomy, has_prior=True, has_lateral=False)
