"""Install a trained model as the package's embedded default: float16 weights, ``model.json`` and the model card.

    radlvlm embedded ship --work runs/embedded --to radlvlm/model/weights/default

Takes the final model of an embedded-model working folder (the DPO-aligned one when its evaluation shows it
is better, else stage 2) and the figures its evaluation wrote, and renders the model card from them, so that
every number in the card comes from a file the recipe produced.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from radlvlm.errors import InputError
from radlvlm.model.default import MODEL_CARD, MODEL_INFO
from radlvlm.model.modeling import load_model
from radlvlm.model.mole import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from radlvlm.model.pretrained import save_pretrained
from radlvlm.model.processor import RadProcessor
from radlvlm.tasks.calibration import CALIBRATION_FILE
from radlvlm.tasks.consistency_model import CONSISTENCY_MODEL_FILE
from radlvlm.training.dpo_eval import markdown_table

MAX_SHIPPED_BYTES = 40 * 1024 * 1024
CHECK_MAX_DROP = 0.02  # accuracy points an error check may lose to DPO before stage 2 ships instead


def _fmt(metric: Any) -> str:
    if not isinstance(metric, dict) or "value" not in metric:
        return "n/a" if metric is None else f"{metric:.3f}" if isinstance(metric, float) else str(metric)
    if metric.get("ci_low") is None:
        return f"{metric['value']:.3f}"
    return f"{metric['value']:.3f} [{metric['ci_low']:.3f}, {metric['ci_high']:.3f}]"


# DPO is kept only if it is better: safer on every safety figure it targets (not worse on any), no more
# errors per report in all (false + omitted findings: fewer inventions must not be bought with more omissions),
# abstains on out-of-scope images at least as often, and loses at most one point of CheXpert-14 micro F1.
_LOWER_IS_SAFER = ("false_findings_per_report", "unsupported_comparison_rate", "identifier_in_output_rate")


def dpo_is_better(alignment: dict[str, Any]) -> tuple[bool, str]:
    """Whether the DPO model (``after``) should replace stage 2 (``before``), and why, from dpo_eval's metrics."""
    before, after = alignment["metrics"]["before"], alignment["metrics"]["after"]

    def value(side: dict[str, Any], metric: str) -> float:
        return float(side[metric]["value"]) if side.get(metric) else float("nan")

    if value(after, "chexpert14_micro_f1") < value(before, "chexpert14_micro_f1") - 0.01:
        return False, "CheXpert-14 micro F1 dropped by more than 1 point"
    worse = [m for m in _LOWER_IS_SAFER if value(after, m) > value(before, m)]
    if worse:
        return False, f"worse after DPO: {', '.join(worse)}"
    errors = ("false_findings_per_report", "omitted_findings_per_report")
    if sum(value(after, m) for m in errors) > sum(value(before, m) for m in errors):
        return False, "more false plus omitted findings per report after DPO"
    if value(after, "abstention_accuracy_out_of_scope") < value(before, "abstention_accuracy_out_of_scope"):
        return False, "abstains less often on out-of-scope images"
    # Aligning the drafts must not cost the error checks (it once cost COMPLEX half its macro-F1).
    checks = ("errorcheck_simple_accuracy", "errorcheck_complex_accuracy")
    costly = [m for m in checks if value(after, m) < value(before, m) - CHECK_MAX_DROP]
    if costly:
        return False, f"error checks worse after DPO: {', '.join(costly)}"
    gained = [m for m in (*_LOWER_IS_SAFER, "abstention_accuracy_out_of_scope") if value(after, m) != value(before, m)]
    if not gained:
        return False, "no safety figure changed"
    return True, f"safer on {', '.join(gained)}; CheXpert-14 F1 within 1 point"


def _final_model(work: Path) -> tuple[Path, Path, str, str]:
    """(base, adapter, stage, reason): the DPO model when its evaluation says it is better, else stage 2."""
    alignment_path = work / "dpo" / "eval" / "metrics.json"
    if alignment_path.is_file() and (work / "dpo" / "run" / "adapter").is_dir():
        better, reason = dpo_is_better(json.loads(alignment_path.read_text()))
        if better:
            return work / "dpo" / "run" / "base", work / "dpo" / "run" / "adapter", "dpo", reason
        return work / "stage2" / "run" / "base", work / "stage2" / "run" / "adapter", "stage2", reason
    return work / "stage2" / "run" / "base", work / "stage2" / "run" / "adapter", "stage2", "no DPO run"


def _half_base(source: Path, target: Path, *, vision_reading: dict[str, Any] | None = None) -> None:
    """``source`` saved in float16 as ``target``; ``vision_reading`` (calibration, thresholds, validated labels)
    replaces a finding-classifier tower's own, as the classifier's recipe last fitted them."""
    model = load_model(source, dtype=torch.float16)
    # The sub-configs remember the local folders they were built from; a shipped config names none.
    for config in (model.config, model.config.text_config, model.config.vision_config):
        config._name_or_path = ""
    for key, value in (vision_reading or {}).items():
        setattr(model.config.vision_config, key, value)
    save_pretrained(model, RadProcessor.from_pretrained(source), target)


def _half_adapter(source: Path, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source / ADAPTER_CONFIG, target / ADAPTER_CONFIG)
    state = {k: v.to(torch.float16) for k, v in load_file(str(source / ADAPTER_WEIGHTS)).items()}
    save_file(state, str(target / ADAPTER_WEIGHTS), metadata={"format": "pt", "adapter": "mole"})
    # The SIMPLE-check calibration fitted on this adapter, and the consistency scorer it weighs (and its record).
    consistency = Path(CONSISTENCY_MODEL_FILE)
    for name in (CALIBRATION_FILE, consistency.name, consistency.with_suffix(".json").name):
        if (source / name).is_file():
            shutil.copy2(source / name, target / name)


TRAINING_STEPS = ("tokenizer", "lm", "vision", "stage1", "stage2", "calibrate")


def _step_seconds(summary: dict[str, Any], step: str) -> float:
    # A step interrupted by the end of a session records the time of its earlier runs separately.
    info = summary.get(step, {})
    return float(info.get("seconds") or 0.0) + float(info.get("seconds_earlier_sessions", 0.0))


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def ship(
    work: Path, target: Path, *, model_id: str = "radlvlm-embedded-cxr-0.2", results: Path | None = None
) -> dict[str, Any]:
    """Write ``target``/{base, adapter, model.json, MODEL_CARD.md} from the working folder ``work``.

    ``results`` (a folder with ``errorcheck.json`` / ``drafts.json`` from ``benchmarks/``, measured on this
    model through the HTTP API) adds those figures to the card."""
    base, adapter, stage, reason = _final_model(work)
    # The shipped model's own validation figures: the DPO model's evaluation when DPO is what ships.
    eval_path = work / ("eval_dpo" if stage == "dpo" else "eval") / "summary.json"
    summary_path = work / "summary.json"
    for path in (summary_path, eval_path, base / "config.json", adapter / ADAPTER_CONFIG):
        if not path.is_file():
            raise InputError(f"{path}: missing (the recipe has not finished)")
    summary, evaluation = json.loads(summary_path.read_text()), json.loads(eval_path.read_text())
    alignment_path = work / "dpo" / "eval" / "metrics.json"
    alignment = json.loads(alignment_path.read_text()) if alignment_path.is_file() else None
    lora_path, stage2_path = work / "eval_lora" / "summary.json", work / "eval" / "summary.json"
    lora = json.loads(lora_path.read_text()) if lora_path.is_file() else None
    stage2_evaluation = json.loads(stage2_path.read_text()) if stage2_path.is_file() else evaluation
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    _half_base(base, staging / "base")
    _half_adapter(adapter, staging / "adapter")
    info = {
        "id": model_id,
        "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "final_stage": stage,
        "final_stage_reason": reason,
        "recipe": "scripts/train-embedded.sh DATA WORK",
        "seed": summary.get("seed", 0),
        "training": {
            "scale": summary.get("scale"),
            "seconds": {step: _step_seconds(summary, step) for step in TRAINING_STEPS},
        },
        "evaluation": evaluation,
        "alignment": alignment,
        "lora_baseline_evaluation": lora,
        "stage2_evaluation": stage2_evaluation,
        "service_results": _service_results(results, model_id),
    }
    (staging / MODEL_INFO).write_text(json.dumps(info, indent=2, default=str) + "\n")
    (staging / MODEL_CARD).write_text(render_card(info, summary), encoding="utf-8")
    size = _size(staging)
    if size > MAX_SHIPPED_BYTES:
        raise InputError(f"the model is {size / 2**20:.1f} MiB; the package carries at most 40 MiB")
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return {"target": str(target), "bytes": size, "final_stage": stage}


def _service_results(results: Path | None, model_id: str) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for name in ("errorcheck", "drafts"):
        path = results / f"{name}.json" if results is not None else None
        if path is not None and path.is_file():
            data = json.loads(path.read_text())
            served = str(data.get("model", {}))
            if model_id not in served:
                raise InputError(f"{path}: measured on another model than {model_id} ({served[:80]})")
            found[name] = data
    return found


def _eval_rows(evaluation: dict[str, Any]) -> list[str]:
    rows = []
    titles = {
        "draft_nih_cxr14": "Drafting, NIH ChestX-ray14 images (label-templated reference)",
        "draft_covid": "Drafting, COVID-19 collection images (reference: radiographic sentences of the notes)",
        "check_simple_iu_xray": "Error check SIMPLE, IU-Xray reports (text only)",
        "check_complex_iu_xray": "Error check COMPLEX, IU-Xray reports (text only)",
    }
    for key, title in titles.items():
        scored = evaluation["sets"].get(key)
        if scored is None:
            continue
        model = scored["model"]
        n = model.get("counts", {}).get("scored", "?")
        rows.append(f"\n**{title}** — {evaluation['split']} split, n = {n} studies; 95% bootstrap CIs\n")
        report = model.get("task") == "report"
        columns = (
            ["chexpert14_micro_f1", "bleu_4", "rouge_l", "significant_errors_per_report:structured"]
            if report
            else ["accuracy", "f1", "auroc", "complex_macro_f1"]
        )
        if key == "check_complex_iu_xray":
            columns = ["accuracy", "complex_macro_f1"]
        if key == "check_simple_iu_xray":
            columns = ["accuracy", "f1", "auroc"]
        rows.append(
            "| system | "
            + " | ".join(
                c.replace("significant_errors_per_report:structured", "significant errors / report") for c in columns
            )
            + " |"
        )
        rows.append("|---" * (len(columns) + 1) + "|")
        rows.append("| **this model** | " + " | ".join(_fmt(model.get(c)) for c in columns) + " |")
        for name, value in scored.items():
            if name.startswith("baseline_"):
                label = name.removeprefix("baseline_").replace("_", " ")
                rows.append(f"| baseline: {label} | " + " | ".join(_fmt(value.get(c)) for c in columns) + " |")
    return rows


def _comparison_rows(mole: dict[str, Any], lora: dict[str, Any]) -> list[str]:
    columns = {
        "draft_nih_cxr14": "chexpert14_micro_f1",
        "draft_covid": "chexpert14_micro_f1",
        "check_simple_iu_xray": "auroc",
        "check_complex_iu_xray": "complex_macro_f1",
    }
    rows = ["", "| set | metric | MoLE (stage 2) | LoRA (stage 2) |", "|---|---|---|---|"]
    for key, metric in columns.items():
        if key in mole["sets"] and key in lora["sets"]:
            a, b = mole["sets"][key]["model"].get(metric), lora["sets"][key]["model"].get(metric)
            rows.append(f"| {key} | {metric} | {_fmt(a)} | {_fmt(b)} |")
    return rows


def _router_rows(evaluation: dict[str, Any]) -> list[str]:
    router = evaluation.get("router")
    if not router:
        return []
    experts = len(next(iter(router.values()))["share_per_expert"])
    rows = [
        "| task | tokens | " + " | ".join(f"expert {i}" for i in range(experts)) + " |",
        "|---" * (experts + 2) + "|",
    ]
    for task, usage in router.items():
        shares = " | ".join(f"{x:.2f}" for x in usage["share_per_expert"])
        rows.append(f"| {task} | {usage['tokens']:,} | {shares} |")
    return rows


def _vision_rows(vision: dict[str, Any]) -> list[str]:
    test = vision.get("label_auroc", {}).get("test")
    if not test or not test.get("per_label"):
        return []
    rows = [
        "",
        f"## Vision encoder: per-label AUROC of its label read-out, NIH test split (n = {test['n']} images)",
        "",
        f"Mean over labels with >= 10 test positives: {_fmt(test.get('mean_auroc_labels_ge10'))}; abnormal vs",
        f"normal (highest label score): {_fmt(test.get('abnormal_auroc'))}.",
        "",
        "| label | AUROC | test positives |",
        "|---|---|---|",
    ]
    for label, entry in sorted(test["per_label"].items(), key=lambda item: -item[1]["positives"]):
        rows.append(f"| {label} | {entry['auroc']:.3f} | {entry['positives']} |")
    return rows


def _calibration_rows(calibration: dict[str, Any] | None) -> list[str]:
    if not calibration:
        return []
    rows = [
        "",
        "## Calibrated error-check verdicts (fitted on validation data; `error_probability` in the API)",
        "",
        "| check | fitted on | chosen inputs | candidates: out-of-fold AUROC | operating point: sens / spec |",
        "|---|---|---|---|---|",
    ]
    for kind in ("text_only", "image"):
        entry = calibration.get(kind)
        if not entry:
            continue
        chosen = entry["candidates"][entry["chosen"]]
        aurocs = ", ".join(f"{name} {c['out_of_fold_auroc']:.3f}" for name, c in entry["candidates"].items())
        rows.append(
            f"| {kind.replace('_', '-')} | {chosen['source']}, n = {chosen['n']} | {entry['chosen']} | {aurocs} | "
            f"{chosen['out_of_fold_sensitivity']:.3f} / {chosen['out_of_fold_specificity']:.3f} |"
        )
    rows += [
        "",
        '"model" is the LM\'s yes/no log-odds alone, "rules" the rule consistency checker\'s findings alone,',
        '"consistency" the learned text check (trees over the labeler\'s per-section readings, fitted on IU-Xray',
        "train); the threshold maximises Youden's J over out-of-fold probabilities (5-fold), of the correct reports",
        "and the errors their own text reveals for text-only checks.",
    ]
    return rows


def _target_rows(results: dict[str, Any], vision: dict[str, Any], evaluation: dict[str, Any]) -> list[str]:
    """The project's targets for this model (the error-check and drafting issue), each met or not, from the
    figures above."""
    checks = results.get("errorcheck", {}).get("metrics", {})
    drafts = results.get("drafts", {}).get("metrics", {})
    test = vision.get("label_auroc", {}).get("test", {})
    targets: list[tuple[str, Any, Any]] = []

    def value(entry: Any) -> Any:
        return entry.get("value") if isinstance(entry, dict) else entry

    independent = checks.get("independent_test", {}).get("model", {})
    rules = checks.get("independent_test", {}).get("rule_checker", {})
    for metric, goal in (("accuracy", 0.85), ("sensitivity", 0.80), ("specificity", 0.80), ("auroc", 0.90)):
        got = value(independent.get(metric))
        targets.append((f"SIMPLE {metric}, independent injector, test >= {goal}", got, got is not None and got >= goal))
    if independent and rules:
        worse = [m for m in ("accuracy", "auroc") if value(independent.get(m)) < value(rules.get(m))]
        targets.append(("never below the rule checker there (accuracy, AUROC)", ", ".join(worse) or "-", not worse))
    blatant = checks.get("blatant", {})
    if blatant:
        missed = len(blatant.get("missed_contradictions", []))
        clean = blatant["model"]["n"] - blatant["model"]["errors"]
        passed = clean - len(blatant.get("flagged_clean", []))
        targets.append(("blatant suite: every contradiction flagged", f"{missed} missed", missed == 0))
        targets.append(("blatant suite: >= 90% of clean reports pass", f"{passed}/{clean}", passed >= 0.9 * clean))
    mean = test.get("mean_auroc_labels_ge10")
    targets.append(
        ("encoder mean per-label AUROC (labels with >= 10 positives) >= 0.75", mean, bool(mean and mean >= 0.75))
    )
    if drafts:
        sens, spec = drafts.get("abnormal_sensitivity"), drafts.get("abnormal_specificity")
        ok = sens is not None and spec is not None and sens >= 0.60 and spec >= 0.70
        targets.append(("drafts: abnormal sensitivity >= 0.60 at specificity >= 0.70", f"{sens:.3f} / {spec:.3f}", ok))
        per_100 = drafts.get("distinct_drafts_per_100_images")
        targets.append(("drafts: more than 20 distinct drafts per 100 images", per_100, bool(per_100 and per_100 > 20)))
    complex_set = evaluation.get("sets", {}).get("check_complex_iu_xray", {})
    if complex_set:
        ours = value(complex_set["model"].get("complex_macro_f1"))
        theirs = value(complex_set.get("baseline_consistency_checker", {}).get("complex_macro_f1"))
        if ours is not None and theirs is not None:
            targets.append((f"COMPLEX macro-F1 at least the rule checker's ({theirs:.3f})", ours, ours >= theirs))
    if not checks and not drafts:
        return []
    rows = ["", "## Against the project's targets", "", "| target | reached | met |", "|---|---|---|"]
    for name, got, met in targets:
        shown = f"{got:.3f}" if isinstance(got, float) else str(got)
        rows.append(f"| {name} | {shown} | {'yes' if met else '**no**'} |")
    return rows


def _service_rows(results: dict[str, Any]) -> list[str]:
    """Figures measured through the HTTP API (benchmarks/errorcheck_study.py, draft_study.py), when given."""
    rows: list[str] = []
    checks = results.get("errorcheck", {}).get("metrics")
    if checks:
        rows += [
            "",
            "## Error check through `POST /v1/checks` (SIMPLE; 95% bootstrap CIs; unanswerable checks left out)",
            "",
            "| set | n | system | accuracy | sensitivity | specificity | AUROC |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, entry in checks.items():
            for system in ("model", "rule_checker"):
                m = entry[system]
                label = "**this model**" if system == "model" else "rule checker"
                rows.append(
                    f"| {name} | {m['n']} | {label} | {_fmt(m['accuracy'])} | {_fmt(m['sensitivity'])} | "
                    f"{_fmt(m['specificity'])} | {_fmt(m.get('auroc'))} |"
                )
    drafts = results.get("drafts", {}).get("metrics")
    if drafts:
        rows += [
            "",
            f"## Drafts through `POST /v1/drafts`, NIH test split ({drafts['images']} images)",
            "",
            "| system | CheXpert-14 micro F1 | macro F1 |",
            "|---|---|---|",
        ]
        for key, label in (
            ("model", "**this model**"),
            ("baseline_most_common_normal", "baseline: most common normal"),
            ("baseline_nearest_neighbour_image", "baseline: nearest training image"),
        ):
            rows.append(f"| {label} | {_fmt(drafts[key]['micro_f1'])} | {_fmt(drafts[key]['macro_f1'])} |")
        rows += [
            "",
            f"Abnormal vs normal: sensitivity {_fmt(drafts['abnormal_sensitivity'])}, specificity "
            f"{_fmt(drafts['abnormal_specificity'])}; {drafts['distinct_drafts']} distinct drafts "
            f"({drafts['distinct_drafts_per_100_images']} per 100 images); "
            f"{drafts['withheld_repetition_loops']} repetition loops withheld.",
        ]
    return rows


def render_card(info: dict[str, Any], summary: dict[str, Any]) -> str:
    """The model card, every figure taken from the recipe's own output files."""
    evaluation = info["evaluation"]
    time_rows = _time_rows(summary)
    lines = [
        *_card_intro(info, summary),
        *_CARD_DATA_SECTIONS,
        "## Recipe and training time (2-core CPU)",
        f"`{info['recipe']}` (seed {info['seed']}; resumable: rerun it after an interruption). It trains the steps",
        "below, evaluates, aligns with DPO, and installs the better of stage 2 and DPO here.",
        "",
        "| step | time |",
        "|---|---|",
        *time_rows,
        "",
        f"## Validation metrics of this model ({evaluation['model']}; {evaluation['split']} split, seed "
        f"{evaluation['seed']}, {evaluation['n_boot']} bootstrap resamples)",
        *_eval_rows(evaluation),
        "",
        "## Router: share of tokens per expert, by task (all layers)",
        *_router_rows(evaluation),
        *_vision_rows(summary.get("vision", {})),
        *_calibration_rows(summary.get("calibrate")),
        *_service_rows(info.get("service_results") or {}),
        *_target_rows(info.get("service_results") or {}, summary.get("vision", {}), evaluation),
    ]
    lines += _comparison_sections(info)
    lines += _CARD_CITATION
    return "\n".join(lines)


def _time_rows(summary: dict[str, Any]) -> list[str]:
    """The training-time table's rows: minutes per step (earlier sessions included) and in all."""
    times = {step: _step_seconds(summary, step) for step in TRAINING_STEPS}
    time_rows = [f"| {step} | {seconds / 60:.1f} min |" for step, seconds in times.items()]
    time_rows.append(f"| total | {sum(times.values()) / 60:.1f} min |")
    return time_rows


def _card_intro(info: dict[str, Any], summary: dict[str, Any]) -> list[str]:
    """The card's title, intended use and what the model is (its architecture, from the recipe's scale)."""
    scale = summary.get("scale", {})
    return [
        f"# Model card: {info['id']} (radlvlm's embedded default model)",
        "",
        "**Intended use: demonstration and pipeline testing only. Not for clinical use, not a medical device.** It",
        "lets `radlvlm serve`, `radlvlm draft` and `radlvlm check` run out of the box, and gives integration and",
        "validation pipelines a real model to exercise. A hospital replaces it with its own model (trained by the",
        "same recipes on its de-identified DICOM + reports) or a converted LLaVA-Rad (`--model` /",
        "`RADLVLM_MODEL_DIR`).",
        "",
        "## What it is",
        f"- LLaVA-style: a DINOv2-architecture ViT ({scale.get('vision_layers')} layers, width "
        f"{scale.get('vision_hidden')}, {scale.get('image_size')} px, patch 14) → MLP projector with visual-token "
        f"pooling to {scale.get('pool', 0) ** 2} tokens → a Llama-architecture LM ({scale.get('lm_layers')} layers, "
        f"width {scale.get('lm_hidden')}, byte-level BPE vocabulary of {summary.get('tokenizer', {}).get('vocab')}).",
        f"- Mixture-of-LoRA-Experts on the LM's MLPs: {scale.get('experts')} experts of rank {scale.get('rank')} "
        "per layer, top-1 routed per token.",
        f"- Weights in float16 (``base/``, ``adapter/`` next to this card). Final stage: {info['final_stage']} "
        f"({info['final_stage_reason']}).",
        "- Everything trained from scratch on a 2-core CPU: no pretrained weights could be downloaded.",
        "",
    ]


# The card's fixed account of the training data, its licences and what a model can learn from it.
_CARD_DATA_SECTIONS = (
    "## Training data and licences",
    "- **IU-Xray / Open-i** chest X-ray reports (Demner-Fushman et al., 2016; licence CC BY-NC-ND 4.0: research",
    "  use; cite the paper). Text only: the images could not be obtained offline. Used for the tokenizer, LM",
    "  pretraining, error-check training (errors injected into findings or impression) and as the report text",
    "  of label-matched pseudo-pairs.",
    "- **NIH ChestX-ray14** (Wang et al., CVPR 2017; NIH Clinical Center, attribution requested): 1,752 frontal",
    "  radiographs of 767 patients (762 at 512 x 512, the rest 64 x 64 thumbnails), with 14 NLP-mined finding",
    "  labels (>90% accurate); 1,457 for training, 94 validation, 201 test, split by patient.",
    "- **COVID-19 image data collection** (Cohen et al., 2020; per-image licences as listed in its metadata):",
    "  423 radiographs with case-report notes.",
    "- Splits are by patient as in the manifests; nothing from the validation or test splits was trained on.",
    "",
    "## What it can and cannot learn from this data",
    "- The vision encoder is trained from scratch on about 1,700 radiographs (NIH labels, COVID diagnoses as",
    "  pneumonia, and a contrastive loss against the report LM's text): far too few for a ViT to read findings",
    "  well. Its per-label AUROC on held-out NIH images is below; drafts follow the image only as far as it does.",
    "- Image-conditioned drafting comes from label-templated NIH impressions, COVID notes and **label-matched",
    "  pseudo-pairs** (each NIH image paired with IU reports whose findings match its labels): coarse findings",
    "  only, never location, size or fine detail, and a pseudo-pair's wording is another patient's report.",
    "- The text-only check (findings vs impression) is learnt from IU reports with errors of 15 families injected",
    "  into many varied copies of each report; errors that leave the report consistent with itself (a changed",
    "  laterality the report mentions once, an added device on a normal study) cannot be seen without the image.",
    "- Checks against the image are learnt from reports faithful to an NIH image's labels or wrong about one",
    "  finding; they are only as good as the encoder.",
    "- Expect fluent, radiology-styled text that is frequently wrong. Output passes the same guardrails as",
    "  any model (identifier scan, unsupported-comparison flags, repetition loops withheld) and is labelled a",
    "  preliminary AI draft.",
    "",
)

_CARD_CITATION = (
    "",
    "## Citation",
    "Demner-Fushman D. et al. Preparing a collection of radiology examinations for distribution and retrieval.",
    "JAMIA 2016. Wang X. et al. ChestX-ray8. CVPR 2017. Cohen J.P. et al. COVID-19 image data collection.",
    "arXiv:2003.11597.",
    "",
)


def _comparison_sections(info: dict[str, Any]) -> list[str]:
    """The sections that compare this model with another, where the recipe ran that other: sparse experts vs one
    plain LoRA, and stage 2 vs DPO."""
    lines: list[str] = []
    if info.get("lora_baseline_evaluation"):
        lines += [
            "",
            "## Sparse experts vs one plain LoRA (stage 2, same data, steps, learning rate and compute per token)",
            *_comparison_rows(info["stage2_evaluation"], info["lora_baseline_evaluation"]),
        ]
    if info.get("alignment"):
        lines += [
            "",
            "## DPO safety alignment (before = stage 2, after = DPO; validation split)",
            "",
            markdown_table(info["alignment"]),
        ]
    return lines
