"""What we ask the model: error-check prompts and parsers, the error taxonomy and seeded error injection."""

from radlvlm.tasks.errorcheck import (
    PROMPTS,
    AnswerParseError,
    ComplexAnswer,
    ErrorCheckTask,
    build_errorcheck_set,
    compose_report,
    errorcheck_prompt,
    errorcheck_target,
    parse_complex_answer,
    parse_simple_answer,
)
from radlvlm.tasks.injection import (
    InjectedError,
    InjectionNotApplicableError,
    applicable_edits,
    inject_error,
    sentence_spans,
)
from radlvlm.tasks.taxonomy import VALID_EDITS, EditKind, ErrorCategory

__all__ = [
    "PROMPTS",
    "VALID_EDITS",
    "AnswerParseError",
    "ComplexAnswer",
    "EditKind",
    "ErrorCategory",
    "ErrorCheckTask",
    "InjectedError",
    "InjectionNotApplicableError",
    "applicable_edits",
    "build_errorcheck_set",
    "compose_report",
    "errorcheck_prompt",
    "errorcheck_target",
    "inject_error",
    "parse_complex_answer",
    "parse_simple_answer",
    "sentence_spans",
]
