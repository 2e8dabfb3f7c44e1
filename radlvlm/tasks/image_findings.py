"""How a finding classifier's reading of the image reaches a report writer, and how it is compared with a report.

The classifier (:mod:`radlvlm.model.findings`) speaks NIH ChestX-ray14's labels; reports are read by the CheXpert-14
labeler (:mod:`radlvlm.reports.labeler`). :data:`CLASSIFIER_TO_REPORT` maps one to the other, and the drafting
prompt names the stated findings in the labeler's words (:func:`findings_line`), so a writer trained on reports
labelled by the labeler reads exactly the vocabulary the classifier's findings arrive in. Labels with no CheXpert
counterpart (emphysema, fibrosis, hernia) are reported by the classifier but neither written nor checked.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from radlvlm.reports.labeler import label_report

__all__ = [
    "CLASSIFIER_TO_REPORT",
    "NO_FINDINGS",
    "WRITER_LABELS",
    "DraftDisagreement",
    "draft_disagreement",
    "findings_line",
    "report_labels",
]

# NIH label → the CheXpert observation a report states it as.
CLASSIFIER_TO_REPORT: dict[str, str] = {
    "Atelectasis": "Atelectasis",
    "Cardiomegaly": "Cardiomegaly",
    "Effusion": "Pleural Effusion",
    "Infiltration": "Lung Opacity",
    "Mass": "Lung Lesion",
    "Nodule": "Lung Lesion",
    "Pneumonia": "Pneumonia",
    "Pneumothorax": "Pneumothorax",
    "Consolidation": "Consolidation",
    "Edema": "Edema",
    "Pleural_Thickening": "Pleural Other",
}
# The observations a writer is given and may state, in a fixed order (the prompt lists them in it).
WRITER_LABELS: tuple[str, ...] = (
    "Cardiomegaly",
    "Pleural Effusion",
    "Pneumothorax",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Lung Opacity",
    "Lung Lesion",
    "Pleural Other",
)
_WORDS = {
    "Cardiomegaly": "cardiomegaly",
    "Pleural Effusion": "pleural effusion",
    "Pneumothorax": "pneumothorax",
    "Edema": "pulmonary edema",
    "Consolidation": "consolidation",
    "Pneumonia": "pneumonia",
    "Atelectasis": "atelectasis",
    "Lung Opacity": "airspace opacity",
    "Lung Lesion": "nodule or mass",
    "Pleural Other": "pleural thickening",
}
NO_FINDINGS = "none"
FINDINGS_PREFIX = "Image findings:"


def report_labels(classifier_labels: Iterable[str]) -> tuple[str, ...]:
    """The CheXpert observations that classifier labels are stated as (in :data:`WRITER_LABELS` order)."""
    wanted = {CLASSIFIER_TO_REPORT[label] for label in classifier_labels if label in CLASSIFIER_TO_REPORT}
    return tuple(label for label in WRITER_LABELS if label in wanted)


def findings_line(observations: Iterable[str]) -> str:
    """The prompt line that gives a writer its findings: ``Image findings: cardiomegaly, pleural effusion.``

    ``observations`` are CheXpert names from :data:`WRITER_LABELS`; an empty set says ``none``.
    """
    chosen = set(observations)
    unknown = chosen - set(WRITER_LABELS)
    if unknown:
        raise ValueError(f"not a writer observation: {sorted(unknown)}")
    words = [_WORDS[label] for label in WRITER_LABELS if label in chosen]
    return f"{FINDINGS_PREFIX} {', '.join(words) if words else NO_FINDINGS}."


@dataclass(frozen=True)
class DraftDisagreement:
    """Where a draft departs from the findings it was given: what it states beyond them, what it leaves out."""

    stated_not_given: tuple[str, ...]
    given_not_stated: tuple[str, ...]

    def message(self) -> str:
        parts = []
        if self.stated_not_given:
            parts.append(
                f"states {', '.join(s.lower() for s in self.stated_not_given)}, which the image reading did not find"
            )
        if self.given_not_stated:
            parts.append(
                f"leaves out {', '.join(s.lower() for s in self.given_not_stated)}, which the image reading found"
            )
        return "the draft " + "; it ".join(parts)


def draft_disagreement(draft: str, given: Sequence[str]) -> DraftDisagreement | None:
    """How the labeler's reading of ``draft`` differs from the observations it was given (None: it does not)."""
    said = label_report(draft).positive() & set(WRITER_LABELS) if draft.strip() else set()
    wanted = set(given)
    if said == wanted:
        return None
    order = WRITER_LABELS.index
    return DraftDisagreement(tuple(sorted(said - wanted, key=order)), tuple(sorted(wanted - said, key=order)))
