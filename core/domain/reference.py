"""Booking references: 8 digits an IVR caller can key in and a clerk can read aloud.

Seven random digits (the first 1-9, so no leading zero can get lost) plus a Verhoeff check
digit, which catches every single-digit error and every adjacent transposition.
"""

from __future__ import annotations

import random
import re
import secrets
import unicodedata

from core.domain.errors import ValidationError
from core.domain.text import without_format_marks

REFERENCE_LENGTH = 8

# Verhoeff tables: multiplication in the dihedral group D5, a position permutation, inverses.
_D = (
    (0, 1, 2, 3, 4, 5, 6, 7, 8, 9),
    (1, 2, 3, 4, 0, 6, 7, 8, 9, 5),
    (2, 3, 4, 0, 1, 7, 8, 9, 5, 6),
    (3, 4, 0, 1, 2, 8, 9, 5, 6, 7),
    (4, 0, 1, 2, 3, 9, 5, 6, 7, 8),
    (5, 9, 8, 7, 6, 0, 4, 3, 2, 1),
    (6, 5, 9, 8, 7, 1, 0, 4, 3, 2),
    (7, 6, 5, 9, 8, 2, 1, 0, 4, 3),
    (8, 7, 6, 5, 9, 3, 2, 1, 0, 4),
    (9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
)
_P = (
    (0, 1, 2, 3, 4, 5, 6, 7, 8, 9),
    (1, 5, 7, 6, 2, 8, 3, 0, 9, 4),
    (5, 8, 0, 3, 7, 9, 6, 1, 4, 2),
    (8, 9, 1, 6, 0, 4, 3, 5, 2, 7),
    (9, 4, 5, 3, 1, 2, 6, 8, 7, 0),
    (4, 2, 8, 6, 5, 7, 3, 9, 0, 1),
    (2, 7, 9, 3, 8, 0, 6, 4, 1, 5),
    (7, 0, 4, 6, 9, 1, 3, 2, 5, 8),
)
_INV = (0, 4, 3, 2, 1, 5, 6, 7, 8, 9)

# Spaces, a hyphen, the Unicode dashes and the minus sign (a phone's keyboard, a copied
# message), a dot: what may stand between a reference's digits as people type it.
_SEPARATORS = re.compile(r"[\s\-\u2010-\u2015\u2212.]+")
_SHAPE = re.compile(r"[1-9][0-9]{7}")  # REFERENCE_LENGTH digits, no leading zero


def _verhoeff(digits: str, *, with_check: bool) -> int:
    c = 0
    offset = 0 if with_check else 1
    for i, ch in enumerate(reversed(digits)):
        c = _D[c][_P[(i + offset) % 8][int(ch)]]
    return c


def verhoeff_check_digit(digits: str) -> str:
    """The Verhoeff check digit to append to the ASCII digit string ``digits``."""
    if not digits.isascii() or not digits.isdigit():
        raise ValueError("digits only")
    return str(_INV[_verhoeff(digits, with_check=False)])


def new_reference(rng: random.Random | None = None) -> str:
    """A fresh random reference (uniqueness is the database's job: retry on a clash)."""
    r = rng if rng is not None else secrets.SystemRandom()
    body = str(r.randint(1, 9)) + "".join(str(r.randint(0, 9)) for _ in range(REFERENCE_LENGTH - 2))
    return body + verhoeff_check_digit(body)


def _ascii_digits(text: str) -> str:
    """``text`` with the decimal digits of any script (Devanagari ४८२१, Bengali, Gujarati,
    Tamil, Telugu, Kannada, fullwidth) as ASCII ones, as a phone field reads them
    (core.dialog.words.ascii_digits); everything else kept."""
    return "".join(str(d) if (d := unicodedata.decimal(ch, None)) is not None else ch
                   for ch in text)


def normalize_reference(s: str) -> str | None:
    """The 8 ASCII digits of a reference as typed ("4821 7730", "4821-7730", "४८२१ ७७३०"
    on a Hindi keyboard, wrapped in the direction marks of a copied message), or None if
    not shaped so.

    Only the shape is checked here; ``is_valid_reference`` also checks the check digit.
    """
    if not isinstance(s, str):
        return None
    cleaned = _SEPARATORS.sub("", _ascii_digits(without_format_marks(s)).strip())
    return cleaned if _SHAPE.fullmatch(cleaned) and cleaned.isascii() else None


def is_valid_reference(s: str) -> bool:
    """True if ``s`` (spaces and dashes tolerated) is a well-formed reference."""
    ref = normalize_reference(s)
    return ref is not None and _verhoeff(ref, with_check=True) == 0


def _require(ref: str) -> str:
    norm = normalize_reference(ref)
    if norm is None:
        raise ValidationError("not a booking reference", code="bad_reference", field="reference")
    return norm


def speakable(ref: str) -> str:
    """Reference in groups of four ("4821 7730"), the way it is printed and read out."""
    norm = _require(ref)
    return " ".join(norm[i : i + 4] for i in range(0, len(norm), 4))


def digits_spoken(ref: str) -> list[str]:
    """The digits one by one, for IVR prompts that read a reference digit by digit."""
    return list(_require(ref))
