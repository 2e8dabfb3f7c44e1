"""Service test helpers: a real uvicorn server on 127.0.0.1 (random port) around a radlvlm app."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import uvicorn

from radlvlm.service.security import new_key
from radlvlm.service.serve import build_app
from radlvlm.settings import Settings


@dataclass
class Server:
    url: str
    key: str
    check_only_key: str
    settings: Settings
    app: object

    def client(self, key: str | None = None) -> httpx.Client:
        headers = {"X-API-Key": key if key is not None else self.key}
        return httpx.Client(base_url=self.url, headers=headers, timeout=120)


def start_server(settings: Settings, **build_options: object) -> tuple[uvicorn.Server, threading.Thread, str, object]:
    app = build_app(settings, **build_options)  # type: ignore[arg-type]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    return server, thread, f"http://127.0.0.1:{port}", app


def make_settings(tmp: Path, model_dir: Path, **overrides: object) -> tuple[Settings, str, str]:
    key, entry = new_key(("draft", "check", "deid", "admin"))
    check_key, check_entry = new_key(("check",))
    values: dict[str, object] = {
        "model_dir": model_dir,
        "api_keys": f"{entry};{check_entry}",
        "audit_path": tmp / "audit.jsonl",
        "deid_key_path": tmp / "deid.key",
        "max_new_tokens": 8,
        "max_body_bytes": 20 * 2**20,
        **overrides,
    }
    return Settings(**values), key, check_key  # type: ignore[arg-type]


def build_tiny_model_dir(directory: Path) -> Path:
    """A tiny random radlvlm model saved to ``directory`` (DINOv2 28 px + 2-layer Llama)."""
    from testsupport import REPORT_CORPUS
    from tinymodels import tiny_text_config, tiny_vision_config

    from radlvlm.model import RadProcessor, build_config, build_model, train_tokenizer
    from radlvlm.model.pretrained import save_pretrained

    tokenizer = train_tokenizer([*REPORT_CORPUS, "yes", "no"] * 10, vocab_size=300, min_frequency=1)
    config = build_config(
        tiny_vision_config("dinov2"), tiny_text_config("llama", vocab_size=len(tokenizer)), image_token_id=3
    )
    return save_pretrained(build_model(config, seed=0), RadProcessor.for_model(tokenizer, config), directory)


def build_tiny_classifier(
    directory: Path, *, abnormal_threshold: float = 0.5, never_called: tuple[str, ...] = ()
) -> Path:
    """A tiny random finding classifier saved to ``directory``, with thresholds, validated labels (``never_called``
    ones validated without a threshold) and an image-only image-check fusion (so the image-check path runs end to
    end)."""
    import torch

    from radlvlm.model.findings import FindingClassifier, FindingClassifierConfig
    from radlvlm.tasks.image_check import ImageCheckFusion

    torch.manual_seed(0)
    config = FindingClassifierConfig(
        image_size=32,
        embedding_size=8,
        hidden_sizes=(8, 16),
        depths=(1, 1),
        ensemble=2,
        thresholds={"Abnormal": abnormal_threshold, "Effusion": 0.5, "Cardiomegaly": 0.5},
        validated={
            "Abnormal": {"oof_auroc_nih": 0.8},
            "Effusion": {"oof_auroc_nih": 0.8},
            **{label: {"oof_auroc_nih": 0.7} for label in never_called},
        },
    )
    FindingClassifier(config).save_pretrained(directory)
    ImageCheckFusion(
        weights={"normal": 1.0, "asserted": 1.0, "denied": 1.0, "omitted": 0.5}, bias=0.0, threshold=0.5
    ).save(directory)
    return directory
