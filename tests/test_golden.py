"""Golden outputs (issue 27, item 1): what the doors answer today for a fixed set of requests, recorded before the
structure changes, so a refactor that changes an answer is seen. The shipped embedded model answers drafts,
checks (text-only, with the image, COMPLEX), de-identification and refusals through ``POST /v1/...`` on a real
server, and the CLI gives the same drafts and checks; the labeler's reading of the 3,551 IU reports is recorded
as per-label counts and a digest (no report text is stored: the IU licence forbids redistribution).

Snapshots are syrupy's (``tests/__snapshots__/test_golden/``). A change in them is a bug, or is measured and
explained in the commit that rewrites them with ``pytest tests/test_golden.py --snapshot-update``.

Robust across CPUs: decoding is greedy over float32 logits, probabilities are rounded to two decimals, and
volatile fields (timings, request ids, pseudonyms keyed by a per-run project key) are left out.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from servicesupport import make_settings, start_server
from syrupy.assertion import SnapshotAssertion
from syrupy.extensions.json import JSONSnapshotExtension
from testsupport import pydicom_file, shared_path
from typer.testing import CliRunner

from radlvlm.cli import app
from radlvlm.reports.labeler import label_report

TOKENS = 96
SUITE = Path(__file__).resolve().parent / "data" / "errorcheck_blatant.json"
# Contradictions of each direction and clean reports from the hand-written suite, and one report per
# check mode with the radiograph.
SUITE_CASES = ("c01", "c04", "c21", "c29", "n01", "n05", "n12", "n20")
WITH_IMAGE = "FINDINGS: The heart is normal in size. The lungs are clear.\nIMPRESSION: Pneumonia."
PHI_TEXT = (
    "Seen by Dr. John Smith on 03/04/2021 for Mary Jones, MRN 1234567, at Mercy Hospital, Boston. "
    "Call 617-555-0199 with questions.\nFINDINGS: No pleural effusion."
)
# Keys whose values change from run to run (timings, ids) or with the per-run project key (pseudonyms), and
# pseudonymous UIDs (2.25.<keyed digits>) inside messages.
VOLATILE = {"timings", "request_id", "study_pseudonym", "pseudonym"}
PSEUDONYMOUS_UID = re.compile(r"\b2\.25\.\d+")


@pytest.fixture
def snapshot_json(snapshot: SnapshotAssertion) -> SnapshotAssertion:
    return snapshot.use_extension(JSONSnapshotExtension)


def stable(value: Any) -> Any:
    """``value`` without volatile fields, floats rounded to two decimals (other CPUs' float kernels differ in
    the last bits, never in the second decimal but at a boundary)."""
    if isinstance(value, dict):
        return {k: stable(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [stable(v) for v in value]
    if isinstance(value, float):
        return round(value, 2)
    if isinstance(value, str):
        return PSEUDONYMOUS_UID.sub("2.25.<pseudonym>", value)
    return value


def _png(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="PNG")
    return out.getvalue()


def radiographs() -> dict[str, tuple[str, bytes, str]]:
    """The draft requests' files: the real CR chest PA from pydicom-data as DICOM, and three PNGs made from it
    (full size, mirrored, a 64-px thumbnail as in NIH), so the classifier reads four different images."""
    dicom = pydicom_file("RG1_UNCR.dcm")
    ds = dcmread(dicom)
    pixels = ds.pixel_array.astype(np.float32)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        pixels = pixels.max() - pixels
    low, high = np.percentile(pixels, (1, 99))
    gray = (np.clip((pixels - low) / (high - low), 0, 1) * 255).astype(np.uint8)
    thumbnail = np.asarray(Image.fromarray(gray).resize((64, 64), Image.Resampling.BILINEAR))
    return {
        "dicom": ("study.dcm", dicom.read_bytes(), "application/dicom"),
        "png": ("study.png", _png(gray), "image/png"),
        "png_mirrored": ("mirrored.png", _png(gray[:, ::-1].copy()), "image/png"),
        "png_64px": ("thumb.png", _png(thumbnail), "image/png"),
    }


@pytest.fixture(scope="module")
def answers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Every recorded HTTP answer (status and body), from one server on the shipped model."""
    tmp = tmp_path_factory.mktemp("golden")
    settings, key, _ = make_settings(tmp, None, max_new_tokens=TOKENS)  # type: ignore[arg-type]
    server, thread, url, _ = start_server(settings)
    cases = {c["id"]: c for c in json.loads(SUITE.read_text())["cases"]}
    files = radiographs()
    out: dict[str, Any] = {}

    def record(name: str, response: httpx.Response) -> None:
        body = response.json() if response.headers.get("content-type", "").startswith("application/json") else None
        out[name] = {"status": response.status_code, "body": stable(body)}

    try:
        with httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=300) as client:
            for name, upload in files.items():
                record(f"draft/{name}", client.post("/v1/drafts", files={"file": upload}))
            for case_id in SUITE_CASES:
                text = cases[case_id]["text"]
                record(f"check/simple/{case_id}", client.post("/v1/checks", data={"report": text, "mode": "simple"}))
            for mode in ("simple", "complex"):
                form = {"report": WITH_IMAGE, "mode": mode}
                record(f"check/{mode}/with_image", client.post("/v1/checks", data=form, files={"file": files["dicom"]}))
            record("deid/text", client.post("/v1/deid", data={"text": PHI_TEXT}))
            extremity = ("hand.dcm", pydicom_file("RG3_UNCR.dcm").read_bytes(), "application/dicom")
            record("refused/draft_not_a_chest", client.post("/v1/drafts", files={"file": extremity}))
            record("refused/draft_empty_file", client.post("/v1/drafts", files={"file": ("x.png", b"", "image/png")}))
            record("refused/check_no_report", client.post("/v1/checks", data={"mode": "simple"}))
            record("refused/deid_both", client.post("/v1/deid", data={"text": "x"}, files={"file": files["dicom"]}))
    finally:
        server.should_exit = True
        thread.join(timeout=30)
    yield out


def test_http_answers_are_the_recorded_ones(answers: dict[str, Any], snapshot_json: SnapshotAssertion) -> None:
    assert answers == snapshot_json


def test_the_cli_drafts_and_checks_as_the_api_does(answers: dict[str, Any], tmp_path: Path) -> None:
    """The CLI is another door over the same use cases: its JSON is the API's body, field for field."""
    runner = CliRunner()
    study = tmp_path / "study.dcm"
    study.write_bytes(radiographs()["dicom"][1])
    drafted = runner.invoke(app, ["draft", str(study), "--max-new-tokens", str(TOKENS)])
    assert drafted.exit_code == 0, drafted.output
    assert stable(json.loads(drafted.stdout)) == answers["draft/dicom"]["body"]
    report = tmp_path / "report.txt"
    report.write_text(WITH_IMAGE)
    checked = runner.invoke(app, ["check", str(study), "--report", str(report), "--mode", "simple"])
    assert checked.exit_code == 0, checked.output
    assert stable(json.loads(checked.stdout)) == answers["check/simple/with_image"]["body"]


def test_the_labeler_reads_the_iu_reports_as_recorded(snapshot_json: SnapshotAssertion) -> None:
    """Every clinical metric reads the labeler: its reading of all IU reports, as per-label counts of positive,
    uncertain and negative, and a digest of the per-report readings (so any one changed report shows)."""
    folder = shared_path("iu_xray")
    digest = hashlib.sha256()
    counts: Counter[str] = Counter()
    reports = 0
    for split in ("train", "validation", "test"):
        for line in (folder / f"{split}.jsonl").read_text().splitlines():
            row = json.loads(line)
            labeled = label_report(f"FINDINGS: {row['findings']}\nIMPRESSION: {row['impression']}")
            reading = sorted((name, value.value) for name, value in labeled.labels.items())
            digest.update(json.dumps([row["uid"], reading]).encode())
            counts.update(f"{name}: {value}" for name, value in reading)
            reports += 1
    assert {"reports": reports, "counts": dict(sorted(counts.items())), "digest": digest.hexdigest()} == snapshot_json
