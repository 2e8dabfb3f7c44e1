"""The shipped model's drafts follow the image: a draft states what the finding classifier read in its radiograph,
so swapping two studies' radiographs swaps their drafts' findings. Real NIH test radiographs (skipped, saying why,
without them)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from testsupport import shared_path

from radlvlm.model.default import classifier_beside, embedded_model
from radlvlm.pipeline import build_runtime, draft_study
from radlvlm.pipeline.ingest import StudyInput
from radlvlm.pipeline.runtime import Caller
from radlvlm.reports.labeler import label_report
from radlvlm.settings import Settings
from radlvlm.tasks.drafting import draft_target
from radlvlm.tasks.image_findings import WRITER_LABELS, report_labels


def _drafted(runtime, path: Path) -> tuple[set[str], set[str]]:  # type: ignore[no-untyped-def]
    outcome = draft_study(runtime, StudyInput(data=path.read_bytes(), view="PA"), Caller("test", "test"))
    written = label_report(draft_target(outcome.findings, outcome.impression)).positive() & set(WRITER_LABELS)
    return written, set(report_labels(outcome.image_findings["stated"]))


def test_swapping_two_radiographs_swaps_their_drafts_findings(tmp_path: Path) -> None:
    if classifier_beside(embedded_model()) is None:
        pytest.skip("the shipped model carries no finding classifier")
    manifest = shared_path("nih_cxr14", "manifest.jsonl")
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    test_512 = [r for r in rows if r["split"] == "test" and max(r["stored_size"]) >= 512]
    settings = Settings(audit_path=tmp_path / "audit.jsonl", deid_key_path=tmp_path / "key", max_new_tokens=96)
    runtime = build_runtime(settings, audit=False)
    try:
        drafted: dict[frozenset[str], tuple[Path, set[str]]] = {}
        for row in test_512:  # two radiographs whose drafts state different findings
            path = manifest.parent / row["file"]
            written, given = _drafted(runtime, path)
            if written == given:  # the draft said what its image showed (the flag marks the others)
                drafted.setdefault(frozenset(written), (path, given))
            if len(drafted) == 2:
                break
        assert len(drafted) == 2, "no two radiographs gave drafts with different findings"
        (a, given_a), (b, given_b) = drafted.values()
        assert given_a != given_b
        # The same two studies with their radiographs swapped: the drafts' findings swap with them.
        assert (_drafted(runtime, b)[0], _drafted(runtime, a)[0]) == (given_b, given_a)
    finally:
        runtime.close()
