"""Fixtures for the service tests: a tiny saved model and a real server around it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from servicesupport import Server, make_settings, start_server
from testsupport import REPORT_CORPUS
from tinymodels import tiny_text_config, tiny_vision_config

from radlvlm.model import RadProcessor, build_config, build_model, train_tokenizer
from radlvlm.model.pretrained import save_pretrained


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tokenizer = train_tokenizer([*REPORT_CORPUS, "yes", "no"] * 10, vocab_size=300, min_frequency=1)
    config = build_config(
        tiny_vision_config("dinov2"), tiny_text_config("llama", vocab_size=len(tokenizer)), image_token_id=3
    )
    directory = tmp_path_factory.mktemp("model") / "tiny-radlvlm"
    save_pretrained(build_model(config, seed=0), RadProcessor.for_model(tokenizer, config), directory)
    return directory


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("service")
    settings, key, check_key = make_settings(tmp, tiny_model_dir)
    uv, thread, url, app = start_server(settings)
    yield Server(url, key, check_key, settings, app)
    uv.should_exit = True
    thread.join(timeout=30)
