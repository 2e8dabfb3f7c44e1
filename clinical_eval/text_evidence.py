"""What the text of a report can reveal of an injected error: the ceiling of any text-only check.

A text-only check sees one report, never the image or the report as first written. An error leaves evidence in the
text only where what was changed disagrees with something left standing: an edited, added or removed statement
about an observation that another sentence of the report still mentions (a side, a grade, a finding stated or
denied), a finding asserted where the rest of the report calls the study normal, or a change from a prior study
under a COMPARISON section that says there is none. An added device on a normal study, a finding quietly removed
from a report that mentions it nowhere else, or a side swapped on a finding named once leave none: no reader of
the text alone could find them. This module decides, per errored report, whether such evidence exists, using the
product's labeler on the sentences that differ from the original; the share per error family is the ceiling that
text-only results are reported beside (``benchmarks/errorcheck_study.py``).

It is an estimate bounded by the labeler: an observation the labeler does not name (a hiatal hernia, an aortic
aneurysm) counts as leaving no evidence, and a mention elsewhere counts as evidence even where a reader might
accept both statements, so it errs towards calling errors revealable.
"""

from __future__ import annotations

from typing import Any

from radlvlm.reports.consistency import report_sentences, says_no_prior
from radlvlm.reports.consistency_features import SAME_FINDING_GROUPS
from radlvlm.reports.labeler import Label, label_report
from radlvlm.reports.sections import parse_report

__all__ = ["edit_reveals_error", "text_reveals_error"]


# Errors that change or drop what the report states: the finding must still be stated elsewhere to compare with.
_CHANGED_STATEMENT = frozenset({"wrong_location", "wrong_severity", "omitted_finding"})
_STATED = (Label.POSITIVE, Label.UNCERTAIN)


def _findings(sentences: list[str], *, stated_only: bool = False, denied_only: bool = False) -> set[str]:
    """The observations mentioned (or only those stated, or denied), each widened to the observations naming the
    same finding."""
    if not sentences:
        return set()
    read = label_report(" ".join(sentences))
    named = {
        m.label
        for m in read.mentions
        if m.label != "No Finding"
        and (not stated_only or m.status in _STATED)
        and (not denied_only or m.status is Label.NEGATIVE)
    }
    return named.union(*(group for group in SAME_FINDING_GROUPS.values() if group & named))


def _calls_normal(sentences: list[str]) -> bool:
    return bool(sentences) and label_report(" ".join(sentences)).labels["No Finding"] is Label.POSITIVE


def text_reveals_error(original: str, errored: str, category: str, comparison: str = "") -> bool:
    """Whether the error that turned ``original`` into ``errored`` leaves evidence in ``errored``'s own text.

    ``category`` is the error's taxonomy category (:class:`radlvlm.tasks.taxonomy.ErrorCategory` values, which both
    injectors give); ``comparison`` the study's COMPARISON section. Sentences are compared after normalisation;
    those of ``errored`` not in ``original`` are the added or edited ones, those of ``original`` not in ``errored``
    the removed or edited ones, the rest are left standing. A changed or dropped statement (side, grade, size, a
    finding left out or turned into a denial) is revealed where the rest still states that finding; an added one
    where the rest mentions the finding at all (denying it, or stating it otherwise), or asserts a finding other
    than a device where the rest calls the study normal.
    """
    before, after = report_sentences(parse_report(original)), report_sentences(parse_report(errored))
    kept = [s for s in after if s in before]
    added = [s for s in after if s not in before]
    touched = _findings(added + [s for s in before if s not in after])
    if category == "unsupported_comparison":
        return says_no_prior(comparison)  # a change from a prior that the COMPARISON section denies
    if category == "omitted_comparison":
        return False  # a report need not describe a change; nothing left standing says one was dropped
    turned_denial = category == "negation_flip" and bool(touched & _findings(added, denied_only=True))
    if category in _CHANGED_STATEMENT or turned_denial:
        return bool(touched & _findings(kept, stated_only=True))
    if touched & _findings(kept):
        return True
    asserted = _findings(added, stated_only=True) - {"Support Devices"}
    return bool(asserted) and _calls_normal(kept)


def edit_reveals_error(row: dict[str, Any], comparison: str | None = None) -> bool:
    """:func:`text_reveals_error` for one row of the training injector
    (:func:`radlvlm.tasks.build_errorcheck_training_set`): the report before the edit is rebuilt from the edit's
    ``span``, ``original`` and replacement text. A clean row reveals nothing."""
    if not row.get("has_error"):
        return False
    start, end = row["span"]
    before = row["text"][:start] + (row["original"] or "") + row["text"][end:]
    return text_reveals_error(before, row["text"], str(row["category"]), comparison or "")
