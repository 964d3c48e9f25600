"""Text as people read it: what we keep of a name or a landmark typed in the chat or sent
by an app, before a rider's SMS or an operator's screen shows it."""

from __future__ import annotations

import unicodedata

# Part of how some words are spelt (a Bengali or Marathi half form), though invisible.
_JOINERS = frozenset({"\u200c", "\u200d"})


def visible(text: str) -> str:
    """``text`` as it is read, for what we keep and others read (a receiver's name, a
    landmark): without control characters and invisible format marks (a right-to-left
    override would turn the rest of a rider's SMS around), the joiners some spellings
    need kept; its words one space apart."""
    return " ".join("".join(
        ch for ch in text
        if ch in _JOINERS or unicodedata.category(ch) not in ("Cc", "Cf")
        or ch in " \t\n").split())


def without_format_marks(text: str) -> str:
    """``text`` without invisible format characters (Unicode Cf: direction marks, joiners)."""
    return "".join(ch for ch in text if unicodedata.category(ch) != "Cf")


__all__ = ["visible", "without_format_marks"]
