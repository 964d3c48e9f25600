"""Names that tell apart the post offices of one pincode sharing a display name.

India Post lists "Arjunganj BO" (a village branch office) and "Arjunganj SO" under 226002,
3 km apart; both are shown as "Arjunganj" (core.adapters.pincode.display_name). Wherever
a pincode's offices are offered for a pick, a shared name must pick one office only:

* the app API offers the directory's own names ("Arjunganj BO", "Arjunganj SO"), which it
  is sent back to pick one (``offered_names``); where the directory gives one name to two
  offices of a pincode ("Dariyapur BO" in Hathras and in Bulandshahr), the name with what
  tells them apart, as the chat says it ("Dariyapur BO (Hathras)");
* one name (in any case) twice at one spot is one office listed twice ("UMRI BO" and
  "Umri BO" of 246761): it is offered, and picked, once (``distinct``);
* the chat and the phone offer the name with a word people say after it: the office's
  kind ("Arjunganj branch post office"), else its district, else a village of the list
  that it alone of them is near ("Dumaria, near Dumrapahar"; the other Dumaria of 814103,
  near none the first is not near too, is just "Dumaria"), else its place among them in
  words ("Barda, the second one": the directory has a few rows alike in all of these,
  most of them one office at one spot listed twice). Not a number: the phone said
  "Dumaria, number 1 - press 4", and a caller who pressed the 1 they heard booked another
  village (``told_apart``). The booking keeps a written form of it (``written``), as
  people read it in an SMS: "Arjunganj Branch Office", never the "BO" display_name drops.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any, Protocol, TypeVar

from core.domain.geo import haversine_m

# The office-type suffix display_name drops ("Arjunganj SO", "Diwa B.O", "Kasara S.O
# (Thane)"): its letter says the kind.
_SUFFIX = re.compile(r"\s([BSH])\.?\s?O\.?(?=\s*(?:\([^()]*\))?\s*$)", re.IGNORECASE)
KINDS = {"B": "branch", "S": "sub", "H": "head"}
_WRITTEN_KINDS = {"branch": "Branch Office", "sub": "Sub Office", "head": "Head Office"}
# Offices alike in all else are said by their place among the namesakes in words (the
# catalog's office.first, office.second...: "Barda, the second one"), not by a number:
# said beside "press 5", a number is taken for the key.
ORDINALS = ("first", "second", "third", "fourth", "fifth")


class Office(Protocol):
    """A directory office (core.adapters.pincode.PostOffice)."""

    @property
    def name(self) -> str: ...  # display name: "Arjunganj"

    @property
    def office_name(self) -> str: ...  # the directory's: "Arjunganj SO"

    @property
    def district(self) -> str: ...

    @property
    def lat(self) -> float | None: ...

    @property
    def lng(self) -> float | None: ...


OfficeT = TypeVar("OfficeT", bound=Office)


def shared(names: Iterable[str]) -> set[str]:
    """The names (casefolded) that more than one of ``names`` is."""
    counts = Counter(name.casefold() for name in names)
    return {name for name, n in counts.items() if n > 1}


def distinct(offices: Sequence[OfficeT]) -> list[OfficeT]:
    """``offices`` without the repeats of one: the same directory name, in any case, at
    the same position ("UMRI BO" and "Umri BO", one spot) is one office, listed twice; the
    first is kept. Offices of one name at different places stay apart."""
    seen: set[tuple[str, float | None, float | None]] = set()
    out: list[OfficeT] = []
    for o in offices:
        key = (o.office_name.casefold(), o.lat, o.lng)
        if key not in seen:
            seen.add(key)
            out.append(o)
    return out


def offered_names(offices: Sequence[Office]) -> list[str]:
    """The names to offer for ``offices`` (``distinct`` ones), each picking one office
    when sent back as ``post_office``: the display name ("Laxmipur"), or where two share it
    the directory's office_name ("Arjunganj BO", "Arjunganj SO"), and where two share that
    too, it with what tells them apart (``told_apart``: "Dariyapur BO (Hathras)",
    "Bhupatipur BO (near Sahzadpur)")."""
    twice = shared(o.name for o in offices)
    names = [o.office_name if o.name.casefold() in twice else o.name for o in offices]
    if not shared(names):
        return names
    return [p["name"] for p in told_apart([
        {"name": name, "post_office": o.office_name, "district": o.district or None,
         "lat": o.lat, "lng": o.lng} for name, o in zip(names, offices, strict=True)])]


def kind(office_name: str) -> str | None:
    """"branch", "sub" or "head" as the directory's name says (its BO/SO/HO), else None."""
    m = _SUFFIX.search(office_name or "")
    return KINDS[m.group(1).upper()] if m else None


def _located(place: dict[str, Any]) -> bool:
    return place.get("lat") is not None and place.get("lng") is not None


def _metres(a: dict[str, Any], b: dict[str, Any]) -> int:
    return haversine_m(a["lat"], a["lng"], b["lat"], b["lng"])


def _nearest_own(place: dict[str, Any], group: Sequence[dict[str, Any]],
                 places: Sequence[dict[str, Any]], twice: set[str]) -> str | None:
    """The name of the office of ``places`` nearest ``place`` of those it alone of
    ``group`` (the offices sharing its name) is near: under half as far from it as from
    any other of them (Dumrapahar, 2.0 km from one Dumaria of 814103 and 4.9 km from the
    other; not Piparjoria, 1.5 and 1.8 km: both are near it), so no two of them are near
    one. Its name is its own (not one of ``twice``, the shared names). None if there is
    none: they are at one spot, or where one of them is is not known."""
    if not all(_located(p) for p in group):
        return None
    others = [p for p in group if p is not place]
    near = [(_metres(place, p), p.get("name") or "") for p in places
            if (p.get("name") or "").casefold() not in twice and _located(p)
            and all(2 * _metres(place, p) < _metres(o, p) for o in others)]
    return (min(near)[1] or None) if near else None


def told_apart(places: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``places`` (the dialog's: name, post_office, district, lat, lng) as offered in a
    list: those sharing a name each get ``apart`` ([how, what]: ["kind", "branch"],
    ["district", "Hathras"], ["near", "Bakkash"] or ["second", 2]; said with the catalog's
    office.<what> for a kind, else office.<how>), ``called`` (the shared name, said with
    it) and as ``name`` the written form (``written``), which the booking keeps. The
    others are unchanged; so is ``places``."""
    twice = shared(p.get("name") or "" for p in places)
    if not twice:
        return places
    out = [dict(p) for p in places]
    for called in twice:
        group = [p for p in out if (p.get("name") or "").casefold() == called]
        ways = (("kind", lambda p: kind(p.get("post_office") or "")),
                ("district", lambda p: p.get("district") or None))
        apart: dict[int, list[Any]] = {}
        for how, value_of in ways:
            values = [value_of(p) for p in group]
            if None in values:  # "Barda BO" and "Barda": is the second a branch too?
                continue  # the one said as a branch would be taken for the only one
            for i, value in enumerate(values):
                if i not in apart and values.count(value) == 1:
                    apart[i] = [how, value]
        # A village only one of them is near says which (the others are not near it),
        # so one left without is told apart by those with one: "Dumaria" is the other.
        for i, p in enumerate(group):
            if i not in apart and (near := _nearest_own(p, group, places, twice)):
                apart[i] = ["near", near]
        left = [i for i in range(len(group)) if i not in apart]
        if len(left) > 1:  # alike in all: the list's order says which, in words; a sixth
            for i in left:  # alike (the directory has none) by the number, as before
                apart[i] = [ORDINALS[i], i + 1] if i < len(ORDINALS) else ["number", i + 1]
        for i, p in enumerate(group):
            if i in apart:
                p["called"], p["apart"] = p.get("name") or "", apart[i]
                p["name"] = written(p["called"], apart[i])
    return out


def written(called: str, apart: Sequence[Any]) -> str:
    """How a place told apart is written where people read it (the booking, the rider's
    SMS): "Arjunganj Sub Office", "Dariyapur (Hathras)", "Dumaria (near Kolha)", "Barda
    (second)"."""
    how, what = apart[0], apart[1]
    if how == "kind":
        text = f"{called} {_WRITTEN_KINDS[what]}"
    elif how == "near":
        text = f"{called} (near {what})"
    elif how in ORDINALS:
        text = f"{called} ({how})"
    else:
        text = f"{called} ({what})"
    return text[:120]  # the booking's column
