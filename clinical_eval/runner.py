"""Validation-study runner: score a predictions file against references, write metrics JSON and an HTML report.

The HTML report is self-contained (plots are inline SVG) and stamped with the dataset (references file name,
row count, sha256), the model (as the predictions name it, or as given) and the code version (radlvlm version
and git commit when run from a checkout), so a committee can tell exactly what was measured.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import subprocess
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

import radlvlm
from radlvlm.clinical_eval.bertscore import bertscore
from radlvlm.clinical_eval.judges import Judge, JudgeResult, StructuredJudge
from radlvlm.clinical_eval.metrics import (
    bleu_from_statistics,
    bleu_statistics,
    clinical_metrics,
    errorcheck_complex_metrics,
    errorcheck_simple_metrics,
    judge_metrics,
    nlg_metrics,
    prf_from_counts,
)
from radlvlm.clinical_eval.predictions import (
    ScoringSet,
    is_errorcheck_reference,
    load_rows,
    match_rows,
    report_reference,
)
from radlvlm.clinical_eval.stats import mcnemar, paired_bootstrap
from radlvlm.errors import EvaluationInputError
from radlvlm.reports.labeler import label_report
from radlvlm.tasks.errorcheck import AnswerParseError, parse_complex_answer, parse_simple_answer

__all__ = ["TASKS", "code_version", "file_stamp", "run_validation_study", "score"]

logger = logging.getLogger(__name__)

TASKS = ("report", "errorcheck")
UNPARSEABLE = "unparseable"


def code_version() -> dict[str, str]:
    """radlvlm's version and, when the package runs from a git checkout, its commit (``+dirty`` if edited)."""
    out = {"radlvlm": radlvlm.__version__, "commit": "unknown"}
    root = Path(radlvlm.__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        out["commit"] = commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass  # an installed wheel has no git history; the version alone identifies it
    for lib in ("sacrebleu", "rouge-score", "numpy", "scikit-learn"):
        try:
            out[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            out[lib] = "absent"
    return out


def file_stamp(path: Path | str) -> dict[str, Any]:
    """Name, size and sha256 of a file (identifies a dataset or predictions file without copying it)."""
    path = Path(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return {"name": path.name, "bytes": path.stat().st_size, "sha256": digest}


def _parse_errorcheck(prediction: str) -> tuple[bool | None, str | None, list[int] | None, bool]:
    """(has_error, category, span, complex_format) of an answer; ``has_error`` None when unparseable."""
    try:
        answer = parse_complex_answer(prediction)
        span = list(answer.span) if answer.span else None
        return answer.has_error, answer.category.value if answer.category else None, span, True
    except AnswerParseError:
        pass
    try:
        return parse_simple_answer(prediction), None, None, False
    except AnswerParseError:
        return None, None, None, False


def _score_errorcheck(data: ScoringSet, n_boot: int, seed: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    truth = [bool(r["has_error"]) for r in data.references]
    parsed = [_parse_errorcheck(p["prediction"]) for p in data.predictions]
    n_unparseable = sum(p[0] is None for p in parsed)
    # An unreadable answer is scored as wrong, never dropped: the denominator stays every study.
    predicted = [(not t) if p[0] is None else p[0] for t, p in zip(truth, parsed, strict=True)]
    confidences = [p.get("confidence") for p in data.predictions]
    have_conf = all(c is not None for c in confidences)
    out: dict[str, Any] = {
        "n_unparseable_answers": n_unparseable,
        "simple": errorcheck_simple_metrics(
            truth, predicted, [float(c) for c in confidences] if have_conf else None, n_boot=n_boot, seed=seed
        ),
    }
    if any(p[3] for p in parsed):
        true_cat = [r.get("category") if r["has_error"] else None for r in data.references]
        pred_cat = [UNPARSEABLE if p[0] is None else (p[1] if p[0] else None) for p in parsed]
        pred_cat = [c if c is not None or not h else UNPARSEABLE for c, h in zip(pred_cat, predicted, strict=True)]
        out["complex"] = errorcheck_complex_metrics(
            true_cat,
            pred_cat,
            [r.get("span") for r in data.references],
            [p[2] for p in parsed],
            n_boot=n_boot,
            seed=seed,
        )
    per_study = [
        {"id": i, "has_error": t, "predicted_error": p, "predicted_category": q[1], "parsed": q[0] is not None}
        for i, t, p, q in zip(data.ids, truth, predicted, parsed, strict=True)
    ]
    return out, per_study


def _score_report(
    data: ScoringSet,
    judges: Sequence[Judge],
    n_boot: int,
    seed: int,
    bertscore_encoder: Path | None = None,
    bertscore_layer: int | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, list[JudgeResult]]]:
    predictions = [p["prediction"] for p in data.predictions]
    references = [report_reference(r) for r in data.references]
    pred_labels = [label_report(t) for t in predictions]
    ref_labels = [label_report(t) for t in references]
    out: dict[str, Any] = {
        "nlg": nlg_metrics(predictions, references, n_boot=n_boot, seed=seed),
        "clinical": clinical_metrics(pred_labels, ref_labels, n_boot=n_boot, seed=seed),
        "judges": {},
    }
    if bertscore_encoder is not None:
        out["bertscore"] = bertscore(
            predictions, references, bertscore_encoder, layer=bertscore_layer, n_boot=n_boot, seed=seed
        )
    judged: dict[str, list[JudgeResult]] = {}
    for judge in judges:
        judged[judge.name] = [judge.judge(c, r) for c, r in zip(predictions, references, strict=True)]
        out["judges"][judge.name] = judge_metrics(judged[judge.name], n_boot=n_boot, seed=seed)
    per_study = []
    for k, sid in enumerate(data.ids):
        entry: dict[str, Any] = {
            "id": sid,
            "predicted_labels": {n: v.value for n, v in pred_labels[k].labels.items()},
            "reference_labels": {n: v.value for n, v in ref_labels[k].labels.items()},
        }
        for name, results in judged.items():
            entry[f"judge:{name}"] = results[k].as_dict()
        per_study.append(entry)
    return out, per_study, judged


def score(
    data: ScoringSet,
    task: str,
    *,
    judges: Sequence[Judge] = (),
    n_boot: int = 1000,
    seed: int = 0,
    bertscore_encoder: Path | str | None = None,
    bertscore_layer: int | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """All metrics of ``task`` (``report`` or ``errorcheck``) over a matched scoring set, and per-study rows;
    BERTScore too when a local encoder folder is given (report task)."""
    if task == "errorcheck":
        return _score_errorcheck(data, n_boot, seed)
    if task == "report":
        encoder = Path(bertscore_encoder) if bertscore_encoder is not None else None
        metrics, per_study, _ = _score_report(data, judges, n_boot, seed, encoder, bertscore_layer)
        return metrics, per_study
    raise EvaluationInputError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")


def _compare(
    task: str, a: ScoringSet, b: ScoringSet, judges: Sequence[Judge], n_boot: int, seed: int
) -> dict[str, Any]:
    """Paired comparison of two systems on the same studies (paired bootstrap; McNemar for error-check)."""
    if a.ids != b.ids:
        raise EvaluationInputError("the two predictions files do not cover the same studies; cannot pair them")
    n = len(a.ids)
    if task == "errorcheck":
        truth = np.array([bool(r["has_error"]) for r in a.references])

        def correct(s: ScoringSet) -> np.ndarray:
            got = [_parse_errorcheck(p["prediction"])[0] for p in s.predictions]
            return np.array([g is not None and g == t for g, t in zip(got, truth, strict=True)])

        ca, cb = correct(a), correct(b)
        return {
            "accuracy": paired_bootstrap(
                lambda i: float(ca[i].mean()), lambda i: float(cb[i].mean()), n, n_boot=n_boot, seed=seed
            ),
            "mcnemar": mcnemar(list(ca), list(cb)),
        }
    from rouge_score import rouge_scorer  # noqa: PLC0415 - rouge-score: only when ROUGE is compared, not at `radlvlm` start-up

    refs = [report_reference(r) for r in a.references]
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    out: dict[str, Any] = {}
    ra = np.array(
        [scorer.score(r, p["prediction"])["rougeL"].fmeasure for r, p in zip(refs, a.predictions, strict=True)]
    )
    rb = np.array(
        [scorer.score(r, p["prediction"])["rougeL"].fmeasure for r, p in zip(refs, b.predictions, strict=True)]
    )
    sa = bleu_statistics([p["prediction"] for p in a.predictions], refs)
    sb = bleu_statistics([p["prediction"] for p in b.predictions], refs)
    out["bleu_4"] = paired_bootstrap(
        bleu_from_statistics(sa, 4), bleu_from_statistics(sb, 4), n, n_boot=n_boot, seed=seed
    )
    out["rouge_l"] = paired_bootstrap(lambda i: ra[i].mean(), lambda i: rb[i].mean(), n, n_boot=n_boot, seed=seed)
    ref_pos = [label_report(r).positive() for r in refs]

    def counts(s: ScoringSet) -> np.ndarray:
        rows = []
        for p, truth in zip(s.predictions, ref_pos, strict=True):
            pred = label_report(p["prediction"]).positive()
            rows.append([len(pred & truth), len(pred - truth), len(truth - pred)])
        return np.array(rows, dtype=float)

    ka, kb = counts(a), counts(b)

    def micro(k: np.ndarray):
        return lambda i: prf_from_counts(*k[i].sum(0))[2]

    out["chexpert14_micro_f1"] = paired_bootstrap(micro(ka), micro(kb), n, n_boot=n_boot, seed=seed)
    for judge in judges:
        ea = np.array(
            [judge.judge(p["prediction"], r).count(significant=True) for p, r in zip(a.predictions, refs, strict=True)]
        )
        eb = np.array(
            [judge.judge(p["prediction"], r).count(significant=True) for p, r in zip(b.predictions, refs, strict=True)]
        )
        out[f"significant_errors_per_report:{judge.name}"] = paired_bootstrap(
            lambda i, ea=ea: ea[i].mean(), lambda i, eb=eb: eb[i].mean(), n, n_boot=n_boot, seed=seed
        )
    return out


def _model_name(rows: Sequence[dict[str, Any]], given: str | None, path: Path) -> str:
    if given:
        return given
    names = sorted({str(r["model"]) for r in rows if r.get("model")})
    return ", ".join(names) if names else path.stem


def run_validation_study(
    predictions: Path | str,
    references: Path | str,
    out_dir: Path | str,
    *,
    task: str | None = None,
    judges: Sequence[Judge] | None = None,
    compare: Path | str | None = None,
    model: str | None = None,
    dataset: str | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    allow_missing: bool = False,
    bertscore_encoder: Path | str | None = None,
    bertscore_layer: int | None = None,
    split: str | None = None,
) -> dict[str, Any]:
    """Score ``predictions`` against ``references`` and write ``metrics.json``, ``per_study.jsonl`` (ids and
    labels, no text) and ``report.html`` into ``out_dir``.

    Args:
        predictions (`Path`): predictions file (JSONL/Parquet; see :mod:`radlvlm.clinical_eval.predictions`).
        references (`Path`): references file (report references, IU-Xray manifest rows or error-check rows).
        out_dir (`Path`): created if needed.
        task (`str`, *optional*): ``report`` or ``errorcheck``; detected from the references when omitted.
        judges (`Sequence[Judge]`, *optional*): CheXprompt-like judges for the report task (default: the
            structured judge).
        compare (`Path`, *optional*): a second predictions file to compare with on the same studies.
        model (`str`, *optional*): model name for the stamp (default: the predictions' ``model`` field).
        dataset (`str`, *optional*): dataset name for the stamp (default: the references file name).
        n_boot (`int`, defaults to `1000`): bootstrap resamples.
        seed (`int`, defaults to `0`): bootstrap seed.
        allow_missing (`bool`, defaults to `False`): drop and count ids present on one side only.
        bertscore_encoder (`Path`, *optional*): a local Hugging Face encoder folder; adds BERTScore.
        bertscore_layer (`int`, *optional*): its hidden-state layer (default the last).
        split (`str`, *optional*): score only the reference rows whose ``split`` field equals this (an
            error-check set or an IU-Xray manifest holding several splits).

    Returns:
        The metrics dict written to ``metrics.json``.
    """
    predictions, references, out_dir = Path(predictions), Path(references), Path(out_dir)
    prediction_rows, reference_rows, n_reference_file, task = _study_inputs(predictions, references, split, task)
    data = _match(prediction_rows, reference_rows, task, allow_missing, (predictions.name, references.name))
    logger.info("%s: %s", task, data.counts_line())  # ids and counts only, never report text
    judges = list(judges) if judges is not None else [StructuredJudge()]
    metrics, per_study = score(
        data,
        task,
        judges=judges,
        n_boot=n_boot,
        seed=seed,
        bertscore_encoder=bertscore_encoder,
        bertscore_layer=bertscore_layer,
    )
    result: dict[str, Any] = {
        "task": task,
        "stamp": _stamp(
            predictions, references, prediction_rows, model=model, dataset=dataset, n_boot=n_boot, seed=seed
        ),
        "counts": {**data.counts, "reference_rows_in_file": n_reference_file, "split": split},
        "dropped_ids": data.dropped_ids,
        "metrics": metrics,
    }
    if compare is not None:
        # The second system is matched to the same references, so the two are paired study by study.
        other_path = Path(compare)
        other = _match(load_rows(other_path), reference_rows, task, allow_missing, (other_path.name, references.name))
        result["comparison"] = {
            "a": result["stamp"]["model"],
            "b": _model_name(load_rows(other_path), None, other_path),
            "b_predictions": file_stamp(other_path),
            "paired": _compare(task, data, other, judges, n_boot, seed),
        }
    _write_study(out_dir, result, per_study)
    return result


def _study_inputs(
    predictions: Path, references: Path, split: str | None, task: str | None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int, str]:
    """The prediction rows, the reference rows of ``split``, how many rows the references file holds, the task."""
    prediction_rows, reference_rows = load_rows(predictions), load_rows(references)
    n_reference_file = len(reference_rows)
    reference_rows = _rows_of_split(reference_rows, split, references)
    return prediction_rows, reference_rows, n_reference_file, _resolve_task(task, reference_rows)


def _rows_of_split(reference_rows: list[dict[str, Any]], split: str | None, references: Path) -> list[dict[str, Any]]:
    """The reference rows of ``split`` (all rows when None); a split with no row is an error, not an empty study."""
    if split is None:
        return reference_rows
    reference_rows = [r for r in reference_rows if r.get("split") == split]
    if not reference_rows:
        raise EvaluationInputError(f"{references.name}: no row in split {split!r}")
    return reference_rows


def _resolve_task(task: str | None, reference_rows: list[dict[str, Any]]) -> str:
    """The task asked for, or the one the references are rows of (error-check rows carry ``has_error``)."""
    if task is None:
        task = "errorcheck" if is_errorcheck_reference(reference_rows) else "report"
    if task not in TASKS:
        raise EvaluationInputError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")
    return task


def _match(
    prediction_rows: list[dict[str, Any]],
    reference_rows: list[dict[str, Any]],
    task: str,
    allow_missing: bool,
    names: tuple[str, str],
) -> ScoringSet:
    """Predictions paired with references by study id (``names``: the two files, for error messages)."""
    return match_rows(
        prediction_rows, reference_rows, errorcheck=task == "errorcheck", allow_missing=allow_missing, names=names
    )


def _stamp(
    predictions: Path,
    references: Path,
    prediction_rows: list[dict[str, Any]],
    *,
    model: str | None,
    dataset: str | None,
    n_boot: int,
    seed: int,
) -> dict[str, Any]:
    """What was measured (dataset, model, code version) and how, so a committee can tell one run from another."""
    return {
        "dataset": dataset or references.name,
        "references": file_stamp(references),
        "predictions": file_stamp(predictions),
        "model": _model_name(prediction_rows, model, predictions),
        "code": code_version(),
        "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "n_boot": n_boot,
        "seed": seed,
        "ci": "percentile bootstrap 95% over studies",
    }


def _write_study(out_dir: Path, result: dict[str, Any], per_study: list[dict[str, Any]]) -> None:
    """``metrics.json``, ``per_study.jsonl`` and the self-contained ``report.html`` in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(result, indent=2, default=_json_default) + "\n")
    with (out_dir / "per_study.jsonl").open("w") as handle:
        for row in per_study:
            handle.write(json.dumps(row, default=_json_default) + "\n")
    from radlvlm.clinical_eval.html_report import render_report  # noqa: PLC0415 - Jinja2 and matplotlib: only when report.html is written, not at `radlvlm` start-up

    (out_dir / "report.html").write_text(render_report(result), encoding="utf-8")


def headline(result: dict[str, Any]) -> dict[str, Any]:
    """The few numbers a reader wants first (each with its CI); the rest is in metrics.json."""
    m = result["metrics"]
    head: dict[str, Any] = {"task": result["task"], "model": result["stamp"]["model"], "counts": result["counts"]}
    if result["task"] == "report":
        head["bleu_4"] = m["nlg"]["bleu_4"]
        head["rouge_l"] = m["nlg"]["rouge_l"]
        if "bertscore" in m:
            head["bertscore_f1"] = m["bertscore"]["f1"]
        head["chexpert14_micro_f1"] = m["clinical"]["chexpert14_positive"]["micro_f1"]
        head["chexpert5_micro_f1"] = m["clinical"]["chexpert5_positive"]["micro_f1"]
        for name, j in m["judges"].items():
            head[f"significant_errors_per_report:{name}"] = j["significant_errors_per_report"]
    else:
        head.update({k: m["simple"][k] for k in ("accuracy", "f1", "auroc") if k in m["simple"]})
        if "complex" in m:
            head["complex_macro_f1"] = m["complex"]["macro_f1"]
    if "comparison" in result:
        head["comparison"] = result["comparison"]["paired"]
    return head


def _json_default(value: Any) -> Any:
    if isinstance(value, np.integer | np.floating):
        return value.item()
    if isinstance(value, frozenset | set):
        return sorted(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
