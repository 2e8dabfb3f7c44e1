"""The word lists report de-identification and the report checks share, without loading Presidio.

``vocabulary.txt`` is the hand-written radiology safe-word vocabulary; ``english_words.txt`` general English
(SCOWL). Kept apart from :mod:`radlvlm.safety.text_deid` so a caller that only needs the words does not pay
for Presidio's import.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

__all__ = ["load_english", "load_vocabulary"]


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
