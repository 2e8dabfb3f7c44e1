"""BERTScore with a tiny local encoder built in code (no download)."""

from __future__ import annotations

from pathlib import Path

import pytest

from radlvlm.clinical_eval.bertscore import bertscore
from radlvlm.errors import EvaluationInputError

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "heart", "is", "normal", "in", "size", "lungs", "are"]
WORDS += ["clear", "no", "pleural", "effusion", "mild", "cardiomegaly", "small", "left", "right", "pneumothorax"]
WORDS += [".", ","]


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-bert")
    (folder / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    tokenizer = transformers.BertTokenizerFast(vocab_file=str(folder / "vocab.txt"))
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=len(WORDS),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    transformers.BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_identical_texts_score_one_and_different_texts_less(encoder: Path) -> None:
    same = bertscore(["the heart is normal in size ."], ["the heart is normal in size ."], encoder, layer=0, n_boot=10)
    assert same["f1"]["value"] == pytest.approx(1.0, abs=1e-5) and same["layer"] == 0
    preds = ["the heart is normal in size .", "mild cardiomegaly ."]
    refs = ["the heart is normal in size .", "small left pleural effusion ."]
    result = bertscore(preds, refs, encoder, layer=0, n_boot=50)
    assert 0 < result["f1"]["value"] < 1
    assert result["f1"]["ci_low"] <= result["f1"]["value"] <= result["f1"]["ci_high"]


def test_bad_encoder_and_inputs(encoder: Path, tmp_path: Path) -> None:
    with pytest.raises(EvaluationInputError, match="not found"):
        bertscore(["a"], ["b"], tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EvaluationInputError, match="cannot load"):
        bertscore(["a"], ["b"], tmp_path / "empty")
    with pytest.raises(EvaluationInputError, match="layer 9 out of range"):
        bertscore(["a"], ["b"], encoder, layer=9)
    with pytest.raises(EvaluationInputError, match="aligned"):
        bertscore(["a"], [], encoder)


def test_runner_adds_bertscore(encoder: Path, tmp_path: Path) -> None:
    import json

    from radlvlm.clinical_eval.runner import run_validation_study

    refs = tmp_path / "r.jsonl"
    preds = tmp_path / "p.jsonl"
    refs.write_text(
        "".join(
            json.dumps({"id": i, "reference": t}) + "\n" for i, t in enumerate(["mild cardiomegaly .", "no effusion ."])
        )
    )
    preds.write_text(
        "".join(
            json.dumps({"id": i, "prediction": t}) + "\n" for i, t in enumerate(["cardiomegaly .", "no effusion ."])
        )
    )
    result = run_validation_study(
        preds, refs, tmp_path / "out", n_boot=10, bertscore_encoder=encoder, bertscore_layer=0
    )
    assert 0 < result["metrics"]["bertscore"]["f1"]["value"] < 1
    assert "BERTScore f1" in (tmp_path / "out" / "report.html").read_text()
