"""``benchmarks/gpu.py`` on CPU: the smoke run exercises the script; without a GPU the real run exits 2."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu.py"


@pytest.fixture(scope="module")
def gpu() -> ModuleType:
    spec = importlib.util.spec_from_file_location("benchmark_gpu", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_smoke_run_measures_the_hf_half_on_cpu(gpu: ModuleType, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "gpu-smoke.json"
    monkeypatch.setattr(sys, "argv", ["gpu.py", "--smoke", "--requests", "1", "--out", str(out)])
    assert gpu.entry() == 0
    report = json.loads(out.read_text())
    assert report["name"] == "gpu-smoke" and report["device"]["kind"] == "cpu"
    assert {"torch", "transformers", "radlvlm"} <= set(report["versions"])
    hf = report["metrics"]["hf_generate"]
    assert hf["single_request"]["n"] == 1 and hf["new_tokens_mean"] == 8  # EOS unreachable: full-length drafts
    assert hf["throughput"]["batch_1"]["studies_per_s"] > 0
    assert report["metrics"]["pooling"]["visual_tokens"] == 4 and "quality_cost" in report["metrics"]["pooling"]
    assert report["config"]["parts"] == ["hf", "pool"]  # the vLLM parts need a GPU


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_without_a_gpu_the_real_run_exits_2_in_one_line(gpu: ModuleType, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(sys, "argv", ["gpu.py"])
    assert gpu.entry() == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "needs a CUDA GPU" in err and "--smoke" in err
    monkeypatch.setattr(sys, "argv", ["gpu.py", "--smoke", "--parts", "hf,tensorrt"])
    assert gpu.entry() == 2
    assert "unknown part(s) tensorrt" in capsys.readouterr().err
