"""The report error taxonomy shared by error injection (training data) and evaluation (scoring).

Six categories follow CheXprompt / ReXVal (Yu et al. 2023, Zambrano Chaves et al. 2024) plus negation flips,
which the error-checking literature injects on their own because a flipped "no" is the costliest slip.
"""

from __future__ import annotations

from enum import Enum

__all__ = ["VALID_EDITS", "EditKind", "ErrorCategory"]


class ErrorCategory(str, Enum):
    """What an error touches. Values are the stable strings written to files and prompts."""

    FALSE_FINDING = "false_finding"  # a finding the image does not show (ReXVal: false prediction of finding)
    OMITTED_FINDING = "omitted_finding"  # a finding the image shows is missing
    WRONG_LOCATION = "wrong_location"  # wrong location, position or laterality
    WRONG_SEVERITY = "wrong_severity"  # wrong severity or size
    UNSUPPORTED_COMPARISON = "unsupported_comparison"  # mentions a comparison/change the reference lacks
    OMITTED_COMPARISON = "omitted_comparison"  # omits a comparison/change the reference describes
    NEGATION_FLIP = "negation_flip"  # a negated finding made positive, or a positive one negated

    @classmethod
    def rexval(cls) -> tuple[ErrorCategory, ...]:
        """The six ReXVal / CheXprompt categories (no negation flip: a judge counts a flip as one of these)."""
        return tuple(c for c in cls if c is not cls.NEGATION_FLIP)

    @classmethod
    def parse(cls, value: str) -> ErrorCategory:
        """Look a category up by value or name, case-insensitively; ``ValueError`` names the choices."""
        if isinstance(value, cls):
            return value
        key = str(value).strip().lower().replace("-", "_").replace(" ", "_")
        for c in cls:
            if key in (c.value, c.name.lower()):
                return c
        raise ValueError(f"unknown error category {value!r}; choose from {', '.join(c.value for c in cls)}")


class EditKind(str, Enum):
    """How an error is injected into a report."""

    INSERT = "insert"
    REMOVE = "remove"
    SUBSTITUTE = "substitute"


# Which edit can produce which category. A removal can only omit; an insertion only adds; location, severity
# and negation errors change words in place.
VALID_EDITS: dict[ErrorCategory, tuple[EditKind, ...]] = {
    ErrorCategory.FALSE_FINDING: (EditKind.INSERT, EditKind.SUBSTITUTE),
    ErrorCategory.OMITTED_FINDING: (EditKind.REMOVE,),
    ErrorCategory.WRONG_LOCATION: (EditKind.SUBSTITUTE,),
    ErrorCategory.WRONG_SEVERITY: (EditKind.SUBSTITUTE,),
    ErrorCategory.UNSUPPORTED_COMPARISON: (EditKind.INSERT,),
    ErrorCategory.OMITTED_COMPARISON: (EditKind.REMOVE,),
    ErrorCategory.NEGATION_FLIP: (EditKind.SUBSTITUTE,),
}
