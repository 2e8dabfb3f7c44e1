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
from radlvlm.service.settings import ServiceSettings


@dataclass
class Server:
    url: str
    key: str
    check_only_key: str
    settings: ServiceSettings
    app: object

    def client(self, key: str | None = None) -> httpx.Client:
        headers = {"X-API-Key": key if key is not None else self.key}
        return httpx.Client(base_url=self.url, headers=headers, timeout=120)


def start_server(settings: ServiceSettings) -> tuple[uvicorn.Server, threading.Thread, str, object]:
    app = build_app(settings)
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


def make_settings(tmp: Path, model_dir: Path, **overrides: object) -> tuple[ServiceSettings, str, str]:
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
    return ServiceSettings(**values), key, check_key  # type: ignore[arg-type]
