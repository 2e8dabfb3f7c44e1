"""Writer targets state exactly their input: unsupported sentences removed, findings stated again from a bank,
edits to a perturbed input applied to the target."""

from __future__ import annotations

import json
import random
from pathlib import Path

from radlvlm.reports.labeler import label_report
from radlvlm.reports.unsupported import unsupported_kinds
from radlvlm.tasks.image_findings import WRITER_LABELS
from radlvlm.training.writer import SentenceBank, WriterTarget, clean_report, edit_to

TRAIN = [
    ("The heart is enlarged. No pleural effusion. The lungs are clear.", "Cardiomegaly."),
    ("There is cardiomegaly. No pneumothorax.", "Cardiomegaly."),
    ("There is a pleural effusion. The heart is normal in size.", "Pleural effusion."),
    ("The lungs are clear. Heart size is normal. No pneumothorax or pleural effusion.", "No acute disease."),
    ("No focal consolidation. The heart is normal in size.", "Normal chest."),
]


def _observations(text: str) -> set[str]:
    return label_report(text).positive() & set(WRITER_LABELS)


def test_a_cleaned_report_loses_side_size_and_comparison_but_keeps_its_finding() -> None:
    bank = SentenceBank(TRAIN)
    target = clean_report(
        "Small left pleural effusion, unchanged from prior. The heart is normal in size. Calcified granuloma.",
        "Stable left effusion. Recommend follow-up.",
        bank,
        random.Random(0),
    )
    assert target is not None and target.observations == {"Pleural Effusion"}
    text = target.text()
    assert _observations(text) == {"Pleural Effusion"}
    for sentence in [*target.findings, *target.impression]:
        assert not unsupported_kinds(sentence), sentence


def test_an_edited_target_states_exactly_the_new_input() -> None:
    bank = SentenceBank(TRAIN)
    rng = random.Random(1)
    target = clean_report(*TRAIN[0], bank, rng)
    assert target is not None and target.observations == {"Cardiomegaly"}
    added = edit_to(target, {"Cardiomegaly", "Pleural Effusion"}, bank, rng)
    assert added is not None and _observations(added.text()) == {"Cardiomegaly", "Pleural Effusion"}
    assert "No pleural effusion." not in added.findings  # a denial of an added finding goes
    removed = edit_to(target, set(), bank, rng)
    assert removed is not None and _observations(removed.text()) == set()
    assert removed.impression  # a normal study still gets an impression


def test_the_release_section_goes_first_and_replaces_an_earlier_one() -> None:
    from radlvlm.training.writer import CARD_MARK, card_with_section

    tail = "The sections below are the record of the release this one continued from (its figures describe it).\n"
    card = "# Model card: m\n\nIntro.\n\n## What it is\nstuff\n"
    once = card_with_section(card, f"{CARD_MARK}\n## Release A\n\n{tail}")
    twice = card_with_section(once, f"{CARD_MARK}\n## Release B\n\n{tail}")
    assert twice.count(CARD_MARK) == 1 and "Release A" not in twice and "Release B" in twice
    assert twice.startswith("# Model card: m\n") and twice.rstrip().endswith("## What it is\nstuff")


def test_a_finding_stated_alone_by_fewer_than_two_clean_sentences_is_banked_as_a_plain_findings_sentence() -> None:
    """The bank is what the writer learns to say for a finding: a single odd sentence (IU's only opacity one was
    "Peribronchial cuffing also noted.") must not become the way every opacity is written, and a bare phrase
    ("Airspace opacity.") reads as a list, not a report."""
    bank = SentenceBank(TRAIN)
    assert set(bank.positive["Cardiomegaly"]) == {"The heart is enlarged.", "There is cardiomegaly."}
    assert bank.positive["Pleural Effusion"] == ["There is a pleural effusion."]  # one clean sentence: too few
    assert bank.positive["Lung Opacity"] == ["There is an airspace opacity."]  # none at all
    for label in WRITER_LABELS:  # every banked sentence states its finding alone, plainly
        (sentence,) = bank.positive[label][:1]
        assert _observations(sentence) == {label} and not unsupported_kinds(sentence), sentence


def test_a_target_for_a_lung_finding_does_not_call_the_lungs_clear() -> None:
    """0.5 still wrote "The lungs are clear. Pneumonia." (3 of 94 validation drafts): its targets kept such a
    sentence, as the labeler reads it as no opacity, not as no pneumonia."""
    bank = SentenceBank(TRAIN)
    findings = "The heart is normal in size. The lungs are clear. Right lower lobe pneumonia."
    target = clean_report(findings, "Pneumonia.", bank, random.Random(0))
    assert target is not None and target.observations == {"Pneumonia"}
    assert "The lungs are clear." not in target.findings and "The heart is normal in size." in target.findings
    edited = edit_to(WriterTarget(("The lungs are clear.", "No pneumothorax."), (), frozenset()), {"Edema"}, bank,
                     random.Random(0))  # fmt: skip
    assert (
        edited is not None and "The lungs are clear." not in edited.findings and "No pneumothorax." in edited.findings
    )
    normal = edit_to(WriterTarget(("The lungs are clear.",), (), frozenset()), {"Cardiomegaly"}, bank, random.Random(0))
    assert normal is not None and "The lungs are clear." in normal.findings  # not a lung finding: it stays


def test_a_target_for_pneumonia_does_not_deny_consolidation() -> None:
    """Writer 14 wrote "No focal areas of pulmonary consolidation. ... There is focal consolidation. Findings are
    consistent with pneumonia.": its targets paired a denied consolidation with a stated pneumonia (one airspace
    finding, named two ways)."""
    bank = SentenceBank(TRAIN)
    sentences = ("No focal consolidation.", "The heart is normal in size.", "No pneumothorax.")
    for wanted in ({"Pneumonia"}, {"Lung Opacity"}):
        edited = edit_to(WriterTarget(sentences, (), frozenset()), wanted, bank, random.Random(0))
        assert edited is not None and _observations(edited.text()) == wanted
        assert "No focal consolidation." not in edited.findings and "No pneumothorax." in edited.findings
    kept = edit_to(WriterTarget(sentences, (), frozenset()), {"Pleural Effusion"}, bank, random.Random(0))
    assert kept is not None and "No focal consolidation." in kept.findings  # not an airspace finding: it stays


def test_the_card_states_the_text_check_measured_on_this_release_only(tmp_path: Path) -> None:
    from radlvlm.training.writer import _card_text_check_lines

    rate = {"value": 0.8, "ci_low": 0.7, "ci_high": 0.9}
    entry = {k: rate for k in ("accuracy", "sensitivity", "specificity", "auroc")}
    metrics = {
        "independent_test": {
            "model": entry,
            "rule_checker": entry,
            "text_revealed_errors": {"model": entry, "rule_checker": entry},
        },
        "training_injector_test": {"model": entry, "rule_checker": entry},
    }
    report = {"model": {"models": [{"id": "release-b"}]}, "metrics": metrics}
    (tmp_path / "errorcheck.json").write_text(json.dumps(report))
    lines = _card_text_check_lines({"id": "release-b"}, tmp_path)
    assert "independent injector 0.800 / 0.800 / 0.800 / 0.800" in lines[-1] and "text reveals" in lines[-1]
    assert _card_text_check_lines({"id": "release-a"}, tmp_path) == []  # figures of another release are not claimed
    assert _card_text_check_lines({"id": "release-b"}, None) == []
