"""The finding classifier inside the use cases: a draft is given (and answers with) the classifier's reading; a
check with an image compares the report with it, or says an image check is not available without one."""

from __future__ import annotations

import base64
import io
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from PIL import Image as PILImage
from servicesupport import build_tiny_classifier, build_tiny_model_dir, make_settings
from testsupport import pydicom_file

from radlvlm.pipeline import build_runtime, check_report, draft_study
from radlvlm.pipeline.checking import NO_CLASSIFIER
from radlvlm.pipeline.ingest import StudyInput
from radlvlm.pipeline.runtime import Caller, Runtime

CALLER = Caller("test", "test")
REPORT = "FINDINGS: Large left pleural effusion. IMPRESSION: Pleural effusion."


@pytest.fixture(scope="module")
def plain_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model_dir(tmp_path_factory.mktemp("m") / "tiny")


@pytest.fixture(scope="module")
def model_with_classifier(plain_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("mc") / "tiny"
    shutil.copytree(plain_model, folder)
    build_tiny_classifier(folder / "findings", abnormal_threshold=0.01)  # the tiny classifier reads "abnormal"
    return folder


@contextmanager
def _runtime(tmp_path: Path, model: Path) -> Iterator[Runtime]:
    settings, _, _ = make_settings(tmp_path, model)
    runtime = build_runtime(settings, audit=False)
    try:
        yield runtime
    finally:
        runtime.close()


def _study() -> StudyInput:
    return StudyInput(data=pydicom_file("RG1_UNCR.dcm").read_bytes())


def test_a_draft_is_given_the_classifier_findings_and_answers_with_them(
    model_with_classifier: Path, tmp_path: Path
) -> None:
    with _runtime(tmp_path, model_with_classifier) as runtime:
        outcome = draft_study(runtime, _study(), CALLER)
        found = outcome.answer()["image_findings"]
        assert found["classifier"] == "radlvlm-findings" and found["abnormal"]["present"]
        assert found["stated"] and set(found["stated"]) <= {"Effusion"}  # only validated labels are stated
        assert {row["label"] for row in found["labels"]} >= {"Effusion", "Pneumothorax"}
        # The prompt the engine ran with named those findings in the labeler's words.
        prompt = runtime.engine.drafts.prompt(None, ("Pleural Effusion",))
        assert "Image findings: pleural effusion." in prompt


def test_asked_to_explain_a_draft_shows_where_each_stated_finding_was_seen(
    model_with_classifier: Path, tmp_path: Path
) -> None:
    with _runtime(tmp_path, model_with_classifier) as runtime:
        assert draft_study(runtime, _study(), CALLER).activation_maps is None  # not asked: nothing extra
        outcome = draft_study(runtime, _study(), CALLER, explain=True)
        maps = outcome.answer()["activation_maps"]
        stated = outcome.image_findings["stated"]
        assert [m["label"] for m in maps] == stated and stated
        picture = PILImage.open(io.BytesIO(base64.b64decode(maps[0]["png_base64"])))
        assert picture.mode == "RGBA" and max(picture.size) == 256
        # The map has the radiograph's aspect (the letterbox padding is cut off), so it lies over the image.
        rows, columns = outcome.image.rows, outcome.image.columns
        assert abs(picture.size[0] / picture.size[1] - columns / rows) < 0.05
        reading = {row["label"]: row for row in outcome.image_findings["labels"]}
        assert maps[0]["probability"] == reading[maps[0]["label"]]["probability"]
        assert maps[0]["threshold"] == reading[maps[0]["label"]]["threshold"]


def test_a_model_without_a_classifier_drafts_as_before_and_refuses_an_image_check(
    plain_model: Path, tmp_path: Path
) -> None:
    with _runtime(tmp_path, plain_model) as runtime:
        assert draft_study(runtime, _study(), CALLER).image_findings is None
        assert draft_study(runtime, _study(), CALLER, explain=True).activation_maps == []  # nothing to show
        outcome = check_report(runtime, REPORT, CALLER, image=_study())
        assert outcome.answer_valid is False and outcome.has_error is None and outcome.reason == NO_CLASSIFIER
        assert outcome.text_only is False and outcome.answer()["image_comparison"] is None
        text = check_report(runtime, REPORT, CALLER)  # the text-only check is unaffected
        assert text.text_only and text.answer_valid


def test_an_image_check_compares_the_report_with_the_image(model_with_classifier: Path, tmp_path: Path) -> None:
    with _runtime(tmp_path, model_with_classifier) as runtime:
        outcome = check_report(runtime, REPORT, CALLER, image=_study())
        assert outcome.answer_valid and outcome.calibrated and outcome.error_probability is not None
        comparison = outcome.answer()["image_comparison"]
        assert {row["observation"] for row in comparison["compared"]} == {"No Finding", "Pleural Effusion"}
        assert "laterality (which side)" in comparison["not_checked"]
        assert outcome.has_error == (outcome.error_probability >= 0.5)
        if outcome.has_error:
            assert {e.category for e in outcome.errors} <= {"false_finding", "omitted_finding"}


def test_an_image_check_of_a_report_the_labeler_cannot_read_is_refused(
    model_with_classifier: Path, tmp_path: Path
) -> None:
    with _runtime(tmp_path, model_with_classifier) as runtime:
        german = "BEFUND: Kein Pleuraerguss. Herz normal groß. BEURTEILUNG: Unauffälliger Befund."
        outcome = check_report(runtime, german, CALLER, image=_study())
        assert outcome.answer_valid is False and "English" in (outcome.reason or "")


def test_the_classifier_can_be_switched_off_or_named(model_with_classifier: Path, tmp_path: Path) -> None:
    from radlvlm.errors import ModelError
    from radlvlm.pipeline.runtime import classifier_dir

    settings, _, _ = make_settings(tmp_path, model_with_classifier, findings_disabled=True)
    assert classifier_dir(settings) is None
    settings, _, _ = make_settings(tmp_path, model_with_classifier, findings_model=tmp_path)
    with pytest.raises(ModelError, match="not a finding classifier"):
        classifier_dir(settings)
