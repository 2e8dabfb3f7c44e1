"""BERTScore (Zhang et al. 2020) with a local Hugging Face encoder: greedy cosine matching of contextual token
embeddings, precision/recall/F1 per study, bootstrap CIs over studies.

Only runs when the caller names a local encoder folder (``save_pretrained`` layout); nothing is downloaded. No
idf weighting and no baseline rescaling, so values are comparable only between runs with the same encoder and
layer (both are recorded in the result).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from radlvlm.clinical_eval.stats import bootstrap
from radlvlm.errors import EvaluationInputError

__all__ = ["bertscore"]


def _embed(texts: Sequence[str], tokenizer: Any, model: Any, layer: int, batch_size: int, max_length: int) -> list:
    import torch  # noqa: PLC0415 - torch: only when BERTScore runs

    out = []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(
            list(texts[start : start + batch_size]),
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
            return_special_tokens_mask=True,
        )
        special = batch.pop("special_tokens_mask").bool()
        with torch.inference_mode():
            hidden = model(**batch, output_hidden_states=True).hidden_states[layer]
        hidden = torch.nn.functional.normalize(hidden.float(), dim=-1)
        keep = batch["attention_mask"].bool() & ~special  # [CLS]/[SEP]/padding carry no content
        out.extend(hidden[i][keep[i]] for i in range(hidden.shape[0]))
    return out


def bertscore(
    predictions: Sequence[str],
    references: Sequence[str],
    encoder: Path | str,
    *,
    layer: int | None = None,
    batch_size: int = 16,
    max_length: int = 512,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """BERTScore precision, recall and F1 (means over studies, with bootstrap CIs).

    Args:
        predictions (`Sequence[str]`): candidate reports.
        references (`Sequence[str]`): reference reports, aligned.
        encoder (`Path`): a local folder with a Hugging Face encoder and its tokenizer (e.g. a BERT/RoBERTa
            model saved with ``save_pretrained``).
        layer (`int`, *optional*): hidden-state layer to use (0 = embeddings); default the last.
        batch_size (`int`, defaults to `16`): texts per forward pass.
        max_length (`int`, defaults to `512`): tokens kept per text.
        n_boot (`int`, defaults to `1000`), seed (`int`, defaults to `0`): bootstrap settings.

    Raises:
        EvaluationInputError: the folder is missing or holds no loadable encoder, or the inputs are not aligned.
    """
    if len(predictions) != len(references) or not predictions:
        raise EvaluationInputError(
            f"BERTScore needs aligned, non-empty inputs ({len(predictions)} vs {len(references)})"
        )
    path = Path(encoder)
    if not path.is_dir():
        raise EvaluationInputError(f"{path}: BERTScore encoder folder not found")
    try:
        from transformers import AutoModel, AutoTokenizer  # noqa: PLC0415 - transformers: only when BERTScore runs

        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModel.from_pretrained(path, local_files_only=True).eval()
    except ImportError as e:
        raise EvaluationInputError("BERTScore needs the transformers package") from e
    except (OSError, ValueError) as e:
        raise EvaluationInputError(f"{path}: cannot load an encoder and tokenizer ({type(e).__name__})") from e
    n_layers = int(getattr(model.config, "num_hidden_layers", 0))
    layer = n_layers if layer is None else layer
    if not 0 <= layer <= n_layers:
        raise EvaluationInputError(f"BERTScore layer {layer} out of range 0..{n_layers}")
    cand = _embed(predictions, tokenizer, model, layer, batch_size, max_length)
    ref = _embed(references, tokenizer, model, layer, batch_size, max_length)
    scores = np.zeros((len(cand), 3))
    for i, (c, r) in enumerate(zip(cand, ref, strict=True)):
        if len(c) == 0 or len(r) == 0:
            continue  # a text with no content token matches nothing: all three stay 0
        sim = (c @ r.T).numpy()
        p, rec = float(sim.max(1).mean()), float(sim.max(0).mean())
        scores[i] = (p, rec, 2 * p * rec / (p + rec) if p + rec > 0 else 0.0)
    n = len(scores)
    out: dict[str, Any] = {"encoder": path.name, "layer": layer}
    for k, name in enumerate(("precision", "recall", "f1")):
        out[name] = bootstrap(lambda idx, k=k: float(scores[idx, k].mean()), n, n_boot=n_boot, seed=seed).as_dict()
    return out
