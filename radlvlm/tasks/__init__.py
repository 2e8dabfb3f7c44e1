"""What we ask the model: error-check prompts and parsers, the error taxonomy and seeded error injection."""

from radlvlm.tasks.errorcheck import (
    PROMPTS,
    AnswerParseError,
    ComplexAnswer,
    ErrorCheckTask,
    build_errorcheck_set,
    build_errorcheck_training_set,
    compose_report,
    errorcheck_prompt,
    errorcheck_target,
    parse_complex_answer,
    parse_simple_answer,
)
from radlvlm.tasks.injection import (
    FAMILIES,
    ErrorFamily,
    InjectedError,
    InjectionNotApplicableError,
    applicable_edits,
    applicable_families,
    inject_error,
    inject_family,
    sentence_spans,
)
from radlvlm.tasks.taxonomy import VALID_EDITS, EditKind, ErrorCategory
from radlvlm.tasks.variation import expand_abbreviations, vary_report

__all__ = [
    "FAMILIES",
    "PROMPTS",
    "VALID_EDITS",
    "AnswerParseError",
    "ComplexAnswer",
    "EditKind",
    "ErrorCategory",
    "ErrorCheckTask",
    "ErrorFamily",
    "InjectedError",
    "InjectionNotApplicableError",
    "applicable_edits",
    "applicable_families",
    "build_errorcheck_set",
    "build_errorcheck_training_set",
    "compose_report",
    "errorcheck_prompt",
    "errorcheck_target",
    "expand_abbreviations",
    "inject_error",
    "inject_family",
    "parse_complex_answer",
    "parse_simple_answer",
    "sentence_spans",
    "vary_report",
]
