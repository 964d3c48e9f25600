"""Pickup/drop OTPs: short digit codes, stored only as keyed hashes bound to their use.

The hash covers a context such as ``leg:123:pickup``, so a leaked hash (or a code read out
for one leg) proves nothing about another leg or the other end of the same leg.
"""

from __future__ import annotations

import hashlib
import hmac
import random
import re
import secrets

OTP_DIGITS = 4


def _check_digits(digits: int) -> None:
    if isinstance(digits, bool) or not isinstance(digits, int) or not 4 <= digits <= 10:
        raise ValueError("an OTP has 4 to 10 digits")


def generate_otp(digits: int = OTP_DIGITS, rng: random.Random | None = None) -> str:
    """A random code of exactly ``digits`` digits (leading zeros kept); CSPRNG by default."""
    _check_digits(digits)
    r = rng if rng is not None else secrets.SystemRandom()
    return "".join(str(r.randint(0, 9)) for _ in range(digits))


def hash_otp(otp: str, *, key: bytes, context: str) -> str:
    """HMAC-SHA256 hex of ``context + ":" + otp``; what the database keeps instead of the code."""
    if not isinstance(otp, str) or not re.fullmatch(r"[0-9]+", otp):
        raise ValueError("an OTP is ASCII digits only")
    if not key:
        raise ValueError("an empty OTP key protects nothing")
    if not context:
        raise ValueError("an OTP hash needs a context")
    return hmac.new(key, f"{context}:{otp}".encode(), hashlib.sha256).hexdigest()


def verify_otp(
    otp: str, hashed: str, *, key: bytes, context: str, digits: int = OTP_DIGITS
) -> bool:
    """True if ``otp`` (surrounding spaces ignored) is the code behind ``hashed`` for ``context``.

    Anything but exactly ``digits`` ASCII digits is simply wrong; comparison is constant-time.
    """
    _check_digits(digits)
    if not isinstance(otp, str) or not isinstance(hashed, str) or not hashed.isascii():
        return False
    candidate = otp.strip()
    if len(candidate) != digits or not re.fullmatch(r"[0-9]+", candidate):
        return False
    expected = hash_otp(candidate, key=key, context=context)
    return hmac.compare_digest(expected.encode(), hashed.lower().encode())
