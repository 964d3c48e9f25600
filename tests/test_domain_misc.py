"""Booking references, OTPs, phone numbers and geography."""

from __future__ import annotations

import math
import random

import pytest

from core.domain.errors import ValidationError
from core.domain.geo import haversine_m, in_india, validate_lat_lng
from core.domain.otp import generate_otp, hash_otp, verify_otp
from core.domain.phone import is_indian_mobile, mask_phone, normalize_phone
from core.domain.reference import (
    digits_spoken,
    is_valid_reference,
    new_reference,
    normalize_reference,
    speakable,
    verhoeff_check_digit,
)

# --- references -----------------------------------------------------------------------------


def test_verhoeff_worked_example() -> None:
    # Wikipedia's worked example: the check digit of 236 is 3
    assert verhoeff_check_digit("236") == "3"


def test_generated_references_are_valid() -> None:
    rng = random.Random(20250301)
    refs = [new_reference(rng) for _ in range(10_000)]
    for ref in refs:
        assert len(ref) == 8 and ref.isdigit() and ref[0] != "0"
        assert is_valid_reference(ref)
    assert len({r[0] for r in refs}) == 9  # every first digit 1-9 occurs
    assert len(set(refs)) > 9_990  # 9 x 10^6 possibilities: clashes are rare


def test_default_rng_is_used() -> None:
    assert is_valid_reference(new_reference())


def _sample_refs(n: int = 300) -> list[str]:
    rng = random.Random(7)
    return [new_reference(rng) for _ in range(n)]


def test_every_single_digit_error_is_detected() -> None:
    for ref in _sample_refs():
        for i, original in enumerate(ref):
            for d in "0123456789":
                if d != original:
                    typo = ref[:i] + d + ref[i + 1 :]
                    assert not is_valid_reference(typo), (ref, typo)


def test_every_adjacent_transposition_is_detected() -> None:
    for ref in _sample_refs():
        for i in range(len(ref) - 1):
            if ref[i] != ref[i + 1]:
                swapped = ref[:i] + ref[i + 1] + ref[i] + ref[i + 2 :]
                assert not is_valid_reference(swapped), (ref, swapped)


def test_reference_typing_is_tolerated() -> None:
    ref = new_reference(random.Random(1))
    for typed in (f"{ref[:4]} {ref[4:]}", f"{ref[:4]}-{ref[4:]}", f"  {ref}\n", " ".join(ref)):
        assert normalize_reference(typed) == ref
        assert is_valid_reference(typed)


@pytest.mark.parametrize(
    "bad", ["", "1234567", "123456789", "0" + "1234567", "12a45678", "०१२३४५६७", None]
)
def test_reference_shape(bad: str | None) -> None:
    assert normalize_reference(bad) is None  # type: ignore[arg-type]
    assert not is_valid_reference(bad)  # type: ignore[arg-type]


def test_speakable() -> None:
    assert speakable("48217730") == "4821 7730"
    assert speakable("4821-7730") == "4821 7730"
    assert digits_spoken("4821 7730") == ["4", "8", "2", "1", "7", "7", "3", "0"]
    with pytest.raises(ValidationError):
        speakable("12")


# --- OTP ------------------------------------------------------------------------------------

KEY = b"test-key-not-secret"


def test_generate_otp() -> None:
    rng = random.Random(3)
    codes = [generate_otp(rng=rng) for _ in range(2000)]
    assert all(len(c) == 4 and c.isdigit() for c in codes)
    assert any(c.startswith("0") for c in codes)  # zero-padded, not int-formatted
    assert len(generate_otp(6)) == 6
    assert len(generate_otp()) == 4
    with pytest.raises(ValueError):
        generate_otp(2)


def test_verify_otp() -> None:
    ctx = "leg:123:pickup"
    hashed = hash_otp("0427", key=KEY, context=ctx)
    assert len(hashed) == 64 and "0427" not in hashed
    assert verify_otp("0427", hashed, key=KEY, context=ctx)
    assert verify_otp(" 0427 ", hashed, key=KEY, context=ctx)
    assert not verify_otp("0428", hashed, key=KEY, context=ctx)
    assert not verify_otp("427", hashed, key=KEY, context=ctx)
    assert not verify_otp("04270", hashed, key=KEY, context=ctx)
    assert not verify_otp("04a7", hashed, key=KEY, context=ctx)
    assert not verify_otp("", hashed, key=KEY, context=ctx)
    assert not verify_otp("0427", "not-a-hash", key=KEY, context=ctx)
    assert not verify_otp("0427", "ज़", key=KEY, context=ctx)


def test_otp_bound_to_context_and_key() -> None:
    hashed = hash_otp("5555", key=KEY, context="leg:123:pickup")
    assert not verify_otp("5555", hashed, key=KEY, context="leg:123:drop")
    assert not verify_otp("5555", hashed, key=KEY, context="leg:124:pickup")
    assert not verify_otp("5555", hashed, key=b"other-key", context="leg:123:pickup")


def test_hash_is_hmac_of_context_and_code() -> None:
    import hashlib
    import hmac

    expected = hmac.new(KEY, b"leg:9:drop:1234", hashlib.sha256).hexdigest()
    assert hash_otp("1234", key=KEY, context="leg:9:drop") == expected


def test_six_digit_otp() -> None:
    hashed = hash_otp("123456", key=KEY, context="c")
    assert verify_otp("123456", hashed, key=KEY, context="c", digits=6)
    assert not verify_otp("123456", hashed, key=KEY, context="c")  # default expects 4


# --- phone ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        "9876543210",
        "98765 43210",
        "+91 98765-43210",
        "09876543210",
        "919876543210",
        "0091 98765 43210",
        "whatsapp:+919876543210",
        "WhatsApp:+919876543210",
        "tel:+91-98765-43210",
        "+91 (98765) 43210",
        "+91 098765 43210",
        " 98765.43210 ",
    ],
)
def test_normalize_indian_mobile(raw: str) -> None:
    assert normalize_phone(raw) == "+919876543210"


@pytest.mark.parametrize(
    ("raw", "e164"),
    [
        ("+44 20 7946 0958", "+442079460958"),
        ("whatsapp:+14155238886", "+14155238886"),
        ("0044 20 7946 0958", "+442079460958"),
        ("+977 98 0123 4567", "+9779801234567"),
        ("6123456789", "+916123456789"),
    ],
)
def test_normalize_other(raw: str, e164: str) -> None:
    assert normalize_phone(raw) == e164


@pytest.mark.parametrize(
    "raw",
    [
        "12345",  # too short
        "5876543210",  # Indian numbers must start 6-9
        "+91 58765 43210",
        "98765abcde",
        "call me",
        "",
        "+",
        "+1234567",  # 7 digits: too short for E.164
        "+1234567890123456",  # 16 digits: too long
        "+0123456789",  # no country code starts with 0
        "98765432101",  # 11 digits, no trunk zero
        "+91 98765 4321",
        "९८७६५४३२१०",  # Devanagari digits are left to the bot layer
    ],
)
def test_normalize_rejects(raw: str) -> None:
    with pytest.raises(ValidationError) as err:
        normalize_phone(raw)
    assert err.value.code == "bad_phone" and err.value.field == "phone"


def test_default_country() -> None:
    # a Nepali mobile typed without +977 when the default country is Nepal
    assert normalize_phone("9801234567", default_country="977") == "+9779801234567"


def test_mask_phone() -> None:
    assert mask_phone("+919876543210") == "+91******3210"
    assert mask_phone("whatsapp:+919876543210") == "+91******3210"
    assert mask_phone("+442079460958") == "+44******0958"
    assert mask_phone("+14155238886") == "+1******8886"
    assert mask_phone("not a phone") == "***"
    assert mask_phone("") == "***"


def test_is_indian_mobile() -> None:
    assert is_indian_mobile("+919876543210")
    assert not is_indian_mobile("+915876543210")
    assert not is_indian_mobile("9876543210")
    assert not is_indian_mobile("+9198765432101")
    assert not is_indian_mobile("+442079460958")


# --- geo ------------------------------------------------------------------------------------

R = 6371008.8
BETTIAH = (26.80228, 84.51522)
SHRIRAMPUR = (19.61856, 74.66252)


def _law_of_cosines_m(lat1: float, lng1: float, lat2: float, lng2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dl = math.radians(lng2 - lng1)
    return R * math.acos(math.sin(p1) * math.sin(p2) + math.cos(p1) * math.cos(p2) * math.cos(dl))


def test_haversine_bettiah_shrirampur() -> None:
    d = haversine_m(*BETTIAH, *SHRIRAMPUR)
    assert abs(d - _law_of_cosines_m(*BETTIAH, *SHRIRAMPUR)) <= 1
    # flat-earth check by hand: mean lat 23.21 deg, cos = 0.919; dlng 9.853 x 0.919 = 9.055 deg,
    # dlat 7.184 deg; hypotenuse 11.559 deg x 111.195 km = 1285 km
    assert 1_280_000 < d < 1_291_000
    assert haversine_m(*SHRIRAMPUR, *BETTIAH) == d


def test_haversine_known_arcs() -> None:
    # one degree of a meridian: 6371008.8 x pi/180 = 111195.08 m
    assert haversine_m(0, 0, 1, 0) == 111195
    # a quarter of the equator: 6371008.8 x pi/2 = 10007557.2 m
    assert haversine_m(0, 0, 0, 90) == 10007557
    assert haversine_m(*BETTIAH, *BETTIAH) == 0


@pytest.mark.parametrize(
    ("lat", "lng"),
    [
        (float("nan"), 80.0),
        (20.0, float("inf")),
        (90.01, 0.0),
        (-90.5, 0.0),
        (0.0, 180.5),
        (0.0, -181.0),
        ("north", 80.0),
        (None, 80.0),
        (True, 80.0),
    ],
)
def test_validate_lat_lng_rejects(lat: object, lng: object) -> None:
    with pytest.raises(ValidationError) as err:
        validate_lat_lng(lat, lng)  # type: ignore[arg-type]
    assert err.value.code == "bad_location"
    assert not in_india(lat, lng)  # type: ignore[arg-type]


def test_validate_lat_lng_accepts() -> None:
    assert validate_lat_lng(26, 84) == (26.0, 84.0)
    assert validate_lat_lng(-90, 180) == (-90.0, 180.0)


def test_in_india() -> None:
    assert in_india(*BETTIAH) and in_india(*SHRIRAMPUR)
    assert in_india(8.0883, 77.5385)  # Kanyakumari
    assert not in_india(51.5074, -0.1278)  # London
    assert not in_india(1.3521, 103.8198)  # Singapore
