"""A weight written in kilograms at the chat's weight question (review: only the option's
number or its label was taken, so "5 kg" or "1 quintal" was asked again, and the bare
number people write for kilograms, "20", was refused though no option has that number).

The answer in kg, with its unit in any catalog language or in Latin letters, or a bare
number above the options' own, picks the band it falls in; more than the heaviest band
is told how much we carry. A bare 1 to 5 stays the option of that number.
"""

from __future__ import annotations

import pytest

from core import i18n
from core.dialog import words
from core.dialog.booking import BOOKING_DIALOG
from core.dialog.engine import DialogState, UserInput, turn
from core.domain.pricing import WeightBucket
from tests.test_dialog import FakePorts


@pytest.mark.parametrize(("text", "kg"), [
    ("5 kg", 5), ("20kg", 20), ("12 KGS", 12), ("2.5 kilo", 2.5), ("५ किलो", 5),
    ("१२ केजी", 12), ("১০ কেজি", 10), ("3 கிலோ", 3), ("50 కిలో", 50), ("7 કિલો", 7),
    ("9 ಕಿಲೋ", 9), ("1 quintal", 100), ("2 क्विंटल", 200), ("1.5 kuntal", 150),
    ("500 gram", 0.5), ("250 gm", 0.25),
])
def test_a_weight_with_its_unit_is_read_in_kilograms(text, kg):
    assert words.kilograms(text) == kg


@pytest.mark.parametrize("text", ["5", "kilo", "5 kg chawal", "bahut bhari", "kg 5", ""])
def test_what_is_not_one_number_and_a_unit_is_no_weight(text):
    assert words.kilograms(text) is None


def _at_weight(text: str, lang: str = "hi") -> tuple[str | None, str, str]:
    state = DialogState("weight")
    outs = turn(BOOKING_DIALOG, state, UserInput(text=text), FakePorts(), lang)
    return state.slots.get("weight"), state.step, repr(outs)


def _band(kg: float) -> str:
    return next(w.value for w in WeightBucket if w.max_grams >= kg * 1000)


@pytest.mark.parametrize(("text", "kg"), [
    ("5 kg", 5), ("6 kg", 6), ("20 kilo", 20), ("21 kg", 21), ("1 quintal", 100),
    ("500 gm", 0.5), ("750 kg", 750), ("20", 20), ("45", 45), ("199", 199),
])
def test_the_band_a_weight_falls_in_is_picked(text, kg):
    picked, step, _ = _at_weight(text)
    assert (picked, step) == (_band(kg), "fragile")


@pytest.mark.parametrize(("text", "option"), [("1", 1), ("3", 3), ("5", 5), ("४", 4)])
def test_a_bare_option_number_is_still_that_option(text, option):
    picked, step, _ = _at_weight(text)
    assert (picked, step) == (list(WeightBucket)[option - 1].value, "fragile")


@pytest.mark.parametrize("lang", i18n.LANGUAGES)
def test_more_than_we_carry_is_told_and_asked_again(lang):
    picked, step, said = _at_weight("900 kg", lang)
    assert (picked, step) == (None, "weight")
    assert "bot.parcel.weight_too_heavy" in said and "750" in said
    assert "750" in i18n.t("bot.parcel.weight_too_heavy", lang, kg=750)
