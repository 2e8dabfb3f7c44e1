"""CheXprompt-like error counting: a candidate report against its reference, in the six ReXVal categories.

Two judges share one interface (:class:`Judge`): :class:`StructuredJudge`, deterministic and offline, compares
the observations the rule-based labeler finds (presence, negation, laterality, severity, comparison language);
:class:`LLMJudge` sends a CheXprompt-style prompt to any OpenAI-compatible chat endpoint (a vLLM server a
hospital runs, for instance) and parses a strict JSON answer, with retries and an on-disk cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from radlvlm.errors import RadlvlmError
from radlvlm.reports.labeler import CHEXPERT_14, Label, LabeledReport, label_report
from radlvlm.tasks.taxonomy import ErrorCategory

__all__ = [
    "CHEXPROMPT_SYSTEM",
    "CHEXPROMPT_USER",
    "Judge",
    "JudgeError",
    "JudgeResult",
    "JudgedError",
    "LLMJudge",
    "StructuredJudge",
    "judge_pairs",
    "parse_judge_answer",
]

logger = logging.getLogger(__name__)

REXVAL = ErrorCategory.rexval()


class JudgeError(RadlvlmError):
    """A judge could not score a pair: endpoint down, refused, or its answer is not valid after retries."""


@dataclass(frozen=True)
class JudgedError:
    """One error a judge found.

    Args:
        category (`ErrorCategory`): one of the six ReXVal categories.
        significant (`bool`): clinically significant (would change management) or not.
        observation (`str | None`): the CheXpert observation involved (structured judge), if any.
    """

    category: ErrorCategory
    significant: bool
    observation: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"category": self.category.value, "significant": self.significant, "observation": self.observation}


@dataclass(frozen=True)
class JudgeResult:
    """All errors a judge found in one candidate report."""

    errors: tuple[JudgedError, ...]
    judge: str

    def count(self, category: ErrorCategory | None = None, *, significant: bool | None = None) -> int:
        """Errors of ``category`` (all when ``None``), only significant/insignificant ones when asked."""
        return sum(
            (category is None or e.category is category) and (significant is None or e.significant is significant)
            for e in self.errors
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "judge": self.judge,
            "n_errors": self.count(),
            "n_significant": self.count(significant=True),
            "errors": [e.as_dict() for e in self.errors],
        }


class Judge(Protocol):
    """Counts errors of a candidate report against a reference."""

    name: str

    def judge(self, candidate: str, reference: str) -> JudgeResult: ...


_PRESENT = (Label.POSITIVE, Label.UNCERTAIN)


def _positive_mentions(report: LabeledReport, name: str) -> list[Any]:
    return [m for m in report.mentions if m.label == name and m.status is Label.POSITIVE]


class StructuredJudge:
    """Deterministic offline judge built on the rule-based labeler.

    Rules, per CheXpert observation (No Finding aside):

    * false finding: present (positive or uncertain) in the candidate, not in the reference;
    * omitted finding: present in the reference, not in the candidate;
    * wrong location: positive in both, laterality words differ (significant) or only lung zones differ
      (not significant);
    * wrong severity: positive in both, stated severity grades differ (significant when two grades apart,
      mild vs severe);
    * unsupported comparison: the candidate compares with a prior study, the reference does not;
    * omitted comparison: the reference compares with a prior study, the candidate does not.

    A presence error is significant when the finding is stated as definite (positive) and not significant when
    it is hedged (uncertain) or is a support device; a comparison error is significant when it asserts a change
    (new, worse, improved).
    """

    name = "structured"

    def judge(self, candidate: str, reference: str) -> JudgeResult:
        cand, ref = label_report(candidate), label_report(reference)
        errors: list[JudgedError] = []
        for name in CHEXPERT_14:
            if name == "No Finding":
                continue
            c, r = cand.labels[name], ref.labels[name]
            minor = name == "Support Devices"
            if c in _PRESENT and r not in _PRESENT:
                errors.append(JudgedError(ErrorCategory.FALSE_FINDING, c is Label.POSITIVE and not minor, name))
            elif r in _PRESENT and c not in _PRESENT:
                errors.append(JudgedError(ErrorCategory.OMITTED_FINDING, r is Label.POSITIVE and not minor, name))
            elif c is Label.POSITIVE and r is Label.POSITIVE:
                cm, rm = _positive_mentions(cand, name), _positive_mentions(ref, name)
                c_side = frozenset().union(*(m.laterality for m in cm))
                r_side = frozenset().union(*(m.laterality for m in rm))
                c_zone = frozenset().union(*(m.zones for m in cm))
                r_zone = frozenset().union(*(m.zones for m in rm))
                if c_side and r_side and c_side != r_side:
                    errors.append(JudgedError(ErrorCategory.WRONG_LOCATION, True, name))
                elif c_zone and r_zone and c_zone != r_zone:
                    errors.append(JudgedError(ErrorCategory.WRONG_LOCATION, False, name))
                c_sev = max((m.severity for m in cm if m.severity is not None), default=None)
                r_sev = max((m.severity for m in rm if m.severity is not None), default=None)
                if c_sev is not None and r_sev is not None and c_sev != r_sev:
                    errors.append(JudgedError(ErrorCategory.WRONG_SEVERITY, abs(c_sev - r_sev) >= 2, name))
        if cand.comparison_sentences and not ref.comparison_sentences:
            errors.append(JudgedError(ErrorCategory.UNSUPPORTED_COMPARISON, bool(cand.change_sentences)))
        elif ref.comparison_sentences and not cand.comparison_sentences:
            errors.append(JudgedError(ErrorCategory.OMITTED_COMPARISON, bool(ref.change_sentences)))
        return JudgeResult(tuple(errors), self.name)


PROMPT_VERSION = "chexprompt-like-v1"
_CATEGORY_HELP = {
    ErrorCategory.FALSE_FINDING: "false report of a finding",
    ErrorCategory.OMITTED_FINDING: "missing a finding",
    ErrorCategory.WRONG_LOCATION: "misidentification of a finding's anatomic location or position",
    ErrorCategory.WRONG_SEVERITY: "misassessment of the severity of a finding",
    ErrorCategory.UNSUPPORTED_COMPARISON: "mentioning a comparison that is not in the reference",
    ErrorCategory.OMITTED_COMPARISON: "omitting a comparison detailing a change from a prior study",
}
CHEXPROMPT_SYSTEM = (
    "You are an expert radiologist evaluating the accuracy of a candidate chest X-ray report against a "
    "reference report written by a radiologist. You answer with JSON only."
)
CHEXPROMPT_USER = (
    "Count the clinically significant and clinically insignificant errors in the candidate report, judged "
    "against the reference report. Use only these error categories:\n"
    + "\n".join(f"- {c.value}: {h}" for c, h in _CATEGORY_HELP.items())
    + "\nA clinically significant error would change the patient's management. Answer with one JSON object: "
    '{{"errors": [{{"category": <category>, "clinically_significant": true|false}}, ...]}} '
    "(an empty list when the candidate has no error).\n\n"
    "REFERENCE REPORT:\n{reference}\n\nCANDIDATE REPORT:\n{candidate}"
)


def parse_judge_answer(content: str, judge: str = "llm") -> JudgeResult:
    """Parse an LLM judge's answer strictly (one JSON object, optionally in a ``` fence).

    Raises:
        ValueError: not JSON, no ``errors`` list, an unknown category or a non-boolean significance.
    """
    text = content.strip()
    if text.startswith("```"):
        text = text.strip("`")
        text = text[4:] if text.lower().startswith("json") else text
    data = json.loads(text)  # JSONDecodeError is a ValueError
    if not isinstance(data, dict) or not isinstance(data.get("errors"), list):
        raise ValueError("judge answer must be an object with an 'errors' list")
    errors = []
    for item in data["errors"]:
        if not isinstance(item, dict) or not isinstance(item.get("clinically_significant"), bool):
            raise ValueError("each error needs a boolean 'clinically_significant'")
        category = ErrorCategory.parse(str(item.get("category")))
        if category not in REXVAL:
            raise ValueError(f"category {category.value} is not one of the six ReXVal categories")
        errors.append(JudgedError(category, item["clinically_significant"]))
    return JudgeResult(tuple(errors), judge)


class LLMJudge:
    """CheXprompt-style judge over an OpenAI-compatible ``/chat/completions`` endpoint.

    Args:
        base_url (`str`): e.g. ``http://127.0.0.1:8000/v1`` (a vLLM ``serve`` endpoint).
        model (`str`): the served model name.
        api_key (`str`, *optional*): sent as a bearer token when given.
        timeout (`float`, defaults to `60.0`): seconds per request.
        max_attempts (`int`, defaults to `3`): tries per pair (connection errors, HTTP 429/5xx, invalid answers).
        backoff (`float`, defaults to `1.0`): seconds before the second try, doubling after each.
        cache_dir (`Path`, *optional*): answers are cached here by a hash of model, prompt version and both
            texts, so a re-run costs no requests.
        json_mode (`bool`, defaults to `True`): ask for ``response_format={"type": "json_object"}``.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        max_attempts: int = 3,
        backoff: float = 1.0,
        cache_dir: Path | str | None = None,
        json_mode: bool = True,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise JudgeError(f"LLM judge base URL must start with http:// or https://, got {base_url!r}")
        if max_attempts < 1:
            raise JudgeError("max_attempts must be at least 1")
        self.name = f"llm:{model}"
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.api_key, self.timeout = model, api_key, timeout
        self.max_attempts, self.backoff, self.json_mode = max_attempts, backoff, json_mode
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.requests_sent = 0

    def _cache_path(self, candidate: str, reference: str) -> Path | None:
        if self.cache_dir is None:
            return None
        key = json.dumps([self.model, PROMPT_VERSION, candidate, reference], ensure_ascii=False)
        return self.cache_dir / f"{hashlib.sha256(key.encode()).hexdigest()}.json"

    def _post(self, payload: dict[str, Any]) -> str:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url, json.dumps(payload).encode(), headers, method="POST")
        self.requests_sent += 1
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            body = json.loads(response.read())
        return body["choices"][0]["message"]["content"]

    def judge(self, candidate: str, reference: str) -> JudgeResult:
        cache = self._cache_path(candidate, reference)
        if cache is not None and cache.is_file():
            return parse_judge_answer(cache.read_text("utf-8"), self.name)
        payload: dict[str, Any] = {
            "model": self.model,
            "temperature": 0,
            "messages": [
                {"role": "system", "content": CHEXPROMPT_SYSTEM},
                {"role": "user", "content": CHEXPROMPT_USER.format(reference=reference, candidate=candidate)},
            ],
        }
        if self.json_mode:
            payload["response_format"] = {"type": "json_object"}
        last = "no attempt"
        for attempt in range(1, self.max_attempts + 1):
            if attempt > 1:
                time.sleep(self.backoff * 2 ** (attempt - 2))
            try:
                content = self._post(payload)
                result = parse_judge_answer(content, self.name)
            except urllib.error.HTTPError as e:
                last = f"HTTP {e.code}"
                if e.code != 429 and e.code < 500:
                    raise JudgeError(f"LLM judge at {self.url} refused the request ({last})") from None
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                reason = getattr(e, "reason", e)
                last = f"unreachable ({type(reason).__name__})"
            except (ValueError, KeyError, IndexError, TypeError):
                last = "answer is not the JSON the prompt asks for"
            else:
                if cache is not None:
                    cache.parent.mkdir(parents=True, exist_ok=True)
                    cache.write_text(content, "utf-8")
                return result
            logger.warning("LLM judge attempt %d/%d failed: %s", attempt, self.max_attempts, last)
        raise JudgeError(f"LLM judge at {self.url} failed after {self.max_attempts} attempt(s): {last}")


def judge_pairs(judge: Judge, candidates: Sequence[str], references: Sequence[str]) -> list[JudgeResult]:
    """Judge aligned candidate/reference lists."""
    if len(candidates) != len(references):
        raise ValueError(f"{len(candidates)} candidates but {len(references)} references")
    return [judge.judge(c, r) for c, r in zip(candidates, references, strict=True)]
