"""Guardrail flags as every door reports them: a stable code, a PHI-free message, and whether it blocked."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

from radlvlm.safety.guardrails import Finding

__all__ = ["Flag", "flag_of"]


@dataclass(frozen=True)
class Flag:
    code: str
    message: str
    severity: Literal["warning", "block"] = "warning"

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def flag_of(finding: Finding) -> Flag:
    return Flag(finding.code, finding.message, "block" if finding.severity == "refuse" else "warning")
