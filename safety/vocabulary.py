"""The word lists report de-identification and the report checks share, without loading Presidio.

``vocabulary.txt`` is the hand-written radiology safe-word vocabulary; ``english_words.txt`` general English
(SCOWL). Kept apart from :mod:`radlvlm.safety.text_deid` so a caller that only needs the words does not pay
for Presidio's import.
"""

from __future__ import annotations

import re
from functools import cache, lru_cache
from importlib import resources

__all__ = ["ENGLISH_SHARE", "english_share", "load_english", "load_vocabulary"]


@lru_cache(maxsize=1)
def load_english() -> frozenset[str]:
    """General English words (SCOWL, lower-case entries only), for lower-case and sentence-initial words."""
    text = resources.files("radlvlm.safety").joinpath("english_words.txt").read_text("utf-8")
    return frozenset(line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#"))


@lru_cache(maxsize=1)
def load_vocabulary() -> frozenset[str]:
    """The shipped safe-word vocabulary (``vocabulary.txt`` in this package), lower-cased."""
    text = resources.files("radlvlm.safety").joinpath("vocabulary.txt").read_text("utf-8")
    return frozenset(line.strip().lower() for line in text.splitlines() if line.strip() and not line.startswith("#"))


# A text reads as English radiology text when at least this share of its words is known (radiology vocabulary or
# general English); no real IU-Xray report falls below it (tests/tasks), random or encoded text does.
ENGLISH_SHARE = 0.6
_WORD = re.compile(r"[A-Za-z][A-Za-z']{2,}")


@cache
def _known_words() -> frozenset[str]:
    return load_vocabulary() | load_english()


def english_share(text: str) -> float | None:
    """The share of ``text``'s words (3+ letters; IU's ``XXXX`` redactions left out) that are known words; None
    when it has fewer than three words to judge by."""
    words = [w.lower().strip("'") for w in _WORD.findall(text)]
    words = [w.removesuffix("'s") for w in words if set(w) != {"x"}]
    if len(words) < 3:
        return None
    known = _known_words()
    return sum(w in known for w in words) / len(words)
