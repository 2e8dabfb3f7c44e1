"""Error-checking tasks: prompts, targets, answer parsers, and the seeded builder of an error-check set.

SIMPLE asks whether a report contains an error (yes/no). COMPLEX asks which type and where: the answer is
JSON ``{"has_error": bool, "category": str | null, "span": [start, end] | null}``, span in characters of the
report as given. Prompts are data; parsers are pure functions returning a typed answer or raising.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from radlvlm.errors import InputError
from radlvlm.reports import normalize_text
from radlvlm.tasks.injection import (
    FAMILIES,
    InjectedError,
    _analyse,
    _family_candidates,
    applicable_edits,
    inject_error,
    inject_family,
)
from radlvlm.tasks.taxonomy import EditKind, ErrorCategory
from radlvlm.tasks.variation import vary_report

__all__ = [
    "PROMPTS",
    "AnswerParseError",
    "ComplexAnswer",
    "ErrorCheckTask",
    "build_errorcheck_set",
    "build_errorcheck_training_set",
    "compose_report",
    "errorcheck_prompt",
    "errorcheck_target",
    "parse_complex_answer",
    "parse_simple_answer",
]


class AnswerParseError(InputError):
    """A model answer does not follow the task's answer format."""


class ErrorCheckTask(str, Enum):
    SIMPLE = "simple"
    COMPLEX = "complex"


_CATEGORY_LIST = ", ".join(c.value for c in ErrorCategory)
PROMPTS: dict[ErrorCheckTask, str] = {
    ErrorCheckTask.SIMPLE: (
        "You are checking a chest X-ray report for errors. Does the report below contain an error "
        "(a finding, location, severity, negation or comparison that is wrong, missing or unsupported)? "
        "Answer with one word: yes or no.\n\nREPORT:\n{report}"
    ),
    ErrorCheckTask.COMPLEX: (
        "You are checking a chest X-ray report for errors. Decide whether it contains an error; if it does, "
        f"name its type (one of: {_CATEGORY_LIST}) and where it is as character offsets [start, end] in the "
        'report. Answer with JSON only: {{"has_error": true|false, "category": <type or null>, '
        '"span": [start, end] or null}}.\n\nREPORT:\n{report}'
    ),
}


def errorcheck_prompt(task: ErrorCheckTask | str, report: str) -> str:
    """The prompt for ``task`` over ``report``."""
    return PROMPTS[ErrorCheckTask(task)].format(report=report)


def errorcheck_target(task: ErrorCheckTask | str, row: Mapping[str, Any]) -> str:
    """The answer a perfect model gives for an error-check row (as built by :func:`build_errorcheck_set`)."""
    if ErrorCheckTask(task) is ErrorCheckTask.SIMPLE:
        return "yes" if row["has_error"] else "no"
    return json.dumps({"has_error": bool(row["has_error"]), "category": row.get("category"), "span": row.get("span")})


_YES = re.compile(r"^\W*(yes|true|error)\b", re.IGNORECASE)
_NO = re.compile(r"^\W*(no|false|none|correct)\b", re.IGNORECASE)


def parse_simple_answer(answer: str) -> bool:
    """``True`` for a yes answer, ``False`` for no; the first word decides ("Yes, the laterality …").

    Raises:
        AnswerParseError: the answer starts with neither.
    """
    if not isinstance(answer, str):
        raise AnswerParseError(f"answer must be str, got {type(answer).__name__}")
    if _YES.match(answer):
        return True
    if _NO.match(answer):
        return False
    raise AnswerParseError("answer does not start with yes or no")


@dataclass(frozen=True)
class ComplexAnswer:
    """A parsed COMPLEX answer. ``category`` and ``span`` are ``None`` when ``has_error`` is false."""

    has_error: bool
    category: ErrorCategory | None
    span: tuple[int, int] | None


_FENCE = re.compile(r"^```(?:json)?\s*|\s*```$")


def parse_complex_answer(answer: str) -> ComplexAnswer:
    """Parse a COMPLEX answer (JSON object, optionally in a ``` fence).

    Raises:
        AnswerParseError: not a JSON object, a wrong field type, or an unknown category.
    """
    if not isinstance(answer, str):
        raise AnswerParseError(f"answer must be str, got {type(answer).__name__}")
    try:
        data = json.loads(_FENCE.sub("", answer.strip()))
    except json.JSONDecodeError as e:
        raise AnswerParseError(f"answer is not JSON (column {e.colno})") from None
    if not isinstance(data, dict) or not isinstance(data.get("has_error"), bool):
        raise AnswerParseError("answer must be a JSON object with a boolean 'has_error'")
    if not data["has_error"]:
        return ComplexAnswer(False, None, None)
    try:
        category = ErrorCategory.parse(data.get("category")) if data.get("category") is not None else None
    except ValueError:
        # The model's own words are not echoed: an answer can quote the report.
        raise AnswerParseError("answer names an unknown error category") from None
    span = data.get("span")
    if span is not None:
        if not (isinstance(span, list) and len(span) == 2 and all(isinstance(v, int) for v in span)):
            raise AnswerParseError("'span' must be [start, end] with integer offsets")
        span = (span[0], span[1])
    return ComplexAnswer(True, category, span)


def compose_report(findings: str, impression: str) -> str:
    """The report text error-check rows carry: normalised findings and impression, each under its header."""
    parts = []
    if findings and findings.strip():
        parts.append(f"FINDINGS: {normalize_text(findings)}")
    if impression and impression.strip():
        parts.append(f"IMPRESSION: {normalize_text(impression)}")
    return "\n".join(parts)


# The error fields of a clean row.
_NO_ERROR: dict[str, Any] = dict.fromkeys(("category", "edit", "span", "original", "replacement", "seed", "family"))


def _with_targets(row: dict[str, Any]) -> dict[str, Any]:
    """``row`` with the answers a perfect model gives: ``simple_target`` and ``complex_target``."""
    row["simple_target"] = errorcheck_target(ErrorCheckTask.SIMPLE, row)
    row["complex_target"] = errorcheck_target(ErrorCheckTask.COMPLEX, row)
    return row


def _hash_int(*parts: object) -> int:
    return int(hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()[:12], 16)


def _split_of(uid: str, fractions: Mapping[str, float]) -> str:
    bucket = (_hash_int("radlvlm-errorcheck-split", uid) % 10_000) / 10_000
    cumulative = 0.0
    for name, fraction in fractions.items():
        cumulative += fraction
        if bucket < cumulative:
            return name
    return list(fractions)[-1]


def build_errorcheck_set(
    reports: Iterable[Mapping[str, Any]],
    *,
    seed: int = 0,
    error_fraction: float = 0.5,
    split_fractions: Mapping[str, float] | None = None,
    categories: Iterable[ErrorCategory | str] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Build a balanced, seeded error-check set from real reports.

    Each study appears once: either clean or with one injected error, never both, so no original/corrupted pair
    straddles a split or leaks an answer. Within each split, ``error_fraction`` of the studies carry an error,
    and categories are spread evenly (each errored study takes the least-used category it can carry).

    Args:
        reports (`Iterable[Mapping]`): rows with ``uid`` and ``findings``/``impression`` (IU-Xray manifest
            layout); an optional ``split`` is kept. Rows with neither section are skipped and counted.
        seed (`int`, defaults to `0`): seeds split assignment order, error choice and injection.
        error_fraction (`float`, defaults to `0.5`): share of each split that carries an error.
        split_fractions (`Mapping[str, float]`, *optional*): assign splits by a hash of the uid (e.g.
            ``{"train": 0.8, "validation": 0.1, "test": 0.1}``) instead of the rows' ``split`` field.
        categories (`Iterable`, *optional*): the categories to inject (default: all).

    Returns:
        ``(rows, summary)``. Each row: ``id``, ``uid``, ``split``, ``text``, ``has_error``, ``category``,
        ``edit``, ``span``, ``original``, ``replacement``, ``seed``, ``family``, ``simple_target``,
        ``complex_target``. ``summary`` gives counts per split, category and edit, and the rows skipped.

    Raises:
        InputError: a row lacks a uid, a uid appears twice (or in two splits), a row has no split and no
            ``split_fractions`` was given, or a fraction is out of range.
    """
    wanted = _checked_set_categories(error_fraction, split_fractions, categories)
    by_split, skipped_empty = _reports_by_split(reports, split_fractions)
    rows: list[dict[str, Any]] = []
    for split in sorted(by_split):
        rows += _split_rows(split, by_split[split], seed=seed, error_fraction=error_fraction, wanted=wanted)
    return rows, _set_summary(rows, sorted(by_split), skipped_empty, seed)


def _checked_set_categories(
    error_fraction: float,
    split_fractions: Mapping[str, float] | None,
    categories: Iterable[ErrorCategory | str] | None,
) -> list[ErrorCategory]:
    """The categories :func:`build_errorcheck_set` injects; its arguments are checked before any report is read."""
    if not 0.0 < error_fraction < 1.0:
        raise InputError(f"error_fraction must be in (0, 1), got {error_fraction}")
    if split_fractions is not None and abs(sum(split_fractions.values()) - 1.0) > 1e-6:
        raise InputError("split fractions must sum to 1")
    wanted = [ErrorCategory.parse(c) for c in categories] if categories is not None else list(ErrorCategory)
    if not wanted:
        raise InputError("no error category selected")
    return wanted


def _reports_by_split(
    reports: Iterable[Mapping[str, Any]], split_fractions: Mapping[str, float] | None
) -> tuple[dict[str, list[tuple[str, str]]], int]:
    """``(uid, report text)`` of each study under its split, in input order, and the count of empty reports.

    The split is the hash of the uid when ``split_fractions`` is given, else the row's own ``split``.
    """
    by_split: dict[str, list[tuple[str, str]]] = {}
    seen: dict[str, int] = {}
    skipped_empty = 0
    for index, row in enumerate(reports, start=1):
        uid = _study_uid(row, index, seen)
        if split_fractions is not None:
            split = _split_of(uid, split_fractions)
        elif row.get("split"):
            split = str(row["split"])
        else:
            raise InputError(f"report row {index} has no 'split'; give split fractions to assign splits")
        text = compose_report(str(row.get("findings") or ""), str(row.get("impression") or ""))
        if not text:
            skipped_empty += 1
            continue
        by_split.setdefault(split, []).append((uid, text))
    return by_split, skipped_empty


def _split_rows(
    split: str, studies: list[tuple[str, str]], *, seed: int, error_fraction: float, wanted: list[ErrorCategory]
) -> list[dict[str, Any]]:
    """The rows of one split: its studies in a seeded order, the first ``error_fraction`` of those that can carry
    a wanted error get one. Each split has its own random stream, so a split's rows do not depend on the others.
    """
    studies = sorted(studies, key=lambda item: _hash_int(seed, "order", item[0]))
    rng = random.Random(f"radlvlm-errorcheck:{seed}:{split}")
    options = {uid: [(c, e) for c, e in applicable_edits(text) if c in wanted] for uid, text in studies}
    n_error = round(len(studies) * error_fraction)
    # Studies that can carry no wanted error stay clean; the rest fill the error quota in seeded order.
    can = [s for s in studies if options[s[0]]]
    error_uids = {uid for uid, _ in can[:n_error]}
    used: Counter[ErrorCategory] = Counter()
    rows: list[dict[str, Any]] = []
    for uid, text in studies:
        row: dict[str, Any] = {"id": uid, "uid": uid, "split": split, "has_error": uid in error_uids}
        if uid in error_uids:
            injection_seed = _hash_int(seed, "inject", uid) % (2**31)
            corrupted, record = _inject_least_used_category(text, options[uid], used, rng, injection_seed)
            row.update(text=corrupted, **record.to_dict())
        else:
            row.update(text=text, **_NO_ERROR)
        rows.append(_with_targets(row))
    return rows


def _inject_least_used_category(
    text: str,
    options: list[tuple[ErrorCategory, EditKind]],
    used: Counter[ErrorCategory],
    rng: random.Random,
    injection_seed: int,
) -> tuple[str, InjectedError]:
    """Inject an error of the least-used category ``text`` can carry (ties broken by ``rng``), so categories
    spread evenly over a split; ``used`` counts the choice."""
    # Unique categories in taxonomy order (a set's order changes with PYTHONHASHSEED).
    unique = list(dict.fromkeys(c for c, _ in options))
    possible = sorted(unique, key=lambda c: (used[c], rng.random()))
    category = possible[0]
    edits = [e for c, e in options if c is category]
    corrupted, record = inject_error(text, category, rng.choice(edits), seed=injection_seed)
    used[category] += 1
    return corrupted, record


def _set_summary(rows: list[dict[str, Any]], splits: list[str], skipped_empty: int, seed: int) -> dict[str, Any]:
    """What :func:`build_errorcheck_set` returns beside its rows: counts per split, category and edit."""
    return {
        "n_rows": len(rows),
        "skipped_empty_reports": skipped_empty,
        "seed": seed,
        "splits": {
            split: {
                "n": sum(r["split"] == split for r in rows),
                "n_error": sum(r["split"] == split and r["has_error"] for r in rows),
            }
            for split in splits
        },
        "categories": _sorted_counts([r for r in rows if r["has_error"]], "category"),
        "edits": _sorted_counts([r for r in rows if r["has_error"]], "edit"),
    }


def _sorted_counts(rows: list[dict[str, Any]], key: str) -> dict[str, int]:
    """How many ``rows`` have each value of ``key``, sorted by value (for summaries that read the same each run)."""
    return dict(sorted(Counter(r[key] for r in rows).items()))


def _study_uid(row: Mapping[str, Any], index: int, seen: dict[str, int]) -> str:
    """Row ``index``'s study uid, recorded in ``seen``; a missing or repeated uid is refused naming the rows."""
    uid = row.get("uid", row.get("id"))
    if uid is None or str(uid).strip() == "":
        raise InputError(f"report row {index} has no uid")
    uid = str(uid)
    if uid in seen:
        raise InputError(f"uid in report rows {seen[uid]} and {index}: every study must appear once")
    seen[uid] = index
    return uid


def _read_studies(reports: Iterable[Mapping[str, Any]]) -> tuple[list[tuple[str, str, str, str]], int]:
    """``(uid, split, findings, impression)`` of each study with a report, and the count of empty ones."""
    studies = []
    seen: dict[str, int] = {}
    skipped_empty = 0
    for index, row in enumerate(reports, start=1):
        uid = _study_uid(row, index, seen)
        if not row.get("split"):
            raise InputError(f"report row {index} has no 'split'")
        findings, impression = str(row.get("findings") or ""), str(row.get("impression") or "")
        if not compose_report(findings, impression):
            skipped_empty += 1
            continue
        studies.append((uid, str(row["split"]), findings, impression))
    return studies, skipped_empty


def build_errorcheck_training_set(
    reports: Iterable[Mapping[str, Any]],
    *,
    seed: int,
    variants_per_report: int = 8,
    error_fraction: float = 0.5,
    families: Iterable[str] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """A large, varied error-check set for TRAINING: several surface variants of each study, clean and errored.

    Each study gives ``variants_per_report`` rows. Variant 0 is the report as written; the others are
    :func:`~radlvlm.tasks.variation.vary_report` rewrites (label-preserving; a duplicate of an earlier variant's
    text is redrawn a few times). For each study a seeded ``error_fraction`` of its variants carry one injected
    error, of a family (:data:`~radlvlm.tasks.injection.FAMILIES`) drawn per row: the least-used family the variant
    can carry, ties broken by the seed, so families are spread evenly as far as the reports allow. One study thus
    gives clean and errored versions; this is for a training split only (never build evaluation sets this way:
    :func:`build_errorcheck_set` keeps each study once). Rows keep their study's ``uid`` and ``split``.

    Args:
        reports (`Iterable[Mapping]`): rows with ``uid``, ``split`` and ``findings``/``impression``; rows with
            neither section are skipped and counted.
        seed (`int`): seeds variation, the errored variants, family choice and injection.
        variants_per_report (`int`, defaults to `8`): rows per study, >= 1.
        error_fraction (`float`, defaults to `0.5`): share of each study's variants that carry an error, in (0, 1)
            (with a fractional count, e.g. 1 variant at 0.5, the last one is drawn with that probability).
        families (`Iterable[str]`, *optional*): the families to inject (default: all).

    Returns:
        ``(rows, summary)``. Each row has :func:`build_errorcheck_set`'s fields (``id`` is ``"<uid>#v<variant>"``)
        plus ``variant``; ``family`` is ``None`` on clean rows. ``summary`` counts rows per split, family, category
        and edit.

    Raises:
        InputError: a row without uid or split, a repeated uid, a bad fraction or variant count, an unknown family.
    """
    wanted = _checked_training_families(variants_per_report, error_fraction, families)
    studies, skipped_empty = _read_studies(reports)
    studies.sort(key=lambda item: _hash_int(seed, "train-order", item[0]))
    # One random stream over all studies in their seeded order: each study's draws follow the previous one's.
    rng = random.Random(f"radlvlm-errorcheck-train:{seed}")
    used: Counter[str] = Counter({f: 0 for f in wanted})
    rows: list[dict[str, Any]] = []
    for study in studies:
        rows += _study_variant_rows(
            study,
            seed=seed,
            variants_per_report=variants_per_report,
            error_fraction=error_fraction,
            wanted=wanted,
            used=used,
            rng=rng,
        )
    families_used = {f: used[f] for f in wanted}
    return rows, _training_set_summary(rows, len(studies), variants_per_report, skipped_empty, seed, families_used)


def _checked_training_families(
    variants_per_report: int, error_fraction: float, families: Iterable[str] | None
) -> list[str]:
    """The families :func:`build_errorcheck_training_set` injects (unique, in the order given); its arguments are
    checked before any report is read."""
    if isinstance(variants_per_report, bool) or not isinstance(variants_per_report, int) or variants_per_report < 1:
        raise InputError(f"variants_per_report must be a positive integer, got {variants_per_report!r}")
    if not 0.0 < error_fraction < 1.0:
        raise InputError(f"error_fraction must be in (0, 1), got {error_fraction}")
    wanted = list(FAMILIES) if families is None else list(dict.fromkeys(families))
    unknown = [f for f in wanted if f not in FAMILIES]
    if unknown or not wanted:
        raise InputError(f"unknown or no error family {unknown}; choose from {', '.join(FAMILIES)}")
    return wanted


def _study_variant_rows(
    study: tuple[str, str, str, str],
    *,
    seed: int,
    variants_per_report: int,
    error_fraction: float,
    wanted: list[str],
    used: Counter[str],
    rng: random.Random,
) -> list[dict[str, Any]]:
    """The ``variants_per_report`` rows of one study. ``rng`` first draws how many and which variants carry an
    error, then, per errored variant, the tie-breaks of the family choice; ``used`` counts families chosen."""
    uid, split, findings, impression = study
    whole, part = divmod(variants_per_report * error_fraction, 1.0)
    n_error = int(whole) + (1 if rng.random() < part else 0)
    errored = set(rng.sample(range(variants_per_report), n_error))
    texts: set[str] = set()
    rows: list[dict[str, Any]] = []
    for variant in range(variants_per_report):
        text = _variant_text(findings, impression, uid, variant, seed, texts)
        texts.add(text)
        row: dict[str, Any] = {
            "id": f"{uid}#v{variant}",
            "uid": uid,
            "split": split,
            "variant": variant,
            "has_error": False,
        }
        injected = None
        if variant in errored:
            injection_seed = _hash_int(seed, "inject-train", uid, variant) % (2**31)
            injected = _inject_least_used_family(text, wanted, used, rng, injection_seed)
        if injected is not None:
            corrupted, record = injected
            row.update(has_error=True, text=corrupted, **record.to_dict())
        else:
            row.update(text=text, **_NO_ERROR)
        rows.append(_with_targets(row))
    return rows


def _variant_text(findings: str, impression: str, uid: str, variant: int, seed: int, texts: set[str]) -> str:
    """Variant 0 is the report as written; the others a :func:`vary_report` rewrite, redrawn up to three times
    while it repeats an earlier variant's text (the last draw is kept even if it does)."""
    text = compose_report(findings, impression)
    for attempt in range(4 if variant else 0):
        varied = compose_report(*vary_report(findings, impression, seed=_hash_int(seed, uid, variant, attempt)))
        text = varied
        if varied not in texts:
            break
    return text


def _inject_least_used_family(
    text: str, wanted: list[str], used: Counter[str], rng: random.Random, injection_seed: int
) -> tuple[str, InjectedError] | None:
    """An error of the least-used family ``text`` can carry (ties broken by ``rng``: one draw per wanted family),
    counted in ``used``; None when the text can carry none."""
    sentences = _analyse(text)
    for family in sorted(wanted, key=lambda f: (used[f], rng.random())):
        if _family_candidates(text, family, sentences):
            corrupted, record = inject_family(text, family, seed=injection_seed, _sentences=sentences)
            used[family] += 1
            return corrupted, record
    return None


def _training_set_summary(
    rows: list[dict[str, Any]],
    n_studies: int,
    variants_per_report: int,
    skipped_empty: int,
    seed: int,
    families_used: dict[str, int],
) -> dict[str, Any]:
    """What :func:`build_errorcheck_training_set` returns beside its rows: counts per split, family, category
    and edit."""
    splits = sorted({r["split"] for r in rows})
    errored_rows = [r for r in rows if r["has_error"]]
    return {
        "n_rows": len(rows),
        "n_studies": n_studies,
        "variants_per_report": variants_per_report,
        "skipped_empty_reports": skipped_empty,
        "seed": seed,
        "splits": {
            split: {
                "n": sum(r["split"] == split for r in rows),
                "n_error": sum(r["split"] == split for r in errored_rows),
            }
            for split in splits
        },
        "families": families_used,
        "categories": _sorted_counts(errored_rows, "category"),
        "edits": _sorted_counts(errored_rows, "edit"),
    }
