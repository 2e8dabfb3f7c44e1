"""The finding classifier's recipe on a tiny synthetic set: folds by patient, out-of-fold calibration, an ensemble
that loads with from_pretrained, a rerun that resumes, and an install in float16."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from radlvlm.model.findings import FINDING_LABELS, FindingClassifier
from radlvlm.training.findings import (
    ClassifierExample,
    FindingRecipe,
    classifier_examples,
    fit_calibration,
    install_classifier,
    most_sensitive_gate,
    train_finding_classifier,
)


def _data(root: Path) -> Path:
    images = root / "nih_cxr14" / "images"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(24):
        labels = ["Effusion"] if i % 3 == 0 else ["Pneumonia", "Edema"] if i % 3 == 1 else ["No Finding"]
        bright = 120 + 80 * (labels != ["No Finding"])
        pixels = np.clip(rng.normal(bright, 20, (64, 64)), 0, 255).astype(np.uint8)
        name = f"{i:08d}_000.png"
        PILImage.fromarray(pixels).save(images / name)
        rows.append(
            {
                "file": f"images/{name}",
                "image_index": name,
                "labels": labels,
                "patient_id": i // 2,
                "split": "train" if i < 20 else "validation",
                "view": "PA",
                "stored_size": [64, 64],
            }
        )
    (root / "nih_cxr14" / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, FindingRecipe]:
    data = _data(tmp_path_factory.mktemp("data"))
    work = tmp_path_factory.mktemp("work")
    recipe = FindingRecipe(
        folds=2,
        steps=4,
        batch_size=4,
        image_size=32,
        hidden_sizes=(8, 16),
        depths=(1, 1),
        checkpoint_every=2,
        min_positive_patients=1,
        min_auroc=0.0,
    )
    train_finding_classifier(data, work, recipe)
    return data, work, recipe


def test_the_recipe_writes_a_calibrated_ensemble_and_out_of_fold_logits(
    trained: tuple[Path, Path, FindingRecipe],
) -> None:
    data, work, _ = trained
    classifier = FindingClassifier.from_pretrained(work / "classifier")
    assert len(classifier.members) == 2 and classifier.config.image_size == 32
    assert set(classifier.config.thresholds) >= {"Abnormal", "Effusion"}
    stored = torch.load(work / "oof.pt")
    train = [e for e in classifier_examples(data) if e.split == "train"]
    assert stored["paths"] == [e.path for e in train] and stored["logits"].shape == (20, len(FINDING_LABELS))
    summary = json.loads((work / "summary.json").read_text())
    assert summary["examples"] == {"train": 20, "validation": 4} and "Abnormal" in summary["out_of_fold"]
    # Patients never straddle folds: each fold's model predicted its held-out patients only (no fold is empty).
    assert not any(f.joinpath("checkpoint.pt").exists() for f in work.glob("fold*"))


def test_a_rerun_resumes_and_skips_finished_folds(trained: tuple[Path, Path, FindingRecipe]) -> None:
    data, work, recipe = trained
    before = {p.name: p.stat().st_mtime_ns for p in work.glob("fold*/model/*.safetensors")}
    train_finding_classifier(data, work, recipe)
    after = {p.name: p.stat().st_mtime_ns for p in work.glob("fold*/model/*.safetensors")}
    assert before == after


def test_install_writes_float16_that_reads_back_the_same(
    trained: tuple[Path, Path, FindingRecipe], tmp_path: Path
) -> None:
    _, work, _ = trained
    target = install_classifier(work / "classifier", tmp_path)
    assert target == tmp_path / "findings"
    loaded = FindingClassifier.from_pretrained(target, dtype=torch.float32)
    original = FindingClassifier.from_pretrained(work / "classifier", dtype=torch.float32)
    pixels = torch.rand(2, 1, 32, 32)
    with torch.inference_mode():
        assert torch.allclose(loaded.eval()(pixels), original.eval()(pixels), atol=5e-2)
    from safetensors.torch import load_file

    stored = load_file(str(next(target.glob("*.safetensors"))))
    assert {t.dtype for name, t in stored.items() if name.endswith("weight")} == {torch.float16}


def test_the_gate_keeps_its_specificity_with_confidence_not_only_at_the_point_estimate() -> None:
    # 48 normals, 46 abnormals above them but for 8 mixed in among the highest normals (probabilities).
    normals = np.arange(48, dtype=float) / 200
    abnormals = np.concatenate([np.arange(34, 42) + 0.5, np.arange(100, 138, dtype=float)]) / 200
    truth = np.concatenate([np.zeros(48), np.ones(46)])
    gate = most_sensitive_gate(truth, np.concatenate([normals, abnormals]), 0.70)
    called_normal = (normals < gate["threshold"]).mean()
    assert called_normal == pytest.approx(gate["specificity"])
    # 0.75 at the point estimate (36 of 48) would pass a plain rule; its lower 95% bound (0.64) does not.
    assert gate["specificity"] >= 0.80
    assert gate["specificity_lower_95"] >= 0.70
    assert gate["sensitivity"] < 1.0
    # A loose target is met by the most sensitive threshold the bound allows.
    assert most_sensitive_gate(truth, np.concatenate([normals, abnormals]), 0.10)["sensitivity"] == 1.0


def _examples(labels: list[dict[str, float]]) -> list[ClassifierExample]:
    out = []
    for i, present in enumerate(labels):
        vector = [float(bool(present))] + [float(present.get(label, 0.0)) for label in FINDING_LABELS[1:]]
        out.append(
            ClassifierExample(f"{i}.png", tuple(vector), (1.0,) * len(FINDING_LABELS), f"p{i}", "train", "nih", "512")
        )
    return out


def test_a_label_whose_calls_are_never_precise_enough_gets_no_threshold_but_stays_validated() -> None:
    rng = np.random.default_rng(0)
    n = 400
    effusion = rng.random(n) < 0.3
    thickening = rng.random(n) < 0.03
    examples = _examples(
        [{"Effusion": float(e), "Pleural_Thickening": float(t)} for e, t in zip(effusion, thickening, strict=True)]
    )
    logits = torch.zeros(n, len(FINDING_LABELS))
    logits[:, 0] = torch.from_numpy(np.where(effusion | thickening, 1.0, -1.0) + rng.normal(0, 1.0, n)).float()
    logits[:, FINDING_LABELS.index("Effusion")] = torch.from_numpy(3.0 * effusion + rng.normal(0, 1.0, n)).float()
    # Weak evidence for a rare label: AUROC well above chance, but never right 1 time in 4 over >= 10 calls.
    logits[:, FINDING_LABELS.index("Pleural_Thickening")] = torch.from_numpy(
        0.8 * thickening + rng.normal(0, 1.0, n)
    ).float()
    recipe = FindingRecipe(min_positive_patients=5, min_auroc=0.6, min_precision=0.25)
    fitted = fit_calibration(recipe, examples, logits)
    assert "Effusion" in fitted["thresholds"]
    assert fitted["figures"]["Effusion"]["oof_precision"] >= 0.25
    assert "Pleural_Thickening" not in fitted["thresholds"]
    assert "Pleural_Thickening" in fitted["validated"]
    assert fitted["figures"]["Pleural_Thickening"]["rule"].startswith("never called present")
    # With no precision asked for, the same label is called at its F1-best threshold.
    assert "Pleural_Thickening" in fit_calibration(replace(recipe, min_precision=0.0), examples, logits)["thresholds"]
