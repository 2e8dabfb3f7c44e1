"""Clinical evaluation: labeler, error scoring, NLG/clinical/error-check metrics, validation studies.

Everything here scores predictions files (JSONL/Parquet), so it can score any model, ours or not; no model is
imported. Heavy pieces (sacrebleu, rouge-score, scikit-learn, matplotlib) load only when their function runs.
"""

from radlvlm.clinical_eval.judges import JudgedError, JudgeError, JudgeResult, LLMJudge, StructuredJudge
from radlvlm.clinical_eval.predictions import ScoringSet, load_rows, match_rows, read_scoring_set
from radlvlm.clinical_eval.runner import run_validation_study
from radlvlm.reports.labeler import CHEXPERT_5, CHEXPERT_14, Label, LabeledReport, label_report

__all__ = [
    "CHEXPERT_5",
    "CHEXPERT_14",
    "JudgeError",
    "JudgeResult",
    "JudgedError",
    "LLMJudge",
    "Label",
    "LabeledReport",
    "ScoringSet",
    "StructuredJudge",
    "label_report",
    "load_rows",
    "match_rows",
    "read_scoring_set",
    "run_validation_study",
]
