"""Tests for Indian-style rupee formatting of integer paise."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.domain.money import format_inr


@pytest.mark.parametrize(
    ("paise", "expected"),
    [
        (0, "₹0"),
        (5, "₹0.05"),
        (100, "₹1"),
        (99_900, "₹999"),
        (100_000, "₹1,000"),
        (125_000, "₹1,250"),
        (125_050, "₹1,250.50"),
        (1_000_000, "₹10,000"),
        (10_000_000, "₹1,00,000"),
        (12_345_678_900, "₹12,34,56,789"),
        (12_345_678_901, "₹12,34,56,789.01"),
        (-125_000, "-₹1,250"),
        (-5, "-₹0.05"),
    ],
)
def test_format_inr_examples(paise: int, expected: str) -> None:
    assert format_inr(paise) == expected


def test_paise_digits_forces_two_decimals() -> None:
    assert format_inr(125_000, paise_digits=True) == "₹1,250.00"
    assert format_inr(125_050, paise_digits=True) == "₹1,250.50"


@pytest.mark.parametrize("bad", [True, False, 1.5, "100", None, Decimal("1")])
def test_non_int_is_rejected(bad: object) -> None:
    with pytest.raises(TypeError):
        format_inr(bad)  # type: ignore[arg-type]


@given(st.integers(min_value=-(10**15), max_value=10**15))
def test_round_trip(paise: int) -> None:
    text = format_inr(paise)
    assert Decimal(text.replace("₹", "").replace(",", "")) * 100 == paise


@given(st.integers(min_value=0, max_value=10**15))
def test_grouping_shape(paise: int) -> None:
    # Indian grouping: last group three digits, every group before it exactly two (first 1-2).
    whole = format_inr(paise).removeprefix("₹").split(".")[0]
    groups = whole.split(",")
    if len(groups) > 1:
        assert len(groups[-1]) == 3
        assert all(len(g) == 2 for g in groups[1:-1])
        assert 1 <= len(groups[0]) <= 2
