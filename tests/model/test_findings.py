"""The finding classifier: a transformers model that saves and loads, validates its config, refuses non-frontal
radiographs, calibrates its scores and says which findings a draft may state."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from servicesupport import build_tiny_classifier

from radlvlm.errors import InputError
from radlvlm.imaging import Image, View
from radlvlm.model.findings import (
    ABNORMAL,
    FindingClassifier,
    FindingClassifierConfig,
    ImageFindings,
    LabelFinding,
    NotFrontalError,
)


def _image(view: View) -> Image:
    rng = np.random.default_rng(0)
    return Image(
        array=rng.random((70, 60), dtype=np.float32),
        sop_instance_uid="1.2.3.1",
        series_instance_uid="1.2.3",
        study_instance_uid="1.2",
        source="test",
        view=view,
    )


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_classifier(tmp_path_factory.mktemp("findings"))


def test_it_loads_with_from_pretrained_and_gives_the_same_probabilities(classifier_dir: Path) -> None:
    first = FindingClassifier.from_pretrained(classifier_dir)
    second = FindingClassifier.from_pretrained(classifier_dir)
    assert len(first.members) == 2
    images = [_image(View.PA), _image(View.AP)]
    a, b = first.classify(images), second.classify(images)
    assert [f.probability for f in a[0].findings] == [f.probability for f in b[0].findings]
    assert a[0].abnormal.threshold == 0.5 and a[0].get("Effusion").validated
    assert not a[0].get("Pneumothorax").validated and a[0].get("Pneumothorax").threshold is None


def test_a_lateral_image_is_refused_with_the_reason(classifier_dir: Path) -> None:
    classifier = FindingClassifier.from_pretrained(classifier_dir)
    with pytest.raises(NotFrontalError, match="frontal"):
        classifier.classify([_image(View.LATERAL)])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"labels": ["Effusion"]},  # Abnormal must come first
        {"thresholds": {"Effusion": 1.5}},
        {"thresholds": {"Unknown": 0.5}},
        {"calibration": {"Unknown": [1.0, 0.0]}},
        {"hidden_sizes": (8, 16), "depths": (1,)},
    ],
)
def test_a_config_that_cannot_be_right_is_refused_also_when_loaded(kwargs: dict, tmp_path: Path) -> None:  # type: ignore[type-arg]
    with pytest.raises(InputError):
        FindingClassifierConfig(**kwargs)
    good = FindingClassifierConfig(image_size=32, hidden_sizes=(8,), depths=(1,), embedding_size=8)
    good.save_pretrained(tmp_path)
    text = (tmp_path / "config.json").read_text().replace('"image_size": 32', '"image_size": 8')
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(InputError):
        FindingClassifierConfig.from_pretrained(tmp_path)


def test_calibration_maps_logits_through_platt_scaling() -> None:
    config = FindingClassifierConfig(
        image_size=32, hidden_sizes=(8,), depths=(1,), embedding_size=8, calibration={"Effusion": [2.0, -1.0]}
    )
    model = FindingClassifier(config)
    logits = torch.zeros(1, len(config.labels))
    logits[0, config.labels.index("Effusion")] = 1.0
    p = model.probabilities(logits)[0]
    assert p[config.labels.index("Effusion")].item() == pytest.approx(1 / (1 + np.exp(-1.0)))
    assert p[0].item() == pytest.approx(0.5)  # uncalibrated label: sigmoid(0)


def _reading(abnormal: float, **labels: float) -> ImageFindings:
    findings = [LabelFinding(ABNORMAL, abnormal, 0.5, abnormal >= 0.5, True)]
    for name, p in labels.items():
        findings.append(LabelFinding(name, p, 0.4, p >= 0.4, name != "Hernia"))
    return ImageFindings("test", tuple(findings))


def test_stated_findings_need_the_abnormal_gate_and_a_validated_label() -> None:
    assert _reading(0.2, Effusion=0.9).stated == ()  # gate closed: a normal study
    assert _reading(0.8, Effusion=0.9, Cardiomegaly=0.1).stated == ("Effusion",)
    # Gate open, no label over its threshold: the most probable validated label.
    assert _reading(0.8, Effusion=0.3, Cardiomegaly=0.35, Hernia=0.39).stated == ("Cardiomegaly",)
    # A validated label with no threshold (never precise enough to call) is never stated, not even as the fallback.
    never_called = replace(
        _reading(0.8, Effusion=0.3, Cardiomegaly=0.35),
        findings=(
            *_reading(0.8, Effusion=0.3, Cardiomegaly=0.35).findings,
            LabelFinding("Pleural_Thickening", 0.39, None, False, True),
        ),
    )
    assert never_called.stated == ("Cardiomegaly",)
    reading = _reading(0.8, Effusion=0.9)
    assert reading.as_dict()["stated"] == ["Effusion"]
    assert replace(reading.findings[1], present=False).as_dict()["present"] is False


def test_activation_maps_decompose_the_logit_over_the_image(classifier_dir: Path) -> None:
    """A class activation map is the label's logit spread over the image: its mean over the input is the logit
    less the head's bias (up to the bilinear upsampling at the borders)."""
    classifier = FindingClassifier.from_pretrained(classifier_dir)
    with torch.no_grad():
        for member in classifier.members:  # a head whose evidence is far from zero, so the comparison means something
            member.head.weight.fill_(0.5)
            member.head.bias.zero_()
    image = _image(View.PA)
    maps = classifier.activation_maps(image, ["Effusion", ABNORMAL])
    size = classifier.config.image_size
    assert maps.shape == (2, size, size) and torch.isfinite(maps).all()
    with torch.no_grad():
        logits = classifier(classifier.pixel_values([image]))[0]
    for row, label in enumerate(["Effusion", ABNORMAL]):
        logit = float(logits[classifier.config.labels.index(label)])
        assert logit > 0.1 and abs(float(maps[row].mean()) - logit) < 0.1 * logit
    with pytest.raises(InputError, match="no label"):
        classifier.activation_maps(image, ["Tuberculosis"])
    with pytest.raises(NotFrontalError):
        classifier.activation_maps(_image(View.LATERAL), ["Effusion"])


def test_the_input_region_is_where_the_letterbox_put_the_image(classifier_dir: Path) -> None:
    classifier = FindingClassifier.from_pretrained(classifier_dir)
    size = classifier.config.image_size
    rows, columns = classifier.input_region(torch.zeros(size * 4, size * 2))  # tall: padded left and right
    assert (rows.start, rows.stop) == (0, size)
    assert columns.stop - columns.start == size // 2 and columns.start == size // 4
    assert classifier.input_region(torch.zeros(50, 50)) == (slice(0, size), slice(0, size))
