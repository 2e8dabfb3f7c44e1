"""Prompt profiles: a converted LLaVA-Rad is asked in LLaVA-Rad's own words and token ids, writes findings only,
and says it cannot check reports instead of guessing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from testsupport import REPORT_CORPUS, draft_prompt_for
from tinymodels import tiny_text_config, tiny_vision_config

from radlvlm.engine.torch_engine import TorchEngine
from radlvlm.model import GenerationSettings, RadProcessor, build_config, build_model, train_tokenizer
from radlvlm.model.profile import PROFILES, VICUNA_V1_SYSTEM
from radlvlm.pipeline.task_engine import TaskEngine
from radlvlm.tasks.checking import CheckRequest
from radlvlm.tasks.drafting import DraftRequest, parse_draft

spm = pytest.importorskip("sentencepiece", reason="the [llava-rad] extra (sentencepiece) is not installed")
IMAGE_INDEX = -200  # LLaVA's IMAGE_TOKEN_INDEX: the placeholder id its tokenisation inserts

V1_NO_REASON = (
    f"{VICUNA_V1_SYSTEM} USER: <image>\nProvide a description of the findings in the radiology image. ASSISTANT:"
)


@pytest.fixture(scope="module")
def vicuna_like(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    """A Llama-style sentencepiece tokenizer (byte fallback, dummy prefix, BOS 1) trained here: no downloads."""
    work = tmp_path_factory.mktemp("sp")
    corpus = work / "corpus.txt"
    corpus.write_text("\n".join([VICUNA_V1_SYSTEM, V1_NO_REASON.replace("<image>", ""), *REPORT_CORPUS] * 20))
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(work / "tok"), vocab_size=400, model_type="bpe", bos_id=1, eos_id=2,
        unk_id=0, pad_id=-1, byte_fallback=True, character_coverage=1.0, normalization_rule_name="identity",
        remove_extra_whitespaces=False, split_digits=True, minloglevel=2,
    )  # fmt: skip
    directory = work / "vicuna"
    directory.mkdir()
    shutil.copy(work / "tok.model", directory / "tokenizer.model")  # Vicuna v1.5 ships only tokenizer.model
    (directory / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"})
    )
    return directory, spm.SentencePieceProcessor(model_file=str(work / "tok.model"))


def reference_ids(prompt: str, sp: object) -> list[int]:
    """What LLaVA-Rad's ``tokenizer_image_token`` gives with the slow sentencepiece tokenizer: each piece around
    ``<image>`` encoded alone with BOS, the BOS kept on the first piece only, IMAGE_INDEX between pieces."""
    pieces = [[1, *sp.encode(piece)] for piece in prompt.split("<image>")]  # type: ignore[attr-defined]
    ids = [1]
    for index, piece in enumerate(pieces):
        if index:
            ids.append(IMAGE_INDEX)
        ids.extend(piece[1:])
    return ids


def _processor(directory: Path, profile: str) -> RadProcessor:
    from radlvlm.model.convert import _prepare_tokenizer

    tokenizer = _prepare_tokenizer(directory)
    config = build_config(
        tiny_vision_config("dinov2"),
        tiny_text_config("llama", vocab_size=len(tokenizer)),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
    )
    return RadProcessor.for_model(tokenizer, config, profile=profile)


@pytest.mark.parametrize("indication", [None, "Cough and fever for three days."])
def test_llava_rad_prompts_are_token_exact(vicuna_like, indication: str | None) -> None:  # type: ignore[no-untyped-def]
    directory, sp = vicuna_like
    processor = _processor(directory, "llava-rad")
    prompt = draft_prompt_for(processor, indication)
    request = "Provide a description of the findings in the radiology image"
    expected = (
        f"{request}. ASSISTANT:" if indication is None else f"{request} given the following indication: {indication}"
    )
    assert prompt.startswith(f"{VICUNA_V1_SYSTEM} USER: <image>\n{request}") and prompt.endswith(
        expected if indication is None else f"{expected} ASSISTANT:"
    )
    ours = processor.prompt_ids(prompt)
    ours = [IMAGE_INDEX if token == processor.image_token_id else token for token in ours]
    assert ours == reference_ids(prompt, sp)
    # What tokenising the prompt at once gives is not that (the piece after <image> loses its word boundary):
    whole = processor.tokenizer(prompt, add_special_tokens=True)["input_ids"]
    whole = [IMAGE_INDEX if token == processor.image_token_id else token for token in whole]
    assert whole != reference_ids(prompt, sp)


def test_the_profile_travels_with_the_model(vicuna_like, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    directory, _ = vicuna_like
    processor = _processor(directory, "llava-rad")
    processor.save_pretrained(tmp_path / "p")
    again = RadProcessor.from_pretrained(tmp_path / "p")
    assert again.profile is PROFILES["llava-rad"]
    expected = processor.prompt_ids(draft_prompt_for(processor, "cough"))
    assert again.prompt_ids(draft_prompt_for(again, "cough")) == expected


def test_a_model_not_trained_for_checks_says_so_and_drafts_findings_only(vicuna_like) -> None:  # type: ignore[no-untyped-def]
    directory, _ = vicuna_like
    processor = _processor(directory, "llava-rad")
    config = build_config(
        tiny_vision_config("dinov2"),
        tiny_text_config("llama", vocab_size=len(processor.tokenizer)),
        image_token_id=processor.image_token_id,
    )
    engine = TaskEngine(
        TorchEngine(
            build_model(config, seed=0),
            processor,
            model_id="llava-rad-like",
            generation=GenerationSettings(max_new_tokens=6),
        )
    )
    try:
        check = engine.run(CheckRequest(report="FINDINGS: Clear.\nIMPRESSION: Normal."), timeout=60)
        assert check.answer_valid is False and check.has_error is None
        assert check.reason == "this model was not trained for error checks"
        draft = engine.run(DraftRequest(image=torch.rand(40, 40)), timeout=60)
        assert draft.impression == "" and processor.image_token not in draft.text  # findings only; no <image>
    finally:
        engine.close()
    assert parse_draft("The lungs are clear.").impression == ""


def test_radlvlm_models_keep_their_own_prompt() -> None:
    tokenizer = train_tokenizer([*REPORT_CORPUS, "yes", "no"] * 10, vocab_size=300, min_frequency=1)
    config = build_config(
        tiny_vision_config("dinov2"), tiny_text_config("llama", vocab_size=len(tokenizer)), image_token_id=3
    )
    processor = RadProcessor.for_model(tokenizer, config)
    assert processor.profile.name == "radlvlm" and processor.profile.error_checks
    assert "Write the findings and impression" in draft_prompt_for(processor, None)
    assert (
        processor.prompt_ids(draft_prompt_for(processor, None))
        == processor.tokenizer(draft_prompt_for(processor, None), add_special_tokens=False)["input_ids"]
    )
