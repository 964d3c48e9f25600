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


def _in_word(ch: str) -> bool:
    """A letter, a digit or a mark that belongs to the letter before it (a Devanagari
    vowel sign): part of a word, whatever the script."""
    return unicodedata.category(ch)[0] in "LMN"


def names_word(text: str, word: str) -> bool:
    """Whether ``text`` says ``word`` (a name, a landmark) as a word of its own, any case:
    "Ram is coming" and "राम जी" name Ram, "Rampur" and "रामपुर" do not."""
    hay, needle = text.casefold(), word.strip().casefold()
    if not needle:
        return False
    start = hay.find(needle)
    while start >= 0:
        end = start + len(needle)
        before = start > 0 and _in_word(hay[start - 1]) and _in_word(needle[0])
        after = end < len(hay) and _in_word(hay[end]) and _in_word(needle[-1])
        if not before and not after:
            return True
        start = hay.find(needle, start + 1)
    return False


__all__ = ["names_word", "visible", "without_format_marks"]


# What one SMS of ours may take: 2 parts, of 153 characters in the GSM alphabet (as
# English goes) or 67 in UCS-2 (any Indian script; in UTF-16 units).
_SMS_MAX_GSM = 2 * 153
_SMS_MAX_UCS2 = 2 * 67


def fits_two_sms_parts(text: str) -> bool:
    """``text`` goes as one SMS of at most 2 parts (the house limit of an SMS of ours)."""
    if text.isascii():
        return len(text) <= _SMS_MAX_GSM
    return len(text.encode("utf-16-le")) // 2 <= _SMS_MAX_UCS2
