"""The vLLM backend without vLLM: load refusals, request mapping, output parsing, settings selection.

vLLM needs a CUDA GPU of compute capability 8.0+, so CPU CI checks everything between our requests and vLLM:
the refusals (MoLE, DINOv2 towers, pooling, V100, no GPU), the engine arguments, the prompts and images we hand
vLLM, and the parsing of what it returns. A stand-in for vLLM built on transformers' Llava (same export, same
HF image processor vLLM runs) checks that the vLLM engine's greedy output equals the torch engine's. The real
vLLM comparison runs only where vLLM and a GPU are present (it skips here, saying why).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from testsupport import REPORT_CORPUS
from tinymodels import tiny_text_config, tiny_vision_config
from typer.testing import CliRunner

from radlvlm.cli import app
from radlvlm.engine import EngineClosed, Generated, Scored, ScoreRequest, Timings
from radlvlm.engine.batching import validate_request
from radlvlm.engine.torch_engine import TorchEngine
from radlvlm.engine.vllm_engine import (
    VLLMBindings,
    VLLMEngine,
    check_gpu,
    check_vllm_config,
    completion_of,
    engine_kwargs,
    generation_sampling,
    inspect_model_dir,
    load_vllm_engine,
    prompt_input,
    score_sampling,
    vllm_image,
    vllm_lora_rank,
)
from radlvlm.errors import InputError, ModelError
from radlvlm.imaging import ImageTransformConfig
from radlvlm.model import GenerationSettings, MoLEConfig, RadProcessor, build_config, build_model, train_tokenizer
from radlvlm.model.convert import export_hf_llava
from radlvlm.model.generation import decode_generation
from radlvlm.model.image_processing import RadImageProcessor
from radlvlm.model.pretrained import load_pretrained, save_pretrained
from radlvlm.pipeline.runtime import build_engine
from radlvlm.pipeline.task_engine import TaskEngine
from radlvlm.settings import Settings, VLLMOptions
from radlvlm.tasks.checking import (
    AnswerTokens,
    CheckRequest,
    CheckResult,
    ComplexCheckTask,
    SimpleCheckTask,
    simple_answer_tokens,
    yes_no_log_odds,
)
from radlvlm.tasks.drafting import DraftRequest, DraftResult, DraftStream, DraftTask, StreamDraftRequest, draft_prompt
from radlvlm.tasks.errorcheck import ErrorCheckTask, errorcheck_prompt

runner = CliRunner()
NO_GPU = (None, "this machine")


@pytest.fixture(scope="module")
def tokenizer():  # type: ignore[no-untyped-def]
    return train_tokenizer([*REPORT_CORPUS, "yes", "no", "FINDINGS: IMPRESSION:"] * 10, vocab_size=300, min_frequency=1)


def _model(tokenizer, tower: str = "clip", **kwargs: Any):  # type: ignore[no-untyped-def]
    config = build_config(
        tiny_vision_config(tower), tiny_text_config("llama", vocab_size=len(tokenizer)), image_token_id=3, **kwargs
    )
    return build_model(config, seed=0), RadProcessor.for_model(tokenizer, config)


@pytest.fixture(scope="module")
def clip_export(tmp_path_factory, tokenizer) -> Path:  # type: ignore[no-untyped-def]
    """A tiny CLIP-tower model exported as HF Llava (what the vLLM backend serves)."""
    model, processor = _model(tokenizer, "clip")
    return export_hf_llava(model, processor, tmp_path_factory.mktemp("vllm") / "clip-hf")


@pytest.fixture(scope="module")
def processor(clip_export: Path) -> RadProcessor:
    return RadProcessor.from_pretrained(clip_export)


def _pixels(rows: int = 28, columns: int = 28, seed: int = 0) -> torch.Tensor:
    """A grayscale image whose values are exact 8-bit levels (so 8-bit transport loses nothing)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (rows, columns), generator=generator).float() / 255.0


# -- what vLLM can load ----------------------------------------------------------------------------


def test_a_clip_export_passes_the_load_checks(clip_export: Path) -> None:
    spec = inspect_model_dir(clip_export)
    assert spec.vision_model == "clip_vision_model" and spec.text_model == "llama"
    assert spec.image_tokens == 4 and spec.adapter_dir is None and spec.lora_rank is None
    # The export's processor is HF's Llava processor around radlvlm's image processor (what vLLM calls), and the
    # torch backend loads the same directory.
    saved = json.loads((clip_export / "processor_config.json").read_text())
    assert saved["processor_class"] == "LlavaProcessor"
    assert spec.radlvlm_images
    _, processor = load_pretrained(clip_export)
    assert processor.num_image_tokens == 4 and processor.image_config.resize_mode == "pad"


def test_refusals_say_why_and_point_to_the_torch_backend(tmp_path: Path, tokenizer) -> None:  # type: ignore[no-untyped-def]
    dinov2, dinov2_processor = _model(tokenizer, "dinov2")
    with pytest.raises(ModelError, match=r"'dinov2'.*LLaVA-Rad.*torch backend"):
        inspect_model_dir(export_hf_llava(dinov2, dinov2_processor, tmp_path / "dinov2-hf"))

    pooled, pooled_processor = _model(tokenizer, "clip", visual_token_pool=1)
    with pytest.raises(ModelError, match=r"pooling.*torch backend"):
        inspect_model_dir(save_pretrained(pooled, pooled_processor, tmp_path / "pooled"))

    plain, plain_processor = _model(tokenizer, "clip")
    with pytest.raises(ModelError, match=r"RadProcessor.*not HF.s LlavaProcessor.*radlvlm convert export-hf"):
        inspect_model_dir(save_pretrained(plain, plain_processor, tmp_path / "ours"))

    export = export_hf_llava(plain, plain_processor, tmp_path / "clip-hf")
    from radlvlm.model.mole import inject_mole

    inject_mole(plain, MoLEConfig(num_experts=2, r=2)).save(tmp_path / "mole")
    with pytest.raises(ModelError, match=r"MoLE adapter cannot be served by vLLM.*torch backend"):
        inspect_model_dir(export, tmp_path / "mole")
    (tmp_path / "neither").mkdir()
    with pytest.raises(ModelError, match="neither a MoLE adapter"):
        inspect_model_dir(export, tmp_path / "neither")
    with pytest.raises(ModelError, match=r"no config\.json"):
        inspect_model_dir(tmp_path / "neither")
    with pytest.raises(ModelError, match="not an HF Llava model"):
        check_vllm_config({"model_type": "llama"}, "x")
    for tower in ("clip_vision_model", "siglip_vision_model"):
        check_vllm_config({"model_type": "llava", "vision_config": {"model_type": tower}}, "x")
    with pytest.raises(ModelError, match="'pixtral'"):  # vLLM builds it, but radlvlm's image path is not Pixtral's
        check_vllm_config({"model_type": "llava", "vision_config": {"model_type": "pixtral"}}, "x")


def test_a_peft_lora_adapter_is_served_through_multi_lora(tmp_path: Path, clip_export: Path) -> None:
    from radlvlm.model.lora import apply_lora

    base, _ = load_pretrained(clip_export)
    apply_lora(base, r=12, alpha=24).save_pretrained(tmp_path / "lora")
    spec = inspect_model_dir(clip_export, tmp_path / "lora")
    assert spec.lora_rank == 12
    kwargs = engine_kwargs(spec, VLLMOptions())
    assert kwargs["enable_lora"] is True and kwargs["max_lora_rank"] == 16 and kwargs["max_loras"] == 1
    assert [vllm_lora_rank(r) for r in (1, 2, 8, 9, 64, 65)] == [1, 8, 8, 16, 64, 128]
    config = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    (tmp_path / "lora" / "adapter_config.json").write_text(json.dumps({**config, "modules_to_save": ["lm_head"]}))
    with pytest.raises(ModelError, match=r"whole modules \(lm_head\).*radlvlm convert export-hf"):
        inspect_model_dir(clip_export, tmp_path / "lora")


def test_the_gpu_check_refuses_no_gpu_and_v100() -> None:
    with pytest.raises(ModelError, match=r"needs a CUDA GPU.*torch backend"):
        check_gpu(None)
    with pytest.raises(
        ModelError, match=r"Tesla V100 has compute capability 7\.0.*V100-class GPUs serve it with the torch"
    ):
        check_gpu((7, 0), "Tesla V100")
    check_gpu((8, 0), "A100")
    check_gpu((9, 0), "H100")


def test_engine_arguments_follow_the_options(clip_export: Path) -> None:
    spec = inspect_model_dir(clip_export)
    kwargs = engine_kwargs(spec, VLLMOptions())
    assert kwargs["model"] == str(clip_export) and kwargs["tokenizer"] == str(clip_export)
    assert kwargs["enable_prefix_caching"] is True and kwargs["limit_mm_per_prompt"] == {"image": 1}
    assert kwargs["logprobs_mode"] == "processed_logprobs" and kwargs["generation_config"] == "vllm"
    assert "speculative_config" not in kwargs and "enable_lora" not in kwargs and "max_model_len" not in kwargs
    tuned = engine_kwargs(
        spec, VLLMOptions(enable_prefix_caching=False, ngram_speculative_tokens=5, max_model_len=2048)
    )
    assert tuned["enable_prefix_caching"] is False and tuned["max_model_len"] == 2048
    assert tuned["speculative_config"] == {
        "method": "ngram",
        "num_speculative_tokens": 5,
        "prompt_lookup_min": 2,
        "prompt_lookup_max": 4,
    }
    for bad in ({"gpu_memory_utilization": 0.0}, {"ngram_speculative_tokens": -1}, {"ngram_lookup_min": 5}):
        with pytest.raises(InputError):
            VLLMOptions(**bad)  # type: ignore[arg-type]


# -- our requests → vLLM inputs --------------------------------------------------------------------


def test_prompts_are_the_torch_backends_token_ids_with_one_image_placeholder(processor: RadProcessor) -> None:
    image = _pixels(40, 30)
    draft = DraftTask(processor, GenerationSettings()).engine_request(DraftRequest(image=image, indication="cough"))
    prompt = prompt_input(draft.prompt_ids, draft.image)
    expected = processor.tokenizer(processor.chat_prompt(draft_prompt("cough")), add_special_tokens=False)["input_ids"]
    assert prompt["prompt_token_ids"] == expected
    assert prompt["prompt_token_ids"].count(processor.image_token_id) == 1  # vLLM expands it
    assert prompt["prompt_token_ids"].count(processor.tokenizer.bos_token_id) == 1  # no second BOS
    picture = prompt["multi_modal_data"]["image"]  # the radiograph itself, at full depth: vLLM prepares it
    assert picture.mode == "F" and picture.size == (30, 40)
    assert np.array_equal(np.asarray(picture), image.numpy())
    eight_bit = prompt_input(draft.prompt_ids, draft.image, float_pixels=False)["multi_modal_data"]["image"]
    assert eight_bit.mode == "RGB" and eight_bit.size == (30, 40)  # for a llava-hf checkpoint's CLIP processor

    answer = simple_answer_tokens(processor.tokenizer)
    assert answer is not None and answer.shared  # this byte-level BPE spells " yes"/" no" after a lone space
    report = "FINDINGS: Lungs clear."
    scoring = SimpleCheckTask(processor).engine_request(CheckRequest(report=report))
    assert isinstance(scoring, ScoreRequest) and scoring.candidates == (answer.yes, answer.no)
    simple = prompt_input(scoring.prompt_ids, scoring.image)
    text = processor.chat_prompt(errorcheck_prompt(ErrorCheckTask.SIMPLE, report), image=False)
    assert simple["prompt_token_ids"] == processor.tokenizer(text, add_special_tokens=False)["input_ids"] + list(
        answer.shared
    )
    assert "multi_modal_data" not in simple
    long = CheckRequest(report="FINDINGS: " + "effusion " * 600 + "\nIMPRESSION: Effusion.")
    assert "too long" in (SimpleCheckTask(processor).problem(long) or "")  # the task answers it, saying why
    with pytest.raises(InputError, match="model's context of 512"):  # and the engine refuses it before vLLM
        validate_request(SimpleCheckTask(processor).engine_request(long), processor)
    complex_ = ComplexCheckTask(processor).engine_request(CheckRequest(report=report, mode=ErrorCheckTask.COMPLEX))
    text = processor.chat_prompt(errorcheck_prompt(ErrorCheckTask.COMPLEX, report), image=False)
    assert list(complex_.prompt_ids) == processor.tokenizer(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("resize_mode", ["pad", "crop"])
def test_images_reach_the_model_as_the_torch_backend_prepares_them(
    tmp_path: Path,
    tokenizer,
    resize_mode: str,  # type: ignore[no-untyped-def]
) -> None:
    """The export's HF LlavaProcessor (what vLLM calls) prepares the image vLLM is given exactly as the torch
    backend does: same transform, same float pixels, same number of image tokens."""
    from transformers import AutoProcessor

    model, processor = _model(tokenizer, "clip")
    config = ImageTransformConfig(size=28, resize_mode=resize_mode, mean=(0.48, 0.46, 0.41), std=(0.27, 0.26, 0.28))
    ours = RadProcessor(
        RadImageProcessor.from_transform_config(config),
        processor.tokenizer,
        num_image_tokens=processor.num_image_tokens,
    )
    hf = AutoProcessor.from_pretrained(export_hf_llava(model, ours, tmp_path / "export"))
    assert type(hf).__name__ == "LlavaProcessor" and isinstance(hf.image_processor, RadImageProcessor)
    image = torch.rand(40, 30, generator=torch.Generator().manual_seed(1))  # not 8-bit levels: nothing is rounded
    batch = hf(text=["<image> Describe."], images=[vllm_image(image)], return_tensors="pt")
    assert torch.equal(batch["pixel_values"][0], ours.pixel_values([image])[0])
    assert int((batch["input_ids"][0] == ours.image_token_id).sum()) == ours.num_image_tokens


def test_sampling_arguments() -> None:
    greedy = generation_sampling(GenerationSettings(stop_strings=("END",), max_new_tokens=100))
    assert greedy == {
        "max_tokens": 100,
        "repetition_penalty": 1.0,
        "skip_special_tokens": True,
        "stop": ["END"],
        "temperature": 0.0,
    }
    sampled = generation_sampling(GenerationSettings(strategy="sample", temperature=0.7, top_p=0.9, seed=3))
    assert sampled["temperature"] == 0.7 and sampled["top_p"] == 0.9 and sampled["seed"] == 3
    with pytest.raises(ModelError, match="beam search"):
        generation_sampling(GenerationSettings(strategy="beam"))
    assert score_sampling((11, 12)) == {
        "max_tokens": 1,
        "temperature": 0.0,
        "logprobs": 2,
        "allowed_token_ids": [11, 12],
    }


# -- vLLM outputs → our results --------------------------------------------------------------------


def _output(token_ids: list[int], finish_reason: str | None = "stop", logprobs: Any = None) -> SimpleNamespace:
    return SimpleNamespace(
        outputs=[SimpleNamespace(token_ids=token_ids, finish_reason=finish_reason, logprobs=logprobs, text="ignored")]
    )


def test_outputs_are_decoded_as_the_torch_backend_decodes(processor: RadProcessor) -> None:
    tokenizer = processor.tokenizer
    ids = tokenizer(" FINDINGS: The lungs are clear. IMPRESSION: Normal.", add_special_tokens=False)["input_ids"]
    completion = completion_of(_output([*ids, tokenizer.eos_token_id]))
    generation = decode_generation(completion.token_ids, processor, GenerationSettings(max_new_tokens=64))
    assert generation.text == processor.decode(ids) and generation.new_tokens == len(ids)
    assert generation.finish_reason == "stop"
    cut = decode_generation(ids, processor, GenerationSettings(max_new_tokens=len(ids)))
    assert cut.finish_reason == "length"
    stopped = decode_generation(ids, processor, GenerationSettings(max_new_tokens=64, stop_strings=("IMPRESSION:",)))
    assert stopped.text == "FINDINGS: The lungs are clear." and stopped.finish_reason == "stop"
    for reason in ("abort", None):
        with pytest.raises(ModelError, match="did not finish"):
            completion_of(_output(ids, reason))
    with pytest.raises(ModelError, match="no completion"):
        completion_of(SimpleNamespace(outputs=[]))


def test_simple_verdicts_from_logprobs(processor: RadProcessor) -> None:
    answer = AnswerTokens((), 7, 9)
    step = {7: SimpleNamespace(logprob=math.log(0.2)), 9: SimpleNamespace(logprob=math.log(0.6))}
    completion = completion_of(_output([9], logprobs=[step]))
    assert completion.first_logprobs == pytest.approx({7: math.log(0.2), 9: math.log(0.6)})
    assert yes_no_log_odds(completion.first_logprobs, answer) == pytest.approx(math.log(0.2 / 0.6))
    assert yes_no_log_odds({7: -0.1}, answer) == math.inf  # the other had no probability left
    assert yes_no_log_odds({}, answer) is None
    request = CheckRequest(report="FINDINGS: Lungs clear.\nIMPRESSION: Normal chest.")
    task = SimpleCheckTask(processor)
    task.answer = answer
    timings = Timings(0.0, 1.0, 1.0, 1)
    result = task.result(request, Scored(completion.first_logprobs, timings), "m")
    assert result.answer_valid and result.raw_answer == "no" and result.text_only
    assert result.confidence == pytest.approx(0.75)  # renormalised over yes and no (no calibration)
    assert result.error_probability == pytest.approx(0.25) and not result.calibrated
    # No single token decides: the short decode is parsed instead.
    decoded = task.result(request, Generated("yes", 1, "stop", timings), "m")
    assert decoded.has_error is True and decoded.confidence is None and decoded.answer_valid
    garbled = task.result(request, Generated("perhaps", 2, "length", timings), "m")
    assert garbled.answer_valid is False and garbled.has_error is None


def test_complex_answers_are_parsed_or_reported_invalid(processor: RadProcessor) -> None:
    tokenizer = processor.tokenizer
    report = "FINDINGS: Small left pleural effusion."
    request = CheckRequest(report=report, mode=ErrorCheckTask.COMPLEX)
    answer = json.dumps({"has_error": True, "category": "wrong_location", "span": [17, 21]})
    ids = tokenizer(" " + answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    settings = GenerationSettings(max_new_tokens=96)
    timings = Timings(0.0, 1.0, 1.0, 1)
    task = ComplexCheckTask(processor)
    text = decode_generation(completion_of(_output(ids)).token_ids, processor, settings).text
    result = task.result(request, Generated(text, len(ids), "stop", timings), "m")
    assert result.answer_valid and result.has_error is True and result.findings[0].span == (17, 21)
    garbled = decode_generation([5, 6, 7], processor, settings).text
    invalid = task.result(request, Generated(garbled, 3, "length", timings), "m")
    assert invalid.answer_valid is False and invalid.has_error is None and invalid.findings == []


# -- the engine over a stand-in for vLLM -----------------------------------------------------------


class TransformersAsVLLM:
    """``vllm.LLM.generate`` played by transformers' Llava on the same export, with the HF image processor vLLM
    runs: prompt token ids, one image placeholder expanded, greedy decoding, EOS kept in ``token_ids``, and
    first-step logprobs after the allowed-token mask (``processed_logprobs``)."""

    def __init__(self, export: Path) -> None:
        from transformers import AutoProcessor, LlavaForConditionalGeneration

        self.model = LlavaForConditionalGeneration.from_pretrained(export).eval()
        self.image_processor = AutoProcessor.from_pretrained(export).image_processor
        self.image_tokens = inspect_model_dir(export).image_tokens
        self.calls: list[dict[str, Any]] = []

    @torch.inference_mode()
    def generate(self, prompts: list[dict[str, Any]], params: dict[str, Any], **kwargs: Any) -> list[Any]:
        self.calls.append({"prompts": len(prompts), "params": params, **kwargs})
        return [self._one(prompt, params) for prompt in prompts]

    def _one(self, prompt: dict[str, Any], params: dict[str, Any]) -> Any:
        image_id, eos = self.model.config.image_token_id, self.model.config.text_config.eos_token_id
        ids: list[int] = []
        for token in prompt["prompt_token_ids"]:
            ids.extend([token] * self.image_tokens if token == image_id else [token])
        inputs: dict[str, Any] = {"input_ids": torch.tensor([ids])}
        if "multi_modal_data" in prompt:
            pixels = self.image_processor(prompt["multi_modal_data"]["image"], return_tensors="np")["pixel_values"]
            inputs["pixel_values"] = torch.as_tensor(np.asarray(pixels)).float()
        if "allowed_token_ids" in params:
            logits = self.model(**inputs).logits[0, -1].float()
            allowed = params["allowed_token_ids"]
            logprobs = torch.log_softmax(logits[allowed], dim=-1).tolist()
            step = {token: SimpleNamespace(logprob=value) for token, value in zip(allowed, logprobs, strict=True)}
            best = allowed[int(np.argmax(logprobs))]
            return _output([best], "length", [step])
        out = self.model.generate(
            **inputs, max_new_tokens=params["max_tokens"], do_sample=False, eos_token_id=eos, pad_token_id=eos
        )
        new = out[0, len(ids) :].tolist()
        if eos in new:
            return _output(new[: new.index(eos) + 1], "stop")
        return _output(new, "length")


def _bindings() -> VLLMBindings:
    def no_llm(**_: Any) -> Any:
        raise AssertionError("the test hands the engine its LLM")

    return VLLMBindings(
        make_llm=no_llm,
        sampling_params=lambda **kwargs: kwargs,
        lora_request=lambda name, number, path: SimpleNamespace(name=name, id=number, path=path),
    )


@pytest.fixture(scope="module")
def engines(clip_export: Path, processor: RadProcessor):  # type: ignore[no-untyped-def]
    generation = GenerationSettings(max_new_tokens=12)
    stand_in = TransformersAsVLLM(clip_export)
    vllm = TaskEngine(
        VLLMEngine(stand_in, processor, bindings=_bindings(), model_id="tiny", max_wait_ms=20, generation=generation)
    )
    model, torch_processor = load_pretrained(clip_export)
    reference = TaskEngine(TorchEngine(model, torch_processor, model_id="tiny", max_wait_ms=20, generation=generation))
    yield vllm, reference, stand_in
    vllm.close()
    reference.close()


def test_greedy_drafts_and_checks_equal_the_torch_backend(engines) -> None:  # type: ignore[no-untyped-def]
    vllm, reference, _ = engines
    images = [_pixels(seed=s) for s in range(3)]
    for image, indication in zip(images, ["cough", None, "fever"], strict=True):
        ours = vllm.run(DraftRequest(image=image, indication=indication), timeout=60)
        theirs = reference.run(DraftRequest(image=image, indication=indication), timeout=60)
        assert isinstance(ours, DraftResult)
        assert (ours.text, ours.new_tokens, ours.finish_reason) == (
            theirs.text,
            theirs.new_tokens,
            theirs.finish_reason,
        )
        assert (ours.findings, ours.impression) == (theirs.findings, theirs.impression)
    for request in (
        CheckRequest(report="FINDINGS: Lungs clear.\nIMPRESSION: Normal chest.", image=images[0]),
        CheckRequest(report="FINDINGS: Lungs clear. IMPRESSION: Effusion."),
    ):
        ours, theirs = vllm.run(request, timeout=60), reference.run(request, timeout=60)
        assert isinstance(ours, CheckResult) and ours.answer_valid
        assert ours.has_error == theirs.has_error and ours.confidence == pytest.approx(theirs.confidence, abs=1e-5)
    request = CheckRequest(report="FINDINGS: Lungs clear.\nIMPRESSION: Normal chest.", mode=ErrorCheckTask.COMPLEX)
    ours, theirs = vllm.run(request, timeout=60), reference.run(request, timeout=60)
    assert (ours.raw_answer, ours.answer_valid) == (theirs.raw_answer, theirs.answer_valid)


def test_batches_streams_and_offline_runs(engines) -> None:  # type: ignore[no-untyped-def]
    vllm, reference, stand_in = engines
    images = [_pixels(seed=10 + s) for s in range(4)]
    futures = [vllm.submit(DraftRequest(image=image)) for image in images]
    batched = [future.result(timeout=60) for future in futures]
    assert max(result.timings.batch_size for result in batched) > 1
    assert [r.text for r in batched] == [reference.run(DraftRequest(image=i), timeout=60).text for i in images]

    stream = vllm.run(StreamDraftRequest(image=images[0]), timeout=60)
    assert isinstance(stream, DraftStream)
    assert "".join(stream) == batched[0].text and stream.result(timeout=1) is not None

    stand_in.calls.clear()
    mixed = [
        DraftRequest(image=images[1]),
        CheckRequest(report="FINDINGS: Lungs clear.\nIMPRESSION: Normal chest."),
        DraftRequest(image=images[2]),
        CheckRequest(report="FINDINGS: Heart normal.\nIMPRESSION: Normal chest.", mode=ErrorCheckTask.COMPLEX),
    ]
    results = vllm.run_all(mixed)
    assert [type(r).__name__ for r in results] == ["DraftResult", "CheckResult", "DraftResult", "CheckResult"]
    assert results[0].text == batched[1].text and results[2].text == batched[2].text
    # One generate call per group decoded alike (the drafts, the SIMPLE scoring, the COMPLEX answer):
    # vLLM's batch engine schedules them.
    assert [call["prompts"] for call in stand_in.calls] == [2, 1, 1]
    assert all(call["use_tqdm"] is False and call["lora_request"] is None for call in stand_in.calls)
    (empty,) = vllm.run_all([CheckRequest(report=" ")])  # answered, saying why; never sent to vLLM
    assert empty.answer_valid is False and empty.reason == "the report is empty"


def test_lora_requests_and_shutdown(clip_export: Path, processor: RadProcessor, tmp_path: Path) -> None:
    stand_in = TransformersAsVLLM(clip_export)
    engine = TaskEngine(
        VLLMEngine(
            stand_in,
            processor,
            bindings=_bindings(),
            model_id="tiny+lora",
            adapter_dir=tmp_path / "my-lora",
            generation=GenerationSettings(max_new_tokens=2),
        )
    )
    engine.run(DraftRequest(image=_pixels()), timeout=60)
    lora = stand_in.calls[-1]["lora_request"]
    assert (lora.name, lora.id, lora.path) == ("my-lora", 1, str(tmp_path / "my-lora"))
    engine.close()
    with pytest.raises(EngineClosed):
        engine.submit(DraftRequest(image=_pixels()))
    with pytest.raises(ModelError, match="beam search"):
        VLLMEngine(
            stand_in, processor, bindings=_bindings(), model_id="x", generation=GenerationSettings(strategy="beam")
        )


def test_loading_checks_the_model_before_the_gpu_and_the_gpu_before_vllm(
    tmp_path: Path, clip_export: Path, tokenizer
) -> None:  # type: ignore[no-untyped-def]
    dinov2, dinov2_processor = _model(tokenizer, "dinov2")
    export = export_hf_llava(dinov2, dinov2_processor, tmp_path / "dinov2-hf")
    with pytest.raises(ModelError, match="DINOv2"):
        load_vllm_engine(export, gpu=((9, 0), "H100"), bindings=_bindings())
    with pytest.raises(ModelError, match="V100-class"):
        load_vllm_engine(clip_export, gpu=((7, 0), "Tesla V100"), bindings=_bindings())
    with pytest.raises(ModelError, match="needs a CUDA GPU"):
        load_vllm_engine(clip_export, gpu=NO_GPU, bindings=_bindings())
    seen: dict[str, Any] = {}

    def make_llm(**kwargs: Any) -> Any:
        seen.update(kwargs)
        return TransformersAsVLLM(clip_export)

    bindings = VLLMBindings(make_llm, lambda **kw: kw, lambda *a: None)
    engine, _ = load_vllm_engine(
        clip_export, options=VLLMOptions(ngram_speculative_tokens=3), gpu=((9, 0), "H100"), bindings=bindings
    )
    try:
        assert seen["speculative_config"]["num_speculative_tokens"] == 3 and engine.model_id == "clip-hf"
        drafted = TaskEngine(engine).run(DraftRequest(image=_pixels(), max_new_tokens=2), timeout=60)
        assert isinstance(drafted, DraftResult)
    finally:
        engine.close()

    def broken(**_: Any) -> Any:
        raise ValueError("unsupported\nsecond line")

    with pytest.raises(ModelError, match=r"vLLM could not load the model \(ValueError: unsupported\)"):
        load_vllm_engine(clip_export, gpu=((9, 0), "H100"), bindings=VLLMBindings(broken, dict, dict))


# -- configuration ---------------------------------------------------------------------------------


def test_the_backend_is_chosen_by_configuration(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, clip_export: Path
) -> None:
    assert Settings().backend == "torch"  # the default is unchanged
    monkeypatch.setenv("RADLVLM_BACKEND", "vllm")
    monkeypatch.setenv("RADLVLM_VLLM_NGRAM_SPECULATIVE_TOKENS", "4")
    monkeypatch.setenv("RADLVLM_VLLM_PREFIX_CACHING", "false")
    settings = Settings(model_dir=clip_export)
    assert settings.backend == "vllm"
    options = settings.vllm_options()
    assert options.ngram_speculative_tokens == 4 and options.enable_prefix_caching is False
    monkeypatch.setenv("RADLVLM_BACKEND", "tensorrt")
    with pytest.raises(ValueError, match="backend"):
        Settings()
    monkeypatch.setenv("RADLVLM_BACKEND", "vllm")
    monkeypatch.setenv("RADLVLM_VLLM_NGRAM_LOOKUP_MIN", "9")
    with pytest.raises(ValueError, match="lookup_min"):
        Settings()
    monkeypatch.delenv("RADLVLM_VLLM_NGRAM_LOOKUP_MIN")
    if not torch.cuda.is_available():  # on CPU the vLLM backend refuses before importing vLLM
        with pytest.raises(ModelError, match="needs a CUDA GPU"):
            build_engine(settings)


def test_serve_with_the_vllm_backend_refuses_in_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tokenizer
) -> None:  # type: ignore[no-untyped-def]
    dinov2, dinov2_processor = _model(tokenizer, "dinov2")
    export = export_hf_llava(dinov2, dinov2_processor, tmp_path / "llava-rad-hf")
    monkeypatch.setenv("RADLVLM_AUTH_DISABLED", "true")
    monkeypatch.setenv("RADLVLM_AUDIT_PATH", str(tmp_path / "audit.jsonl"))
    monkeypatch.setenv("RADLVLM_DEID_KEY_PATH", str(tmp_path / "deid.key"))
    result = runner.invoke(app, ["serve", "--model", str(export), "--backend", "vllm"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "torch backend" in result.stderr and len(result.stderr.strip().splitlines()) <= 3
    bad = runner.invoke(app, ["serve", "--model", str(export), "--backend", "tensorrt"])
    assert bad.exit_code == 2 and "invalid configuration" in bad.stderr


# -- real vLLM (GPU only) --------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="vLLM needs a CUDA GPU (compute capability 8.0+)")
def test_real_vllm_greedy_output_equals_the_torch_backend(tmp_path: Path, tokenizer) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("vllm", reason="vLLM is not installed here (the [vllm] extra lives in its own environment)")
    from transformers import CLIPVisionConfig, LlamaConfig

    vision = CLIPVisionConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, image_size=56, patch_size=14
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,  # head size 64: one every vLLM attention backend has
        num_key_value_heads=4,
        max_position_embeddings=1024,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    config = build_config(vision, text, image_token_id=3)
    export = export_hf_llava(build_model(config, seed=0), RadProcessor.for_model(tokenizer, config), tmp_path / "hf")
    generation = GenerationSettings(max_new_tokens=24)
    loaded, _ = load_vllm_engine(
        export,
        options=VLLMOptions(dtype="float32", gpu_memory_utilization=0.3, enforce_eager=True),
        generation=generation,
    )
    engine = TaskEngine(loaded)
    model, processor = load_pretrained(export)
    reference = TaskEngine(TorchEngine(model.cuda(), processor, model_id="ref", generation=generation))
    try:
        for seed in range(4):
            request = DraftRequest(image=_pixels(56, 56, seed=seed))
            assert engine.run(request, timeout=300).text == reference.run(request, timeout=300).text
    finally:
        engine.close()
        reference.close()
