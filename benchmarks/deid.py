"""De-identification benchmark: DICOM files/s (file in → file out) and report-text reports/s, on one core.

DICOM: copies of the real CR chest PA ``RG1_UNCR.dcm`` (pydicom-data, 1955 x 1841, 7 MB) and, when
../shared/data is present, the real DX ``cat.dcm`` (2614 x 3072, 16 MB), each given its own UIDs, run through
``DicomDeidentifier.deidentify_file`` with the Basic Profile and with a research option set; the OCR
check (tesseract) is timed separately on a few files. Text: the labelled sentences of tests/safety/data and,
when present, the IU X-ray validation reports, through ``ReportDeidentifier.deidentify``. Also records
recall/precision on the labelled sentences. Writes one JSON file.

    python benchmarks/deid.py [--files 20] [--out benchmarks/results/deid.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

sys.path.insert(0, str(Path(__file__).parent))
from report import git_commit

from radlvlm.safety.burned_in import tesseract_available
from radlvlm.safety.dicom_deid import DicomDeidentifier
from radlvlm.safety.profile import DeidOptions
from radlvlm.safety.pseudonyms import PseudonymMap
from radlvlm.safety.text_deid import ReportDeidentifier
from radlvlm.safety.text_eval import parse_labelled, score

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
LABELLED = REPO / "tests" / "safety" / "data"
RESEARCH = DeidOptions(retain_long_modified_dates=True, retain_patient_characteristics=True, clean_descriptors=True)


def make_files(folder: Path, source: Path, count: int) -> list[Path]:
    original = dcmread(source)
    paths = []
    for index in range(count):
        ds = original.copy()
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        path = folder / f"{source.stem}_{index:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def time_dicom(paths: list[Path], options: DeidOptions, out: Path) -> dict[str, float]:
    deid = DicomDeidentifier(PseudonymMap(bytes(32)), options)
    deid.deidentify_file(paths[0], out / "warmup.dcm")  # imports, table load, text engine
    start = time.perf_counter()
    for path in paths:
        outcome = deid.deidentify_file(path, out, by_uid=True)
        assert outcome.status == "written", outcome.reason
    seconds = time.perf_counter() - start
    return {
        "files": len(paths),
        "files_per_s": round(len(paths) / seconds, 2),
        "ms_per_file": round(1000 * seconds / len(paths), 1),
        "mb_per_file": round(sum(p.stat().st_size for p in paths) / len(paths) / 1e6, 2),
    }


def report_texts() -> dict[str, list[str]]:
    texts = {}
    labelled = []
    for half in ("dev", "test"):
        labelled += parse_labelled((LABELLED / f"report_phi_{half}.txt").read_text("utf-8").splitlines())
    texts["labelled_sentences"] = [item.text for item in labelled]
    iu = SHARED / "iu_xray" / "validation.jsonl"
    if iu.exists():
        rows = [json.loads(line) for line in iu.read_text().splitlines()]
        keys = ("indication", "comparison", "findings", "impression")
        texts["iu_xray_validation_reports"] = [" ".join(str(r.get(k) or "") for k in keys) for r in rows]
    return texts


def time_text(texts: list[str], deid: ReportDeidentifier) -> dict[str, float]:
    pseudonyms = PseudonymMap(bytes(32))
    start = time.perf_counter()
    for text in texts:
        deid.deidentify(text, pseudonyms, date_offset_days=-100)
    seconds = time.perf_counter() - start
    return {
        "reports": len(texts),
        "reports_per_s": round(len(texts) / seconds, 1),
        "mean_chars": round(sum(map(len, texts)) / len(texts)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "deid.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    sources = {"cr_chest_rg1": Path(str(get_testdata_file("RG1_UNCR.dcm", download=False)))}
    if (SHARED / "dicom" / "deid-data" / "cat.dcm").exists():
        sources["dx_cat"] = SHARED / "dicom" / "deid-data" / "cat.dcm"
    dicom: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, source in sources.items():
            folder = Path(tmp) / label
            folder.mkdir()
            paths = make_files(folder, source, args.files)
            for profile, options in (("basic", DeidOptions()), ("research", RESEARCH)):
                dicom[f"{label}_{profile}"] = time_dicom(paths, options, Path(tmp) / f"out_{label}_{profile}")
                print(label, profile, json.dumps(dicom[f"{label}_{profile}"]), file=sys.stderr)
            if tesseract_available():
                ocr = DeidOptions(ocr=True, burned_in="refuse")
                dicom[f"{label}_ocr"] = time_dicom(paths[:3], ocr, Path(tmp) / f"out_{label}_ocr")
                print(label, "ocr", json.dumps(dicom[f"{label}_ocr"]), file=sys.stderr)
    engine = ReportDeidentifier()
    text = {label: time_text(items, engine) for label, items in report_texts().items()}
    quality = {}
    for half in ("dev", "test"):
        labelled = parse_labelled((LABELLED / f"report_phi_{half}.txt").read_text("utf-8").splitlines())
        quality[half] = score(engine, labelled).to_dict()
    if "iu_xray_validation_reports" in report_texts():
        # Real reports, already de-identified by their source (XXXX): every word redacted here is a false alarm.
        words = flagged = 0
        for item in report_texts()["iu_xray_validation_reports"]:
            words += len(re.findall(r"[A-Za-z0-9]+", item))
            for span in engine.analyze(item):
                flagged += len(re.findall(r"[A-Za-z0-9]+", item[span.start : span.end]))
        quality["iu_xray_validation_words_redacted_fraction"] = round(flagged / words, 4)
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report = {
        "name": "deid",
        "commit": git_commit(),
        "device": {
            "cpu": platform.processor() or platform.machine(),
            "threads": 1,
            "python": platform.python_version(),
        },
        "config": {"files_per_source": args.files, "research_options": RESEARCH.enabled},
        "metrics": {"dicom": dicom, "text": text, "text_quality": quality, "peak_rss_mb": round(peak_rss_mb, 1)},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["metrics"], indent=2))


if __name__ == "__main__":
    main()
