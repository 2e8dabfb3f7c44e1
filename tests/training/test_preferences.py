"""Preference pairs for DPO: every kind is what it claims, counts per source, seeded, and no split leakage."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from testsupport import shared_path

from radlvlm.clinical_eval.judges import StructuredJudge
from radlvlm.errors import InputError
from radlvlm.safety.guardrails import output_findings
from radlvlm.tasks.drafting import ABSTENTION_MESSAGE, parse_draft
from radlvlm.training.preferences import (
    PAIR_KINDS,
    PreferencePair,
    PreferenceSettings,
    build_preferences,
    check_no_leakage,
    read_preferences,
    write_preferences,
)
from radlvlm.training.sources import ImageRef, Item, Record, Source

REPORTS = [
    ("Mild cardiomegaly. Small left pleural effusion.", "Cardiomegaly with left effusion."),
    ("The lungs are clear. No pleural effusion or pneumothorax.", "No acute cardiopulmonary abnormality."),
    ("Right upper lobe opacity. No pneumothorax.", "Right upper lobe pneumonia."),
    ("Heart size is normal. Bibasilar atelectasis.", "Bibasilar atelectasis."),
    ("Stable mild cardiomegaly compared with the prior study.", "No acute change."),
]


class FakeSource(Source):
    """Drafting records with real PNG files, in three splits, one patient per study."""

    def __init__(self, root: Path, per_split: dict[str, int], name: str = "fake", shift: int = 0) -> None:
        self.root, self.per_split, self.name, self.shift = root, per_split, name, shift

    def records(self) -> Iterator[Item]:
        for split, count in self.per_split.items():
            for i in range(count):
                path = self.root / f"{self.name}-{split}-{i}.png"
                if not path.exists():
                    pixels = np.random.default_rng(i).integers(0, 255, (32, 32), dtype=np.uint8)
                    PILImage.fromarray(pixels).save(path)
                findings, impression = REPORTS[(i + self.shift) % len(REPORTS)]
                yield Record(
                    study_id=f"{self.name}-{split}-{i}",
                    patient_id=f"{self.name}-p-{split}-{i}",
                    split=split,
                    source=self.name,
                    findings=findings,
                    impression=impression,
                    indication="cough",
                    image=ImageRef(str(path), f"{self.name}/{split}-{i}.png"),
                    tasks=frozenset({"draft"}),
                )


@pytest.fixture
def source(tmp_path: Path) -> FakeSource:
    return FakeSource(tmp_path, {"train": 10, "validation": 5, "test": 3})


def _settings(**overrides: object) -> PreferenceSettings:
    values: dict[str, object] = {"out_of_scope_per_image": 2, "model_samples": {"batch_size": 4}}
    values.update(overrides)
    return PreferenceSettings.from_dict(values)


def test_every_kind_with_counts_per_source(source: FakeSource, tmp_path: Path) -> None:
    built = build_preferences([source], _settings(), seed=0)
    write_preferences(built, tmp_path / "prefs")
    counts = json.loads((tmp_path / "prefs" / "counts.json").read_text())
    train = counts["splits"]["train"]
    assert train["studies_used"] == 10 and train["pairs"] == len(built.pairs["train"])
    by_kind = train["by_kind"]
    assert by_kind["identifier"] == 10 and by_kind["injected_error"] == 10
    # Two of the ten reports already compare with a prior: no unsupported comparison is added to them.
    assert by_kind["unsupported_comparison"] == 8
    assert train["left_out"]["unsupported_comparison"] == {"reference compares with a prior": 2}
    assert by_kind["model_sample"] == 0 and train["left_out"]["model_sample"] == {"no model given": 10}
    assert by_kind["out_of_scope"] >= 4 and by_kind["false_abstention"] == min(by_kind["out_of_scope"], 10)
    assert set(train["by_source"]) == {"fake", "out_of_scope"}
    assert sum(train["by_source"]["fake"].values()) + by_kind["out_of_scope"] == train["pairs"]
    assert counts["sources"]["fake"]["drafting"] == {"test": 3, "train": 10, "validation": 5}
    assert set(counts["splits"]) == {"train", "validation"}  # test is not built unless asked
    assert read_preferences(tmp_path / "prefs", "train") == built.pairs["train"]


def test_rejects_are_what_they_claim(source: FakeSource) -> None:
    from radlvlm.safety.text_deid import ReportDeidentifier

    built = build_preferences([source], _settings(), seed=3)
    judge, deid = StructuredJudge(), ReportDeidentifier()
    train_reports = {p.chosen for p in built.pairs["train"] if p.kind != "out_of_scope"}
    for p in built.pairs["train"]:
        assert p.chosen != p.rejected
        if p.kind == "injected_error":
            assert judge.judge(p.rejected, p.chosen).count(significant=True) >= 1, p.meta
        elif p.kind == "identifier":
            refused = [
                f for f in output_findings(p.rejected, has_prior=False, deidentifier=deid) if f.severity == "refuse"
            ]
            assert refused, p.meta  # the output guardrail would withhold it
            assert not [
                f for f in output_findings(p.chosen, has_prior=True, deidentifier=deid) if f.severity == "refuse"
            ]
        elif p.kind == "unsupported_comparison":
            assert any(
                f.code == "claims_prior" for f in output_findings(p.rejected, has_prior=False, deidentifier=deid)
            )
        elif p.kind == "out_of_scope":
            assert p.chosen == ABSTENTION_MESSAGE and parse_draft(p.chosen).abstained
            assert p.rejected in train_reports  # a report of the same split, never of another
            assert p.image is not None and p.image.load().ndim == 2
        elif p.kind == "false_abstention":
            assert p.rejected == ABSTENTION_MESSAGE
        assert p.instruction.startswith("Write the findings")


def test_no_study_patient_or_image_in_two_splits(source: FakeSource) -> None:
    built = build_preferences([source], _settings(splits=["train", "validation", "test"]), seed=0)
    seen: dict[str, set[str]] = {}
    for split, pairs in built.pairs.items():
        seen[split] = {p.study_id for p in pairs} | {p.patient_id for p in pairs}
        seen[split] |= {p.image.image_id for p in pairs if p.image is not None}
        assert all(p.split == split for p in pairs)
    assert not seen["train"] & seen["validation"] and not seen["train"] & seen["test"]
    assert not seen["validation"] & seen["test"]

    leaked = built.pairs["validation"][0]
    with pytest.raises(InputError, match="in splits 'train' and 'validation'"):
        check_no_leakage({"train": [_moved(leaked, "train")], "validation": [leaked]})


def test_a_patient_in_two_splits_is_refused(tmp_path: Path) -> None:
    class Leaky(FakeSource):
        def records(self) -> Iterator[Item]:
            for item in super().records():
                assert isinstance(item, Record)
                yield Record(**{**item.__dict__, "patient_id": "same-patient"})

    with pytest.raises(InputError, match="patient same-patient is in split"):
        build_preferences([Leaky(tmp_path, {"train": 2, "validation": 2})], _settings(), seed=0)


def test_the_same_seed_gives_the_same_pairs(source: FakeSource, tmp_path: Path) -> None:
    def written(seed: int, name: str) -> str:
        write_preferences(build_preferences([source], _settings(), seed=seed), tmp_path / name)
        return (tmp_path / name / "train.jsonl").read_text()

    assert written(0, "a") == written(0, "b")
    assert written(0, "a") != written(1, "c")


def test_model_samples_are_kept_when_the_judge_finds_them_worse(source: FakeSource, tmp_path: Path) -> None:
    calls: list[int] = []

    def sampler(split: str, items: list, batch_seed: int) -> list[str]:
        calls.append(len(items))
        # Even studies: a draft inventing a pneumothorax (worse); odd ones: an empty draft (left out).
        return ["FINDINGS: Large right pneumothorax." if int(i.rsplit("-", 1)[1]) % 2 == 0 else "" for i, _, _ in items]

    settings = _settings(kinds=["model_sample"], splits=["train"])
    built = build_preferences([source], settings, seed=0, sampler=sampler, cache_dir=tmp_path)
    samples = built.pairs["train"]
    assert len(samples) == 5 and all(p.meta["errors"] >= 1 for p in samples)
    assert built.counts["splits"]["train"]["left_out"]["model_sample"] == {"empty sample": 5}
    assert calls == [4, 4, 2]  # fixed batches of model_samples.batch_size

    def refuse(*args: object) -> list[str]:
        raise AssertionError("cached batches must not be sampled again")

    again = build_preferences([source], settings, seed=0, sampler=refuse, cache_dir=tmp_path)
    assert again.pairs == built.pairs


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"kinds": ["made_up"]}, "subset of"),
        ({"splits": ["train", "holdout"]}, "subset of"),
        ({"colour": 1}, r"unknown key\(s\) \['colour'\]"),
        ({"model_samples": {"temperature": 0}}, "temperature"),
        ({"model_samples": {"beams": 2}}, r"model_samples: unknown key\(s\) \['beams'\]"),
        ({"out_of_scope_per_image": 0}, "positive integer"),
    ],
)
def test_bad_settings_are_refused(values: dict, message: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(InputError, match=message):
        PreferenceSettings.from_dict(values)


def test_pairs_from_the_shared_public_data(tmp_path: Path) -> None:
    from radlvlm.training.pseudo_pairs import LabelMatchedPairs
    from radlvlm.training.sources import CovidSource, IUXraySource, NIHSource

    data = shared_path()
    iu = IUXraySource(data / "iu_xray", limit=60)
    nih = NIHSource(data / "nih_cxr14" / "manifest.jsonl", limit=30)
    covid = CovidSource(data / "covid_chestxray" / "manifest.jsonl", limit=20)
    sources = [iu, nih, covid, LabelMatchedPairs(nih, iu, k=1)]
    built = build_preferences(sources, _settings(max_studies=12), seed=0)
    check_no_leakage(built.pairs)
    for split in ("train", "validation"):
        counts = built.counts["splits"][split]
        assert counts["studies_used"] == 12 and counts["by_kind"]["injected_error"] >= 8
        assert set(counts["by_kind"]) == set(PAIR_KINDS)
    train_ids = {p.patient_id for p in built.pairs["train"]}
    assert not train_ids & {p.patient_id for p in built.pairs["validation"]}


def _moved(pair: PreferencePair, split: str) -> PreferencePair:
    return PreferencePair.from_dict({**pair.to_dict(), "split": split, "pair_id": pair.pair_id + "-copy"})


def test_every_identifier_template_and_comparison_sentence_is_caught() -> None:
    import random

    from radlvlm.safety.text_deid import ReportDeidentifier
    from radlvlm.tasks.taxonomy import ErrorCategory
    from radlvlm.training.preferences import _COMPARISON_SENTENCES, _IDENTIFIER_TEMPLATES, _fake_values

    deid, judge = ReportDeidentifier(), StructuredJudge()
    reference = "FINDINGS: The lungs are clear.\nIMPRESSION: No acute disease."
    for seed in range(5):
        for kind, template in _IDENTIFIER_TEMPLATES:
            text = f"{reference} {template.format(**_fake_values(random.Random(seed)))}"
            assert any(f.severity == "refuse" for f in output_findings(text, has_prior=False, deidentifier=deid)), kind
    for sentence in _COMPARISON_SENTENCES:
        text = f"{reference} {sentence}"
        assert any(f.code == "claims_prior" for f in output_findings(text, has_prior=False, deidentifier=deid))
        assert judge.judge(text, reference).count(ErrorCategory.UNSUPPORTED_COMPARISON) == 1, sentence


def test_error_check_pairs_prefer_the_right_verdict(tmp_path: Path) -> None:
    from radlvlm.tasks.errorcheck import parse_complex_answer, parse_simple_answer
    from radlvlm.training.sources import IUXraySource

    iu = IUXraySource(shared_path("iu_xray"), limit=40)
    drafting = FakeSource(tmp_path, {"train": 4, "validation": 2})
    built = build_preferences([drafting, iu], _settings(kinds=["error_check"], error_check_studies=10), seed=0)
    pairs = built.pairs["train"]
    assert len(pairs) == 40 and {p.kind for p in pairs} == {"error_check"}  # 10 studies x 2 versions x 2 tasks
    assert {p.source for p in pairs} == {"iu_xray"} and all(p.image is None for p in pairs)
    for pair in pairs:
        assert pair.report and pair.report in pair.instruction
        if pair.task == "check_simple":
            assert parse_simple_answer(pair.chosen) == pair.meta["has_error"] != parse_simple_answer(pair.rejected)
        else:
            chosen, rejected = parse_complex_answer(pair.chosen), parse_complex_answer(pair.rejected)
            assert chosen.has_error == pair.meta["has_error"] != rejected.has_error
    assert sum(p.meta["has_error"] for p in pairs) == 20
    write_preferences(built, tmp_path / "prefs")
    assert read_preferences(tmp_path / "prefs", "train") == pairs
