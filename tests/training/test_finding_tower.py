"""The finding classifier as the model's vision tower: its features become a few visual tokens, its network is kept
once (in base/), and every door still reads the image's findings from it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from servicesupport import build_tiny_classifier, build_tiny_model_dir, make_settings
from testsupport import pydicom_file

from radlvlm.errors import InputError
from radlvlm.model import MoLEConfig, inject_mole
from radlvlm.model.default import ModelChoice, classifier_beside
from radlvlm.model.finding_config import FindingTowerConfig
from radlvlm.model.findings import FindingClassifier, load_finding_classifier
from radlvlm.model.pretrained import load_pretrained
from radlvlm.pipeline import build_runtime, check_report, draft_study
from radlvlm.pipeline.ingest import StudyInput, ingest_study
from radlvlm.pipeline.runtime import Caller
from radlvlm.training.finding_tower import with_finding_tower


@pytest.fixture(scope="module")
def towered(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(the model before, the classifier, the model with the classifier as its tower)."""
    root = tmp_path_factory.mktemp("tower")
    build_tiny_model_dir(root / "before" / "base")
    model, _ = load_pretrained(root / "before" / "base")
    inject_mole(model, MoLEConfig(num_experts=2, r=2)).save(root / "before" / "adapter")
    classifier = build_tiny_classifier(root / "classifier", abnormal_threshold=0.01)  # reads "abnormal"
    with_finding_tower(root / "before", classifier, root / "after", pool=1)
    return root / "before", classifier, root / "after"


def test_the_tower_is_the_classifier_and_the_language_model_is_unchanged(towered: tuple[Path, Path, Path]) -> None:
    before, classifier, after = towered
    old, _ = load_pretrained(before / "base")
    new, processor = load_pretrained(after / "base")
    load_pretrained(after / "base", adapter=after / "adapter")  # the experts still fit the language model
    reader = FindingClassifier.from_pretrained(classifier)
    tower = new.model.vision_tower.state_dict()
    assert all(torch.equal(tower[k], v) for k, v in reader.state_dict().items())
    old_lm, new_lm = old.model.language_model.state_dict(), new.model.language_model.state_dict()
    assert all(torch.equal(old_lm[k], new_lm[k]) for k in old_lm)
    # The processor prepares an image as the classifier does; one pooled cell is one visual token.
    assert processor.image_config == reader.config.transform_config() and new.num_image_tokens == 1
    pixels = torch.rand(1, 1, 32, 32)
    with torch.inference_mode():
        features = new.model.get_image_features(pixel_values=pixels, vision_feature_layer=-1).pooler_output
    assert features[0].shape == (1, new.config.text_config.hidden_size)
    assert json.loads((after / "tower.json").read_text())["image_tokens"] == 1


def test_the_tower_stays_a_frozen_reader_when_the_model_trains(towered: tuple[Path, Path, Path]) -> None:
    model, _ = load_pretrained(towered[2] / "base")
    model.train()
    assert model.training and not model.model.vision_tower.training  # batch norms keep the classifier's statistics
    assert not any(m.training for m in model.model.vision_tower.modules())


def test_the_network_is_read_back_from_the_base_as_the_same_classifier(towered: tuple[Path, Path, Path]) -> None:
    _, classifier, after = towered
    alone = load_finding_classifier(classifier)
    inside = load_finding_classifier(after / "base")
    assert inside.config.thresholds == alone.config.thresholds and inside.config.validated == alone.config.validated
    pixels = torch.rand(2, 1, 32, 32)
    with torch.inference_mode():
        assert torch.allclose(inside.logits(pixels), alone.logits(pixels))
    assert classifier_beside(ModelChoice(after / "base", after / "adapter", "m", False)) == after / "base"


def test_a_tower_whose_input_does_not_tile_into_its_stride_is_refused() -> None:
    with pytest.raises(InputError, match="multiple of its stride 8"):
        FindingTowerConfig(image_size=36, hidden_sizes=(8, 16), depths=(1, 1))


def test_drafts_and_image_checks_read_the_findings_from_the_tower(
    towered: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    """A release whose classifier is its tower has no findings/ folder: the doors find the classifier (and the
    image check's fusion beside it) in base/."""
    _, classifier, after = towered
    release = tmp_path / "release"
    shutil.copytree(after, release)
    shutil.copy2(classifier / "image_check.json", release / "base" / "image_check.json")
    settings, _, _ = make_settings(tmp_path, release / "base", adapter_dir=release / "adapter")
    runtime = build_runtime(settings, audit=False)
    try:
        study = StudyInput(data=pydicom_file("RG1_UNCR.dcm").read_bytes())
        found = draft_study(runtime, study, Caller("t", "t")).answer()["image_findings"]
        assert found["abnormal"]["present"] and found["stated"] == ["Effusion"]
        report = "FINDINGS: Large left pleural effusion. IMPRESSION: Pleural effusion."
        checked = check_report(runtime, report, Caller("t", "t"), image=study).answer()
        assert checked["image_comparison"]["compared"]  # compared with the image, not answered as text only
    finally:
        runtime.close()


def test_a_draft_runs_the_served_network_once_for_its_findings_and_its_visual_tokens(
    towered: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    _, classifier, after = towered
    release = tmp_path / "release"
    shutil.copytree(after, release)
    settings, _, _ = make_settings(tmp_path, release / "base", adapter_dir=release / "adapter")
    runtime = build_runtime(settings, audit=False)
    try:
        tower = runtime.engine.vision_tower()
        assert runtime.finding_classifier is tower  # one network in memory, not a second copy
        calls = []
        for member in tower.members:
            member.backbone.register_forward_hook(lambda *_: calls.append(1))
        study = StudyInput(data=pydicom_file("RG1_UNCR.dcm").read_bytes())
        found = draft_study(runtime, study, Caller("t", "t")).answer()["image_findings"]
        assert len(calls) == len(tower.members)  # findings and visual tokens from one pass
        alone = load_finding_classifier(classifier)  # the same reading as the classifier loaded on its own
        assert found["stated"] == ["Effusion"]
        image, _ = ingest_study(study, runtime.deidentifier(), None)
        assert found["abnormal"]["probability"] == pytest.approx(
            alone.classify([image])[0].abnormal.probability, abs=1e-4
        )
    finally:
        runtime.close()


def test_the_tower_recalls_only_the_pixels_it_just_classified_and_never_in_training(
    towered: tuple[Path, Path, Path],
) -> None:
    model, _ = load_pretrained(towered[2] / "base")
    tower = model.model.vision_tower
    image = torch.rand(1, 40, 32)  # display pixels; the engine's processor prepares them as the classifier does
    seen, other = tower.pixel_values([image]), torch.rand(1, 1, 32, 32)
    with torch.inference_mode():
        fresh = tower(seen).last_hidden_state.clone()
        tower.classify([image])
    calls = []
    for member in tower.members:
        member.backbone.register_forward_hook(lambda *_: calls.append(1))
    with torch.inference_mode():
        recalled = tower(seen.clone()).last_hidden_state  # equal pixels, another tensor
        assert calls == [] and torch.allclose(recalled, fresh)
        tower(torch.cat([seen, other]))  # one image it did not classify: the batch is read again
        assert len(calls) == len(tower.members)
    tower(seen)  # with gradients (a training step): always computed in the graph
    assert len(calls) == 2 * len(tower.members)


def _writer_and_classifier_work(towered: tuple[Path, Path, Path], root: Path) -> tuple[Path, Path, Path]:
    """A writer's and a classifier's working folders as their recipes leave them, and an installed release."""
    _, classifier, after = towered
    writer, classifier_work, target = root / "writer", root / "classifier-work", root / "release"
    shutil.copytree(after, writer / "run")
    data = {"examples": {"draft_image": 2, "draft_report": 3}}
    (writer / "done.json").write_text(json.dumps({"global_step": 2, "train_loss": 1.0, "seconds": 6.0, "data": data}))
    shutil.copytree(classifier, classifier_work / "classifier")
    summary = {
        "recipe": {"image_size": 32},
        "seconds": {"fold0": 60.0},
        "validated": {"Abnormal": {}, "Effusion": {}},
        "out_of_fold": {"Effusion": {"oof_auroc_nih": 0.7, "nih_positive_patients": 12}},
    }
    (classifier_work / "summary.json").write_text(json.dumps(summary))
    target.mkdir()
    (target / "model.json").write_text(json.dumps({"id": "release-a"}))
    (target / "MODEL_CARD.md").write_text("# Model card: release-a\n\nIntro.\n")
    (target / "findings").mkdir()  # the earlier release's classifier folder: the new one keeps none
    return writer, classifier_work, target


def test_an_installed_release_keeps_one_copy_of_the_classifier_and_says_it_is_the_tower(
    towered: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    from radlvlm.training.writer import install_embedded

    writer, classifier_work, target = _writer_and_classifier_work(towered, tmp_path)
    install_embedded(writer, classifier_work, target, model_id="release-b")
    assert not (target / "findings").exists() and (target / "base" / "image_check.json").is_file()
    info = json.loads((target / "model.json").read_text())
    assert info["vision_tower"] == {"kind": "finding classifier", "image_tokens": 1, "token_width": 32}
    assert "is the model's **vision tower**" in (target / "MODEL_CARD.md").read_text()
    assert load_finding_classifier(target / "base").config.thresholds["Abnormal"] == 0.01


def test_a_writer_whose_tower_is_another_classifier_is_not_installed(
    towered: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    from radlvlm.training.writer import install_embedded

    writer, classifier_work, target = _writer_and_classifier_work(towered, tmp_path)
    other = FindingClassifier.from_pretrained(classifier_work / "classifier")
    with torch.no_grad():
        next(other.parameters()).add_(0.5)  # another network, same shape and reading
    other.save_pretrained(classifier_work / "classifier")
    with pytest.raises(InputError, match="network differs"):
        install_embedded(writer, classifier_work, target, model_id="release-b")
    assert json.loads((target / "model.json").read_text())["id"] == "release-a"  # the release is untouched
    assert not target.with_name("release.partial").exists()


def test_a_classifier_refit_since_the_tower_was_made_gives_the_release_its_new_reading(
    towered: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    """Thresholds and calibration are refit out of fold by a recipe rerun without changing a weight: the release
    reads the image with the classifier's rules as they are now, not as they were when the tower was made."""
    from radlvlm.training.writer import install_embedded

    writer, classifier_work, target = _writer_and_classifier_work(towered, tmp_path)
    config = json.loads((classifier_work / "classifier" / "config.json").read_text())
    config["thresholds"]["Abnormal"] = 0.3
    del config["thresholds"]["Effusion"]  # never called present any more
    (classifier_work / "classifier" / "config.json").write_text(json.dumps(config))
    summary = json.loads((classifier_work / "summary.json").read_text())
    summary["recipe"]["min_precision"] = 0.25
    summary["out_of_fold"]["Abnormal"] = {
        "oof_auroc_nih": 0.72,
        "nih_positive_patients": 30,
        "threshold": 0.6,
        "validation_gate": {"threshold": 0.3, "rule": "NIH validation specificity >= 0.7 with 95% confidence"},
    }
    (classifier_work / "summary.json").write_text(json.dumps(summary))
    install_embedded(writer, classifier_work, target, model_id="release-b")
    installed = load_finding_classifier(target / "base").config
    assert installed.thresholds == config["thresholds"] and installed.calibration == config["calibration"]
    assert installed.validated == config["validated"]
    card = (target / "MODEL_CARD.md").read_text()
    assert "threshold 0.300, NIH validation specificity >= 0.7 with 95% confidence" in card
    assert "Validated but never called: Effusion." in card and "| Effusion | 0.700 | 12 | never |" in card
    assert "| Abnormal | 0.720 | 30 | 0.300 |" in card  # the gate the release uses: chosen on validation


def test_a_tower_can_be_taken_from_another_model_whose_tower_is_the_classifier(
    towered: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    before, classifier, after = towered
    with_finding_tower(before, after / "base", tmp_path / "again", pool=1)
    again = load_finding_classifier(tmp_path / "again" / "base")
    alone = load_finding_classifier(classifier)
    pixels = torch.rand(1, 1, 32, 32)
    with torch.inference_mode():
        assert torch.allclose(again.logits(pixels), alone.logits(pixels))
