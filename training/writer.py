"""Training a report writer that says what the finding classifier found and nothing else (issue 33, item 3).

    radlvlm embedded writer --data ../shared/data --classifier runs/findings --model DIR --work runs/writer

The writer is the embedded model (its LM and MoLE experts), given the classifier's findings on a prompt line
(:func:`radlvlm.tasks.drafting.draft_prompt`). Its targets are IU-Xray **train** reports, cleaned so that every
statement they make is one the input supports:

- sentences that state a side, a size, a device, a comparison, an incidental finding or carry a redaction are
  removed (:mod:`radlvlm.reports.unsupported`); hedged mentions ("cannot exclude") are removed too;
- the input is the labeler's reading of the report (CheXpert observations in :data:`WRITER_LABELS`); a finding
  whose every sentence was removed is stated again by a clean sentence for it from other train reports (a bank);
- the input is perturbed at the rates the classifier errs out of fold (a finding dropped or added), and the
  target is edited to match the perturbed input, so the writer sees the combinations the classifier produces and
  always states exactly its input;
- train radiographs (NIH, COVID) are paired with train reports whose cleaned findings equal the classifier's
  out-of-fold findings for that radiograph (edited to equal them when none does);
- the indication is dropped from half the prompts, so it cannot stand in for the findings.

Error-check examples (text-only SIMPLE checks over varied, errored IU train reports) are mixed in, so the same
experts keep checking. Resumable: the Trainer's checkpoints, and a finished run leaves ``done.json``.
"""

from __future__ import annotations

import json
import logging
import random
import re
import shutil
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from radlvlm.errors import InputError
from radlvlm.model.default import FINDINGS_DIR, MODEL_CARD, MODEL_INFO, tower_config_of
from radlvlm.model.findings import NIH_LABELS, FindingTowerConfig, load_finding_classifier
from radlvlm.reports import normalize_text, split_sentences
from radlvlm.reports.labeler import Label, label_report
from radlvlm.reports.unsupported import unsupported_kinds
from radlvlm.tasks import build_errorcheck_training_set, errorcheck_prompt
from radlvlm.tasks.drafting import draft_prompt, draft_target
from radlvlm.tasks.image_check import IMAGE_CHECK_FILE
from radlvlm.tasks.image_findings import WRITER_LABELS, report_labels
from radlvlm.training.data import ExampleDataset, _Entry
from radlvlm.training.findings import MIN_CALLS, classifier_examples, install_classifier, out_of_fold_findings
from radlvlm.training.recipe import recipe_from_dict
from radlvlm.training.ship import MAX_SHIPPED_BYTES, _half_adapter, _half_base, _size
from radlvlm.training.sources import ImageRef, IUXraySource
from radlvlm.training.trainer import train

logger = logging.getLogger(__name__)

__all__ = ["SentenceBank", "WriterTarget", "build_writer_examples", "clean_report", "edit_to", "train_writer"]

NORMAL_IMPRESSION = "No acute cardiopulmonary abnormality."
# Impression sentences that call the whole study normal: wrong next to any stated finding.
_WHOLE_NORMAL = re.compile(
    r"\b(no acute|no active|normal (?:chest|study|radiograph|exam)|negative (?:chest|study|exam)|"
    r"no (?:radiographic )?evidence of (?:acute )?(?:cardiopulmonary|disease))\b",
    re.IGNORECASE,
)
_IMPRESSION_PHRASES = {
    "Cardiomegaly": "Cardiomegaly.",
    "Pleural Effusion": "Pleural effusion.",
    "Pneumothorax": "Pneumothorax.",
    "Edema": "Pulmonary edema.",
    "Consolidation": "Consolidation.",
    "Pneumonia": "Pneumonia.",
    "Atelectasis": "Atelectasis.",
    "Lung Opacity": "Airspace opacity.",
    "Lung Lesion": "Pulmonary nodule.",
    "Pleural Other": "Pleural thickening.",
}


def _reading(text: str) -> tuple[set[str], set[str], set[str]]:
    """(positive, uncertain, negative) writer observations the labeler reads in ``text``."""
    labeled = label_report(text) if text.strip() else None
    if labeled is None:
        return set(), set(), set()
    out: dict[Label, set[str]] = defaultdict(set)
    for mention in labeled.mentions:
        if mention.label in WRITER_LABELS:
            out[mention.status].add(mention.label)
    return out[Label.POSITIVE], out[Label.UNCERTAIN], out[Label.NEGATIVE] - out[Label.POSITIVE]


def _stated(findings: Sequence[str], impression: Sequence[str]) -> set[str]:
    return set(label_report(" ".join([*findings, *impression])).positive()) & set(WRITER_LABELS)


@dataclass(frozen=True)
class WriterTarget:
    """A cleaned report: findings and impression sentences, and the observations they state (the input)."""

    findings: tuple[str, ...]
    impression: tuple[str, ...]
    observations: frozenset[str]

    def text(self) -> str:
        return draft_target(" ".join(self.findings), " ".join(self.impression))


MIN_BANK_SENTENCES = 2
# A plain findings sentence for each observation, as a radiologist states it alone (no side, size or location, no
# hedge): what the bank holds for a finding that fewer than MIN_BANK_SENTENCES clean train sentences state. Each
# is checked against the labeler when a bank is built (it must read exactly its observation).
_FINDINGS_SENTENCES = {
    "Cardiomegaly": "The heart is enlarged.",
    "Pleural Effusion": "There is a pleural effusion.",
    "Pneumothorax": "There is a pneumothorax.",
    "Edema": "There is pulmonary edema.",
    "Consolidation": "There is focal consolidation.",
    "Pneumonia": "Findings are consistent with pneumonia.",
    "Atelectasis": "There is atelectasis.",
    "Lung Opacity": "There is an airspace opacity.",
    "Lung Lesion": "There is a pulmonary nodule.",
    "Pleural Other": "There is pleural thickening.",
}
# Findings in the lung itself: a sentence calling the lungs clear ("The lungs are clear.", which the labeler reads
# as no lung opacity) contradicts any of them, not only an opacity.
PARENCHYMAL = frozenset({"Lung Opacity", "Pneumonia", "Consolidation", "Edema", "Atelectasis", "Lung Lesion"})
# One airspace finding named three ways: "No focal consolidation." beside "Findings are consistent with pneumonia."
# reads as a contradiction, and a writer trained on such pairs learnt to follow the denial with "There is focal
# consolidation." (writer 14's drafts, NIH validation).
AIRSPACE = frozenset({"Lung Opacity", "Pneumonia", "Consolidation"})


def denies(negative: set[str], wanted: set[str] | frozenset[str]) -> bool:
    """Whether a sentence whose negated observations are ``negative`` contradicts the ``wanted`` findings."""
    if negative & wanted or (negative & AIRSPACE and wanted & AIRSPACE):
        return True
    return "Lung Opacity" in negative and bool(wanted & PARENCHYMAL)


class SentenceBank:
    """Clean sentences from train reports: for each observation, sentences stating it alone; and normal ones."""

    def __init__(self, reports: Sequence[tuple[str, str]]) -> None:
        self.positive: dict[str, list[str]] = defaultdict(list)
        self.normal: list[str] = []
        seen: set[str] = set()
        for findings, _ in reports:
            for sentence in split_sentences(normalize_text(findings)) if findings.strip() else []:
                if sentence in seen or len(sentence.split()) > 14 or unsupported_kinds(sentence):
                    continue
                seen.add(sentence)
                positive, uncertain, negative = _reading(sentence)
                if uncertain:
                    continue
                if len(positive) == 1 and not negative:
                    self.positive[next(iter(positive))].append(sentence)
                elif not positive and negative:
                    self.normal.append(sentence)
        for label in WRITER_LABELS:
            # A label fewer than two clean train sentences state alone gets a plain findings sentence: one sentence
            # is too little to know it is a plain statement of the finding (IU's only such opacity sentence was
            # "Peribronchial cuffing also noted.", its only consolidation one "The lungs focal airspace
            # consolidation."). Until 0.6 it got the impression's bare phrase ("Airspace opacity."), which made
            # the drafts' findings read as a list.
            if len(self.positive[label]) < MIN_BANK_SENTENCES:
                plain = _FINDINGS_SENTENCES.get(label, "")
                positive, uncertain, negative = _reading(plain)
                usable = positive == {label} and not uncertain and not negative and not unsupported_kinds(plain)
                self.positive[label] = [plain if usable else _IMPRESSION_PHRASES[label]]

    def sentence(self, label: str, rng: random.Random) -> str:
        return rng.choice(self.positive[label])

    def normals(self, rng: random.Random, avoid: set[str]) -> list[str]:
        """Two or three normal sentences that deny none of ``avoid``."""
        chosen: list[str] = []
        for sentence in rng.sample(self.normal, min(len(self.normal), 12)):
            if not (_reading(sentence)[2] & avoid) and sentence not in chosen:
                chosen.append(sentence)
            if len(chosen) == 3:
                break
        return chosen


def clean_report(findings: str, impression: str, bank: SentenceBank, rng: random.Random) -> WriterTarget | None:
    """The report with every unsupported or hedged sentence removed, its findings stated again where their
    sentences went; None when it cannot be made consistent (the labeler reads other than its input)."""
    wanted, _, _ = _reading(f"{findings} {impression}")
    kept: dict[str, list[str]] = {"findings": [], "impression": []}
    for part, text in (("findings", findings), ("impression", impression)):
        for sentence in split_sentences(normalize_text(text)) if text.strip() else []:
            if unsupported_kinds(sentence):
                continue
            _positive, uncertain, negative = _reading(sentence)
            if uncertain or denies(negative, wanted):
                continue
            kept[part].append(sentence)
    return edit_to(WriterTarget(tuple(kept["findings"]), tuple(kept["impression"]), frozenset()), wanted, bank, rng)


def edit_to(
    target: WriterTarget, wanted: set[str] | frozenset[str], bank: SentenceBank, rng: random.Random
) -> WriterTarget | None:
    """``target`` edited to state exactly ``wanted``: sentences stating anything else removed, each wanted finding
    stated in the findings (a bank sentence where none is left). The impression of an abnormal study is the list
    of the wanted findings' phrases, in the prompt's order: a small writer copies a list reliably (label-guided
    generation), so what the image showed always reaches the impression; a normal study keeps its own."""
    wanted = set(wanted)
    parts: dict[str, list[str]] = {}
    for part, sentences in (("findings", target.findings), ("impression", target.impression)):
        out = []
        for sentence in sentences:
            positive, _, negative = _reading(sentence)
            if positive - wanted or denies(negative, wanted):
                continue
            if wanted and part == "impression" and _WHOLE_NORMAL.search(sentence):
                continue
            out.append(sentence)
        parts[part] = out
    for label in WRITER_LABELS:
        if label in wanted and label not in _reading(" ".join(parts["findings"]))[0]:
            parts["findings"].append(bank.sentence(label, rng))
    if wanted:
        parts["impression"] = [_IMPRESSION_PHRASES[label] for label in WRITER_LABELS if label in wanted]
    else:
        if not parts["findings"]:
            parts["findings"] = bank.normals(rng, set())
        if not parts["impression"]:
            parts["impression"] = [NORMAL_IMPRESSION]
    if _stated(parts["findings"], parts["impression"]) != wanted:
        return None
    if any(_reading(s)[1] for s in parts["findings"] + parts["impression"]):
        return None
    return WriterTarget(tuple(parts["findings"]), tuple(parts["impression"]), frozenset(wanted))


@dataclass(frozen=True)
class ErrorRates:
    """How often the classifier states a writer observation that is absent (``false_positive``) or misses one that
    is present (``false_negative``), measured out of fold over the train radiographs."""

    false_positive: dict[str, float]
    false_negative: dict[str, float]

    def perturb(self, observations: set[str], rng: random.Random) -> set[str]:
        out = set(observations)
        for label in WRITER_LABELS:
            if label in out and rng.random() < self.false_negative.get(label, 0.0):
                out.discard(label)
            elif label not in out and rng.random() < self.false_positive.get(label, 0.0):
                out.add(label)
        return out


def error_rates(truth: dict[str, set[str]], stated: dict[str, set[str]]) -> ErrorRates:
    """Per-observation error rates of ``stated`` (out-of-fold findings) against ``truth``, over the same images."""
    fp: dict[str, float] = {}
    fn: dict[str, float] = {}
    for label in WRITER_LABELS:
        present = [k for k in truth if label in truth[k]]
        absent = [k for k in truth if label not in truth[k]]
        fn[label] = sum(label not in stated[k] for k in present) / len(present) if present else 0.0
        fp[label] = sum(label in stated[k] for k in absent) / len(absent) if absent else 0.0
    return ErrorRates(fp, fn)


@dataclass(frozen=True)
class WriterExample:
    study_id: str
    instruction: str
    response: str
    image_path: str | None
    kind: str
    observations: tuple[str, ...]


def build_writer_examples(
    data: Path,
    classifier_work: Path,
    *,
    seed: int = 0,
    iu_variants: int = 2,
    image_variants: int = 2,
    check_rows: int = 3000,
) -> tuple[list[WriterExample], dict[str, Any]]:
    """Writer examples (IU train reports, train radiographs with out-of-fold findings) and SIMPLE-check examples.

    One random stream runs through the steps in this order (cleaning, report examples, image examples, the
    checks' shuffle, the final shuffle), so a seed gives one example set."""
    rng = random.Random(seed)
    rows = [r for r in IUXraySource(data / "iu_xray").rows() if r["split"] == "train"]
    reports = [(str(r.get("findings") or ""), str(r.get("impression") or "")) for r in rows]
    bank = SentenceBank(reports)
    cleaned = _cleaned_targets(rows, reports, bank, rng)
    image_paths, stated, rates = _classifier_findings(data, classifier_work)

    def prompt(indication: str, observations: set[str]) -> str:
        use = indication if indication.strip() and rng.random() < 0.5 else None
        return draft_prompt(use, sorted(observations, key=WRITER_LABELS.index))

    examples = _report_examples(cleaned, rates, bank, rng, prompt, image_paths, iu_variants)
    examples += _image_examples(cleaned, stated, bank, rng, prompt, image_paths, image_variants)
    examples += _check_examples(rows, reports, rng, seed, check_rows)
    rng.shuffle(examples)
    return examples, _examples_summary(examples, rows, cleaned, bank, rates)


def _cleaned_targets(
    rows: list[dict[str, Any]], reports: list[tuple[str, str]], bank: SentenceBank, rng: random.Random
) -> list[tuple[dict[str, Any], WriterTarget]]:
    """Each train report with its unsupported statements removed (those that cannot be made consistent left out)."""
    cleaned: list[tuple[dict[str, Any], WriterTarget]] = []
    for row, (findings, impression) in zip(rows, reports, strict=True):
        if not (findings.strip() or impression.strip()):
            continue
        target = clean_report(findings, impression, bank, rng)
        if target is not None:
            cleaned.append((row, target))
    return cleaned


def _classifier_findings(data: Path, classifier_work: Path) -> tuple[list[str], dict[str, set[str]], ErrorRates]:
    """The train radiographs with out-of-fold findings, what the classifier stated for each, and the rates at
    which it errs against NIH's labels (what the report examples' inputs are perturbed with)."""
    oof = out_of_fold_findings(classifier_work)
    images = [e for e in classifier_examples(data) if e.split == "train" and e.path in oof]
    if not images:
        # The out-of-fold findings are keyed by the image paths the classifier was trained with.
        raise InputError(
            f"the classifier's out-of-fold findings ({classifier_work}) name none of the train radiographs under "
            f"{data}: give --data as it was given when the classifier was trained"
        )
    truth = {
        e.path: set(report_labels([label for label, y in zip(NIH_LABELS, e.labels[1:], strict=True) if y]))
        for e in images
        if e.source == "nih"
    }
    stated = {path: set(report_labels(found.stated)) for path, found in oof.items()}
    return [e.path for e in images], stated, error_rates(truth, {k: stated[k] for k in truth})


def _report_examples(
    cleaned: list[tuple[dict[str, Any], WriterTarget]],
    rates: ErrorRates,
    bank: SentenceBank,
    rng: random.Random,
    prompt: Any,
    image_paths: list[str],
    variants: int,
) -> list[WriterExample]:
    """IU train reports as drafts: as cleaned, then with the input perturbed at the classifier's error rates and
    the target edited to match; each beside a random train radiograph (the findings line, not the image, says
    what to write)."""
    examples: list[WriterExample] = []
    for row, target in cleaned:
        for variant in range(variants):
            wanted = set(target.observations) if variant == 0 else rates.perturb(set(target.observations), rng)
            edited = edit_to(target, wanted, bank, rng) if wanted != target.observations else target
            if edited is None:
                continue
            examples.append(
                WriterExample(
                    f"iu-{row['uid']}#{variant}",
                    prompt(str(row.get("indication") or ""), wanted),
                    edited.text(),
                    rng.choice(image_paths),
                    "draft_report",
                    tuple(sorted(wanted)),
                )
            )
    return examples


def _image_examples(
    cleaned: list[tuple[dict[str, Any], WriterTarget]],
    stated: dict[str, set[str]],
    bank: SentenceBank,
    rng: random.Random,
    prompt: Any,
    image_paths: list[str],
    variants: int,
) -> list[WriterExample]:
    """Train radiographs with their out-of-fold findings, each written by a cleaned report that states exactly
    those (edited to, when none does)."""
    by_set: dict[frozenset[str], list[WriterTarget]] = defaultdict(list)
    for _, target in cleaned:
        by_set[target.observations].append(target)
    examples: list[WriterExample] = []
    for path, variant in ((p, v) for p in image_paths for v in range(variants)):
        wanted = frozenset(stated[path])
        pool = by_set.get(wanted)
        # The edit re-derives the impression from the findings list (a pooled target already states them).
        chosen = rng.choice(pool) if pool else rng.choice(cleaned)[1]
        target = edit_to(chosen, wanted, bank, rng)
        if target is None:
            continue
        examples.append(
            WriterExample(
                f"img-{Path(path).stem}#{variant}",
                prompt("", set(wanted)),
                target.text(),
                path,
                "draft_image",
                tuple(sorted(wanted)),
            )
        )
    return examples


def _check_examples(
    rows: list[dict[str, Any]], reports: list[tuple[str, str]], rng: random.Random, seed: int, simple_rows: int
) -> list[WriterExample]:
    """Text-only error checks over the train reports, SIMPLE and COMPLEX in the stage-2 proportion (4:1), so the
    experts keep both answers' formats while they learn to write."""
    built, _ = build_errorcheck_training_set(
        [
            {"uid": f"iu-{r['uid']}", "split": "train", "findings": f, "impression": i}
            for r, (f, i) in zip(rows, reports, strict=True)
        ],
        seed=seed,
        variants_per_report=2,
    )
    rng.shuffle(built)
    examples = []
    for index, row in enumerate(built[: simple_rows + simple_rows // 4]):
        kind = "simple" if index < simple_rows else "complex"
        examples.append(
            WriterExample(
                row["id"], errorcheck_prompt(kind, row["text"]), row[f"{kind}_target"], None, f"check_{kind}", ()
            )
        )
    return examples


def _examples_summary(
    examples: list[WriterExample],
    rows: list[dict[str, Any]],
    cleaned: list[tuple[dict[str, Any], WriterTarget]],
    bank: SentenceBank,
    rates: ErrorRates,
) -> dict[str, Any]:
    counts: dict[str, int] = defaultdict(int)
    observed: dict[str, int] = defaultdict(int)
    for example in examples:
        counts[example.kind] += 1
        for label in example.observations:
            observed[label] += 1
    return {
        "iu_train_reports": len(rows),
        "iu_reports_cleaned": len(cleaned),
        "bank_sentences": {k: len(v) for k, v in bank.positive.items()} | {"normal": len(bank.normal)},
        "examples": dict(counts),
        "observations_in_inputs": dict(observed),
        "classifier_error_rates": {"false_positive": rates.false_positive, "false_negative": rates.false_negative},
    }


def train_writer(
    data: Path, classifier_work: Path, model: Path, work: Path, *, steps: int = 1500, seed: int = 0, lr: float = 3e-4
) -> dict[str, Any]:
    """Continue the model's MoLE experts (and projector) on writer + check examples; the result in ``work/run``."""
    work.mkdir(parents=True, exist_ok=True)
    if (work / "done.json").is_file():
        return json.loads((work / "done.json").read_text())
    examples, summary = build_writer_examples(data, classifier_work, seed=seed)
    (work / "data.json").write_text(json.dumps(summary, indent=2) + "\n")
    entries = [
        _Entry(
            e.study_id,
            e.study_id,
            "draft" if e.kind.startswith("draft") else e.kind,
            e.instruction,
            e.response,
            ImageRef(e.image_path, Path(e.image_path).name) if e.image_path else None,
            "train",
            e.kind,
            {"observations": list(e.observations)},
        )
        for e in examples
    ]
    (work / "examples.jsonl").write_text(
        "".join(
            json.dumps({"id": e.study_id, "kind": e.kind, "prompt": e.instruction, "target": e.response}) + "\n"
            for e in examples[:200]
        )
    )
    base, adapter = model / "base", model / "adapter"
    if not (base / "config.json").is_file() or not adapter.is_dir():
        raise InputError(f"{model}: expected a radlvlm model with base/ and adapter/")
    recipe = recipe_from_dict(
        {
            "name": "embedded-writer",
            "stage": "instruct",
            "seed": seed,
            "model": {"base": str(base), "adapter": "mole", "adapter_init": str(adapter)},
            # The examples are built above; the recipe names the source folder they came from (not read again).
            "data": {"sources": [{"type": "iu_xray", "root": str(data / "iu_xray")}], "mixture": {"draft": 1.0}},
            "training": {
                "output_dir": str(work / "run"),
                "max_steps": steps,
                "per_device_train_batch_size": 8,
                "learning_rate": lr,
                "warmup_steps": 0.03,
                "lr_scheduler_type": "cosine",
                "logging_steps": 20,
                "save_steps": max(steps // 6, 1),
                "save_total_limit": 1,
                "use_cpu": True,
            },
        }
    )
    started = time.perf_counter()
    result = train(recipe, ExampleDataset(entries))
    info = {**result, "data": summary, "seconds": round(time.perf_counter() - started, 1)}
    (work / "done.json").write_text(json.dumps(info, indent=2, default=str) + "\n")
    return info


def install_embedded(
    writer_work: Path, classifier_work: Path, target: Path, *, model_id: str, results: Path | None = None
) -> dict[str, Any]:
    """Install the writer (its base and calibrated adapter, float16) and the finding classifier (``findings/``)
    as the embedded model at ``target``, keeping the earlier training record in ``model.json``; the model card
    gets this release's section first (with the studies in ``results`` measured on this model, when present)."""
    run = writer_work / "run"
    for path in (run / "base" / "config.json", run / "adapter", target / MODEL_INFO):
        if not path.exists():
            raise InputError(f"{path}: missing (train and calibrate the writer first)")
    tower = tower_config_of(run / "base")
    reading = None if tower is None else _same_network(run / "base", classifier_work / "classifier")
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    _half_base(run / "base", staging / "base", vision_reading=reading)
    _half_adapter(run / "adapter", staging / "adapter")
    if tower is None:
        install_classifier(classifier_work / "classifier", staging)
        fusion_dir = FINDINGS_DIR
    else:
        # The classifier is the model's vision tower: one copy of it, in base/, with its image-check fusion beside.
        fusion_dir = "base"
        if (classifier_work / "classifier" / IMAGE_CHECK_FILE).is_file():
            shutil.copy2(classifier_work / "classifier" / IMAGE_CHECK_FILE, staging / "base" / IMAGE_CHECK_FILE)
    info = json.loads((target / MODEL_INFO).read_text())
    # Installing again (e.g. with the studies' figures) keeps the release it continued from.
    previous = info.get("continued_from") if info.get("id") == model_id else info.get("id")
    done = json.loads((writer_work / "done.json").read_text())
    classifier_summary = json.loads((classifier_work / "summary.json").read_text())
    info.update(
        {
            "id": model_id,
            "continued_from": previous,
            "writer": {
                "steps": done.get("global_step"),
                "train_loss": done.get("train_loss"),
                "seconds": done.get("seconds"),
                "data": done.get("data"),
            },
            "vision_tower": None
            if tower is None
            else {
                "kind": "finding classifier",
                "image_tokens": json.loads((run / "base" / "config.json").read_text()).get("image_seq_length"),
                "token_width": FindingTowerConfig.from_values(tower).hidden_size,
            },
            "finding_classifier": {
                "recipe": classifier_summary["recipe"],
                "seconds": classifier_summary["seconds"],
                "validated": classifier_summary["validated"],
                "out_of_fold": classifier_summary["out_of_fold"],
            },
        }
    )
    (staging / MODEL_INFO).write_text(json.dumps(info, indent=2, default=str) + "\n")
    card = (target / MODEL_CARD).read_text(encoding="utf-8") if (target / MODEL_CARD).is_file() else "# Model card\n"
    title, _, body = card.partition("\n")
    title = re.sub(r"radlvlm-embedded-cxr-[0-9.]+", model_id, title)
    card = card_with_section(f"{title}\n{body}", findings_card_section(info, results))
    (staging / MODEL_CARD).write_text(card, encoding="utf-8")
    if (target / fusion_dir / IMAGE_CHECK_FILE).is_file() and not (staging / fusion_dir / IMAGE_CHECK_FILE).is_file():
        shutil.copy2(target / fusion_dir / IMAGE_CHECK_FILE, staging / fusion_dir / IMAGE_CHECK_FILE)
    size = _size(staging)
    if size > MAX_SHIPPED_BYTES:
        shutil.rmtree(staging)
        raise InputError(f"the model is {size / 2**20:.1f} MiB; the package carries at most 40 MiB")
    backup = target.with_name(target.name + ".previous")
    shutil.rmtree(backup, ignore_errors=True)
    target.rename(backup)
    staging.rename(target)
    shutil.rmtree(backup)
    return {"target": str(target), "bytes": size, "id": model_id}


# How the classifier reads its logits; a recipe rerun refits these out of fold without touching the network.
_READING_KEYS = ("calibration", "thresholds", "validated")


def _same_network(base: Path, classifier: Path) -> dict[str, Any]:
    """Refuse a writer whose tower is not ``classifier``'s network (the card and the image check would describe
    another one); answer the classifier's reading (calibration, thresholds, validated labels), which the release
    takes from the classifier as it is now: a refit of those changes no weight the writer was trained with."""
    tower = load_finding_classifier(base)
    saved = load_finding_classifier(classifier)
    mine, theirs = tower.state_dict(), saved.state_dict()
    if mine.keys() != theirs.keys() or any(
        mine[k].shape != theirs[k].shape or not torch.equal(mine[k].half(), theirs[k].half()) for k in mine
    ):
        raise InputError(
            f"the writer's vision tower is not the classifier {classifier} (its network differs): make the tower "
            "from this classifier (radlvlm embedded tower)"
        )
    return {key: getattr(saved.config, key) for key in _READING_KEYS}


CARD_MARK = "<!-- findings-release -->"


def _ci(entry: dict[str, Any] | None) -> str:
    if not entry:
        return "n/a"
    return f"{entry['value']:.3f} [{entry['ci_low']:.3f}, {entry['ci_high']:.3f}]"


def findings_card_section(info: dict[str, Any], results: Path | None) -> str:
    """The model card's section on the finding classifier, the writer and the image check: the training record
    from ``model.json`` and, when ``results`` holds them, the studies through the HTTP API."""
    lines = _card_training_lines(info)
    lines += _card_draft_lines(info, results)
    lines += _card_image_check_lines(info, results)
    lines += _card_text_check_lines(info, results)
    lines += _card_limits_lines(info["finding_classifier"])
    return "\n".join(lines)


def _card_what_is_new(info: dict[str, Any]) -> list[str]:
    tower = info.get("vision_tower")
    if not tower:
        return [
            f"Continued from {info.get('continued_from')}: the language model, tokenizer and vision tower below are "
            "that release's; what is new is a convolutional **finding classifier** (``findings/``), a **writer** (the "
            "MoLE experts and projector, continued) that states the classifier's findings and nothing else, and an "
            "**image check** that compares a report with the classifier's reading."
        ]
    return [
        f"Continued from {info.get('continued_from')}: the language model and tokenizer below are that release's. "
        "The convolutional **finding classifier** is the model's **vision tower** (one copy, in ``base/``): its last "
        f"feature map, pooled to {tower['image_tokens']} cells, reaches the language model as {tower['image_tokens']} "
        f"visual tokens ({tower['token_width']} wide) through a new projector, and its findings reach the **writer** "
        "(the MoLE experts and that projector, trained together) as the prompt's findings line: the writer states "
        "those findings and nothing else. The **image check** compares a report with the classifier's reading."
    ]


def _card_training_lines(info: dict[str, Any]) -> list[str]:
    """The release's training record (from ``model.json``): classifier, writer, time, out-of-fold AUROCs."""
    classifier = info["finding_classifier"]
    writer = info["writer"]
    validated = sorted(k for k in classifier["validated"] if k != "Abnormal")
    called = [k for k in validated if classifier["out_of_fold"].get(k, {}).get("threshold") is not None]
    uncalled = [k for k in validated if k not in called]
    lines = [
        CARD_MARK,
        f"## Release {info['id']}: a finding classifier, findings-driven drafts, an image check that reads the image",
        "",
        "**Intended use: demonstration and pipeline testing only. Not for clinical use, not a medical device.**",
        "",
        *_card_what_is_new(info),
        "",
        "- Classifier: an ensemble of 3 ResNets (transformers' ``ResNetModel``, basic blocks 32-64-128-256, "
        f"{classifier['recipe']['image_size']} px, one channel), one per patient-grouped fold of the NIH and COVID-19 "
        "train radiographs; half the training images go through a 64 px round trip so a thumbnail's look carries "
        "no label; per-label Platt calibration and thresholds fitted on the out-of-fold predictions. The Abnormal "
        f"gate, which decides a normal draft: {_gate_rule(classifier)}. Labels are *validated* at out-of-fold "
        "AUROC >= 0.65 with >= 10 positive patients; a validated label is *called* (stated in drafts, compared in "
        "checks) only at a threshold where its out-of-fold calls were right often enough "
        f"({_precision_rule(classifier)}). Called: {', '.join(called) or 'none'}."
        + (f" Validated but never called: {', '.join(uncalled)}." if uncalled else ""),
        f"- Writer: {writer['steps']} steps in its last run on {sum(writer['data']['examples'].values())} examples "
        f"({', '.join(f'{k} {v}' for k, v in sorted(writer['data']['examples'].items()))}): IU train reports with "
        "every sentence stating a side, a location, size, device, comparison, incidental finding, advice or a view "
        "it was not given removed, the labeler's findings as input (perturbed at the classifier's out-of-fold "
        "error rates, the target edited to "
        "match), and train radiographs with the classifier's out-of-fold findings; the indication is dropped from "
        "half the prompts.",
        "- Training time on 2 CPU cores: classifier "
        f"{sum(classifier['seconds'].values()) / 60:.1f} min (3 folds), writer {writer['seconds'] / 60:.1f} min. "
        "Recipe: ``scripts/train-findings.sh DATA WORK`` (resumable).",
        "",
        "Out-of-fold AUROC over the NIH train radiographs (each read by the fold model that did not train on it):",
        "",
        "| label | AUROC | positive patients | called at | right when called |",
        "|---|---|---|---|---|",
    ]
    for label, entry in classifier["out_of_fold"].items():
        if entry.get("oof_auroc_nih") is not None:
            # The Abnormal gate a release uses is the validation one where the recipe chose it there.
            threshold = (entry.get("validation_gate") or {}).get("threshold", entry.get("threshold"))
            precision = entry.get("oof_precision")
            lines.append(
                f"| {label} | {entry['oof_auroc_nih']:.3f} | {entry.get('nih_positive_patients')} | "
                f"{'never' if threshold is None else f'{threshold:.3f}'} | "
                f"{'' if precision is None else f'{precision:.2f}'} |"
            )
    return lines


def _gate_rule(classifier: dict[str, Any]) -> str:
    """How the Abnormal gate was chosen, in the recipe's words (release 0.9's recipe chose it at a point estimate)."""
    abnormal = classifier["out_of_fold"].get("Abnormal", {})
    gate = abnormal.get("validation_gate") or {}
    rule = gate.get("rule") or abnormal.get("rule") or "out of fold"
    figures = (
        f" (there: sensitivity {gate['validation_sensitivity']:.3f}, specificity {gate['validation_specificity']:.3f})"
        if "validation_sensitivity" in gate
        else ""
    )
    threshold = gate.get("threshold", abnormal.get("threshold"))
    return f"threshold {'n/a' if threshold is None else f'{threshold:.3f}'}, {rule}{figures}"


def _precision_rule(classifier: dict[str, Any]) -> str:
    floor = classifier["recipe"].get("min_precision")
    return f"at least {floor:.0%} of them, over >= {MIN_CALLS} calls" if floor is not None else "F1-best, no floor"


def _card_draft_lines(info: dict[str, Any], results: Path | None) -> list[str]:
    """The drafting study through ``POST /v1/drafts`` (``drafts.json``), when it measured this release."""
    lines: list[str] = []
    drafts = results / "drafts.json" if results else None
    if drafts is not None and drafts.is_file():
        report = json.loads(drafts.read_text())
        m = report["metrics"]
        if report["model"]["models"][0]["id"] == info["id"]:
            c = m.get("classifier", {})
            d = m["drafts_abnormal_vs_normal"]
            lines += [
                "",
                f"Through ``POST /v1/drafts`` on the NIH **test** split ({m['images']} radiographs, {m['patients']} "
                "patients; 95% CIs over patients; ``benchmarks/results/drafts.json``):",
                "",
                "| measure | all | 512 px | 64 px |",
                "|---|---|---|---|",
                "| classifier abnormal-vs-normal AUROC | "
                + " | ".join(_ci(c.get("abnormal_auroc", {}).get(b)) for b in ("all", "512", "64"))
                + " |",
                "| draft sensitivity (abnormal) | "
                + " | ".join(_ci(d[b]["sensitivity"]) for b in ("all", "512", "64"))
                + " |",
                "| draft specificity | " + " | ".join(_ci(d[b]["specificity"]) for b in ("all", "512", "64")) + " |",
                "",
                f"- Size-only scorer's AUROC: {_ci(c.get('size_only_abnormal_auroc'))}; mean AUROC over labels with "
                f">= 10 positive test patients: {c.get('mean_auroc_labels_ge10_patients')}.",
                f"- Faithfulness (the labeler's reading of the draft equals the findings it was given): "
                f"{_ci(m.get('faithfulness'))}; drafts with an unsupported statement: "
                f"{_ci(m['unsupported_statements']['drafts_with_any'])}.",
                "- Macro F1 over abnormal observations: "
                + "; ".join(
                    f"{k.replace('baseline_', 'baseline ')} {_ci(v)}"
                    for k, v in m["macro_f1_abnormal_observations"].items()
                    if k != "observations"
                )
                + ".",
            ]
            if "covid_out_of_domain" in m:
                covid = m["covid_out_of_domain"]
                lines.append(
                    f"- COVID-19 test (out of domain, {covid['images']} abnormal radiographs): draft sensitivity "
                    f"{_ci(covid['draft_sensitivity'])}."
                )
    return lines


def _card_image_check_lines(info: dict[str, Any], results: Path | None) -> list[str]:
    """The image-check study through ``POST /v1/checks`` (``image_check.json``), when it measured this release."""
    lines: list[str] = []
    checks = results / "image_check.json" if results else None
    if checks is not None and checks.is_file():
        report = json.loads(checks.read_text())
        m = report["metrics"]
        if report["model"]["models"][0]["id"] == info["id"]:
            w, t = m["with_image"], m["text_only"]
            lines += [
                "",
                f"Image check through ``POST /v1/checks`` on {m['pairs']} pairs (NIH test radiographs x IU test "
                "reports, each report once agreeing and once contradicting; ``benchmarks/results/image_check.json``): "
                f"AUROC with the image {_ci(w.get('auroc'))}, text only {_ci(t.get('auroc'))}; a TF-IDF text "
                f"classifier scores {m['tfidf_text_classifier_auroc']:.3f}. By contradiction: "
                + "; ".join(f"{k} {_ci(v)}" for k, v in (w.get("auroc_by_kind") or {}).items())
                + ".",
            ]
    return lines


def _rates(entry: dict[str, Any]) -> str:
    return " / ".join(
        f"{entry[k]['value']:.3f}" for k in ("accuracy", "sensitivity", "specificity", "auroc") if k in entry
    )


def _card_text_check_lines(info: dict[str, Any], results: Path | None) -> list[str]:
    """The text-only check through ``POST /v1/checks`` on IU test (``errorcheck.json``), when it measured this
    release: both injectors, the errors the text reveals, the rule checker beside it."""
    checks = results / "errorcheck.json" if results else None
    if checks is None or not checks.is_file():
        return []
    report = json.loads(checks.read_text())
    m = report["metrics"]
    if report["model"]["models"][0]["id"] != info["id"] or "independent_test" not in m:
        return []
    independent, trained = m["independent_test"], m.get("training_injector_test")
    lines = [
        "",
        "Text-only check through ``POST /v1/checks`` on IU test reports (accuracy / sensitivity / specificity / "
        "AUROC; ``benchmarks/results/errorcheck.json``): independent injector "
        f"{_rates(independent['model'])} (rule checker {_rates(independent['rule_checker'])})"
        + (f"; training injector {_rates(trained['model'])}" if trained else "")
        + ".",
    ]
    revealed = independent.get("text_revealed_errors")
    if revealed:
        lines[-1] += (
            " On the correct reports and the errors their own text reveals (``clinical_eval.text_evidence``): "
            f"{_rates(revealed['model'])} (rule checker {_rates(revealed['rule_checker'])})."
        )
    return lines


def _card_limits_lines(classifier: dict[str, Any]) -> list[str]:
    """What the release cannot do, and where the older record starts."""
    lines: list[str] = []
    lines += [
        "",
        "What it cannot do: it names findings, never their side, size or a comparison with a prior study; labels "
        "with too few patients or too weak an AUROC ("
        + ", ".join(
            label.lower()
            for label, entry in classifier["out_of_fold"].items()
            if label not in classifier["validated"] and entry.get("oof_auroc_nih") is not None
        )
        + " here) are never stated or checked; the classifier learnt from ~1,700 radiographs, half of them 64 px "
        "thumbnails.",
        "",
        "The sections below are the record of the release this one continued from (its figures describe it).",
        "",
    ]
    return lines


def card_with_section(card: str, section: str) -> str:
    """The model card with the release section first (replacing an earlier one)."""
    if CARD_MARK in card:
        head, _, rest = card.partition(CARD_MARK)
        tail = rest.split("\n## ", 1)
        # Everything from the mark to the earlier release's first own heading is the old section.
        marker = "The sections below are the record of the release this one continued from (its figures describe it).\n"
        card = head + (
            rest.split(marker, 1)[1].lstrip("\n") if marker in rest else ("## " + tail[1] if len(tail) > 1 else "")
        )
    title, _, body = card.partition("\n")
    return f"{title}\n\n{section}\n{body.lstrip()}"
