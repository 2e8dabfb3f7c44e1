"""Ingest benchmark: decode + display pipeline + resize of chest-size radiographs, per core.

Builds 2500 x 2048 CR chest images from the real RG1 chest PA of pydicom-data (upsampled, 15-bit,
MONOCHROME1, windowed), writes them uncompressed and as JPEG 2000 lossless, then times
``read_image_file`` + ``ToModelInput`` (518 px) on one thread, several passes (medians and ranges). Writes one
JSON file.

    python benchmarks/ingest.py [--images 40] [--rounds 5] [--out benchmarks/results/ingest.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import JPEG2000Lossless, generate_uid

sys.path.insert(0, str(Path(__file__).parent))
from report import git_commit

from radlvlm.imaging import ImageTransformConfig, ToModelInput, read_image_file

ROWS, COLUMNS = 2500, 2048


def make_chest_files(folder: Path, count: int, syntax: str | None) -> list[Path]:
    source = dcmread(get_testdata_file("RG1_UNCR.dcm", download=False))
    stored = torch.from_numpy(source.pixel_array.astype(np.float32))[None, None]
    upsampled = F.interpolate(stored, size=(ROWS, COLUMNS), mode="bilinear", align_corners=False)[0, 0]
    pixels = upsampled.round().clamp(0, 2**15 - 1).numpy().astype(np.uint16)
    paths = []
    for index in range(count):
        ds = source.copy()
        ds.file_meta = copy.deepcopy(source.file_meta)  # compress() rewrites the transfer syntax in place
        ds.Rows, ds.Columns = ROWS, COLUMNS
        ds.PixelData = np.roll(pixels, index * 7, axis=1).tobytes()  # distinct content per file
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        if syntax is not None:
            ds.compress(syntax)
        path = folder / f"chest_{index:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def time_ingest(paths: list[Path], transform: ToModelInput, rounds: int) -> dict[str, object]:
    """``rounds`` passes over the files (the first after a warm-up read of one file, so every pass reads from the
    page cache); per pass the images/s and the per-stage ms per image, reported as median and range."""
    read_image_file(paths[0])  # warm-up: imports, plugin discovery
    passes = []
    for _ in range(rounds):
        decode_seconds = transform_seconds = 0.0
        for path in paths:
            start = time.perf_counter()
            image = read_image_file(path)
            middle = time.perf_counter()
            out = transform(image)
            end = time.perf_counter()
            assert out.shape[-1] == transform.config.size
            decode_seconds += middle - start
            transform_seconds += end - middle
        passes.append(
            {
                "images_per_s": len(paths) / (decode_seconds + transform_seconds),
                "decode_ms_per_image": 1000 * decode_seconds / len(paths),
                "transform_ms_per_image": 1000 * transform_seconds / len(paths),
            }
        )
    summary: dict[str, object] = {"images": len(paths), "rounds": rounds}
    for key in passes[0]:
        values = [p[key] for p in passes]
        summary[key] = round(statistics.median(values), 2)
        summary[f"{key}_range"] = [round(min(values), 2), round(max(values), 2)]
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=5, help="passes over the files (median and range reported)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "ingest.json")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the target is per core
    transform = ToModelInput(ImageTransformConfig(size=518))
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, syntax in (("uncompressed", None), ("jpeg2000_lossless", JPEG2000Lossless)):
            folder = Path(tmp) / label
            folder.mkdir()
            count = args.images if syntax is None else max(4, args.images // 4)
            paths = make_chest_files(folder, count, syntax)
            results[label] = time_ingest(paths, transform, args.rounds if syntax is None else 2)
            results[label]["file_mb"] = round(sum(p.stat().st_size for p in paths) / len(paths) / 1e6, 2)
            print(label, json.dumps(results[label]), file=sys.stderr)
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report = {
        "name": "ingest",
        "commit": git_commit(),
        "device": {
            "cpu": platform.processor() or platform.machine(),
            "threads": 1,
            "python": platform.python_version(),
        },
        "config": {
            "rows": ROWS,
            "columns": COLUMNS,
            "bits_stored": 15,
            "model_input": 518,
            "resize_mode": "pad",
            "rounds": args.rounds,
        },
        "metrics": {**results, "peak_rss_mb": round(peak_rss_mb, 1)},
        "target": {"uncompressed_images_per_s_per_core": 50},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["metrics"], indent=2))


if __name__ == "__main__":
    main()
