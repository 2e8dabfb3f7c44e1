"""Tiny models and tokenizers for the model tests, built in code (no downloads)."""

from __future__ import annotations

import pytest
from testsupport import REPORT_CORPUS
from tinymodels import tiny_text_config, tiny_vision_config
from transformers import PreTrainedTokenizerFast

from radlvlm.model import RadProcessor, build_config, build_model, train_tokenizer


@pytest.fixture(scope="session")
def tokenizer() -> PreTrainedTokenizerFast:
    return train_tokenizer(REPORT_CORPUS * 10, vocab_size=300, min_frequency=1)


@pytest.fixture
def tiny(tokenizer):  # type: ignore[no-untyped-def]
    """(model, processor): DINOv2 tower (28 px, 4 visual tokens) + 2-layer Llama."""
    config = build_config(
        tiny_vision_config("dinov2"), tiny_text_config("llama", vocab_size=len(tokenizer)), image_token_id=3
    )
    model = build_model(config, seed=0)
    return model, RadProcessor.for_model(tokenizer, config)
