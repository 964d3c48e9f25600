"""Phone numbers: whatever a user or Twilio sends, normalised to E.164, masked for logs."""

from __future__ import annotations

import re

from core.domain.errors import ValidationError

_SCHEMES = ("whatsapp:", "tel:", "sms:")
_NOISE = re.compile(r"[\s\-().\u2010-\u2015]+")
_INDIAN_MOBILE = re.compile(r"[6-9][0-9]{9}")
_E164 = re.compile(r"\+[1-9][0-9]{7,14}")

# ITU country codes of one or two digits; every other country code has three.
_CC1 = frozenset({"1", "7"})
_CC2 = frozenset(
    {"20", "27", "30", "31", "32", "33", "34", "36", "39", "40", "41", "43", "44", "45", "46"}
    | {"47", "48", "49", "51", "52", "53", "54", "55", "56", "57", "58", "60", "61", "62"}
    | {"63", "64", "65", "66", "81", "82", "84", "86", "90", "91", "92", "93", "94", "95"}
    | {"98"}
)


# What Twilio puts in ``From`` when a caller withholds their number: a word (any case), or
# for the words ANONYMOUS, RESTRICTED and UNAVAILABLE a placeholder that looks like a real
# number. Never a person: every hidden caller would share one contact and its bookings.
HIDDEN_CALLER_IDS = frozenset({
    "anonymous", "restricted", "unknown", "private", "unavailable",
    "+266696687", "+7378742833", "+86282452253",
})


def is_hidden_number(raw: str) -> bool:
    """True if ``raw`` is what Twilio sends for a withheld caller ID, not a number."""
    s = raw.strip().lower()
    for scheme in _SCHEMES:
        s = s.removeprefix(scheme)
    return _NOISE.sub("", s) in HIDDEN_CALLER_IDS


def _bad(raw: object) -> ValidationError:
    # Not the input itself: the message reaches logs, and the input may be a number with
    # one digit too many or written in a way the log masking does not know.
    del raw
    return ValidationError("not a phone number we can use", code="bad_phone", field="phone")


def _international(digits: str, raw: object) -> str:
    """``digits`` follow a "+" or "00": a full number with country code."""
    if digits.startswith("91"):
        national = digits[2:]
        if len(national) == 11 and national.startswith("0"):
            national = national[1:]  # "+91 0XXXXXXXXXX": trunk zero written by habit
        if _INDIAN_MOBILE.fullmatch(national):
            return "+91" + national
        raise _bad(raw)
    e164 = "+" + digits
    if _E164.fullmatch(e164):
        return e164
    raise _bad(raw)


def normalize_phone(raw: str, default_country: str = "91") -> str:
    """E.164 form of ``raw`` (``+91XXXXXXXXXX`` for Indian mobiles); ValidationError ``bad_phone``.

    Accepts spaces, dashes, a trunk ``0``, a bare ``91``, ``00``/``+`` prefixes and the
    ``whatsapp:``/``tel:`` schemes Twilio uses. Indian numbers must be mobiles (6-9 first).
    """
    if not isinstance(raw, str) or not default_country.isdigit():
        raise _bad(raw)
    s = raw.strip()
    for scheme in _SCHEMES:
        if s.lower().startswith(scheme):
            s = s[len(scheme) :].strip()
            break
    s = _NOISE.sub("", s)
    if s.startswith("+"):
        plus, s = True, s[1:]
    else:
        plus = False
    if not s or not s.isascii() or not s.isdigit():
        raise _bad(raw)
    if plus:
        return _international(s, raw)
    if s.startswith("00"):
        return _international(s[2:], raw)
    if default_country == "91":
        if len(s) == 11 and s.startswith("0"):
            s = s[1:]
        elif len(s) == 12 and s.startswith("91"):
            s = s[2:]
        if _INDIAN_MOBILE.fullmatch(s):
            return "+91" + s
        raise _bad(raw)
    return _international(default_country + s.lstrip("0"), raw)


def is_e164(number: str) -> bool:
    """True for the shape of any E.164 number: ``+``, a country code, 8 to 15 digits in
    all (an Indian landline, a foreign mobile). No check that it is a mobile, or ours."""
    return isinstance(number, str) and _E164.fullmatch(number) is not None


def is_indian_mobile(e164: str) -> bool:
    """True for ``+91`` followed by a 10-digit mobile number (first digit 6-9)."""
    return isinstance(e164, str) and re.fullmatch(r"\+91[6-9][0-9]{9}", e164) is not None


def _country_code(digits: str) -> str:
    if digits[:1] in _CC1:
        return digits[:1]
    if digits[:2] in _CC2:
        return digits[:2]
    return digits[:3]


def mask_phone(e164: str) -> str:
    """``+91******3210``: country code and last four digits, for logs; ``***`` if unparseable."""
    try:
        number = normalize_phone(e164)
    except ValidationError:
        return "***"
    digits = number[1:]
    cc = _country_code(digits)
    hidden = len(digits) - len(cc) - 4
    if hidden < 2:
        return "***"
    return f"+{cc}{'*' * hidden}{digits[-4:]}"
