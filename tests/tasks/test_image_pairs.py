"""Agree/contradict pairs: every report once with a radiograph it matches and once with one it contradicts."""

from __future__ import annotations

from collections import Counter

from radlvlm.tasks.image_pairs import image_report_pairs, pair_image, pair_report


def test_each_report_is_used_once_agreeing_and_once_contradicting() -> None:
    images = [
        pair_image("n1", "p1", ["No Finding"]),
        pair_image("n2", "p2", ["No Finding"]),
        pair_image("e1", "p3", ["Effusion"]),
        pair_image("ec", "p4", ["Effusion", "Cardiomegaly"]),
        pair_image("c1", "p5", ["Cardiomegaly"]),
    ]
    assert pair_image("x", "p6", ["Emphysema"]) is None  # no observation states it
    reports = [
        pair_report("r1", "FINDINGS: The lungs are clear. IMPRESSION: No acute disease.", ["normal"]),
        pair_report("r2", "FINDINGS: Pleural effusion. IMPRESSION: Effusion.", ["Pleural Effusion"]),
        pair_report("r3", "IMPRESSION: Cardiomegaly.", None),
    ]
    assert pair_report("r4", "IMPRESSION: No acute disease.", ["Cardiomegaly"]) is None  # MeSH disagrees
    pairs = image_report_pairs([i for i in images if i], [r for r in reports if r], seed=0)
    uses = Counter((p.report.id, p.has_error) for p in pairs)
    assert set(uses.values()) == {1} and {r for r, _ in uses} == {"r1", "r2", "r3"}
    for pair in pairs:
        same = pair.image.observations == pair.report.observations and pair.image.abnormal == pair.report.abnormal
        assert same == (not pair.has_error)
    kinds = {p.report.id: p.kind for p in pairs if p.has_error}
    # Abnormal reports alternate: a single-finding contradiction where a radiograph allows, else a normal one.
    assert kinds == {"r1": "normal_vs_abnormal", "r2": "normal_vs_abnormal", "r3": "single_finding"}
