"""Review rnew3 of this session's last word rules (8d81f06, 7001d31).

- A rider who says he cannot come yet, only late ("can't come, running late", "time pe
  nahi aa sakta, late ho jaunga") was read as declining the offer: a word of coming or
  being late says it alone now; hours, "baad", traffic or a day still need a word for now
  ("can't come, traffic jam" declines, as 8d81f06 made it).
- "Kya mera parcel aaya" / "क्या मेरा पार्सल आया" / "did my parcel delivered" (a yes/no
  question's first word) was no longer tracking at the menu.
- At the rating question "mera doosra parcel kab aayega" (a come with a when) was taken
  for a rating answer; a come without a when there is still praise."""

from __future__ import annotations

import pytest

from core.dialog.booking import _names_when, menu_request
from core.domain.dispatch import Kind, parse_command


@pytest.mark.parametrize("body", [
    "time pe nahi aa sakta, thoda late hoga", "time pe nahi aa sakta, late ho jaunga",
    "can't come, running late", "can't come, will be late", "can't come yet, wait",
    "can't come, wait thoda", "can't come, stuck in traffic, coming",
    "can't come, will reach soon", "cant come, coming in 10",
])
def test_coming_only_late_is_no_refusal(body: str) -> None:
    assert parse_command(body).kind is not Kind.DECLINE, body


@pytest.mark.parametrize("body", [
    "aaj nahi aa sakta, kal aaunga", "Sorry I can't come, I will be busy",
    "can't come, traffic jam", "can't come, busy for 2 hours", "main nahi aa sakta, kya karu",
    "can't come, got another job", "sorry cant come today", "main nahi aa sakta",
])
def test_a_refusal_with_its_reason_still_declines(body: str) -> None:
    assert parse_command(body).kind is Kind.DECLINE, body


@pytest.mark.parametrize("said", [
    "क्या मेरा पार्सल आया", "क्या पार्सल पहुंचा", "kya mera parcel aaya", "kya parcel pahuncha",
    "did my parcel delivered", "did the parcel arrived",
])
def test_a_yes_no_question_whether_it_came_is_tracking(said: str) -> None:
    assert menu_request(said) == 2, said


@pytest.mark.parametrize("said", [
    "is the rider coming to my house?", "kya hai", "parcel toot ke aaya kya karu",
])
def test_no_tracking_without_the_parcels_come_asked(said: str) -> None:
    assert menu_request(said) is None, said


@pytest.mark.parametrize(("said", "tracked"), [
    ("mera doosra parcel kab aayega", True), ("when will my other parcel come", True),
    ("dusra parcel kab aayega?", True),
    ("kya fast aaya yaar", False), ("5 stars, delivered on time, will use again!", False),
    ("did a great job, delivered safely", False), ("parcel mila, kya service hai", False),
])
def test_at_the_rating_question_only_a_when_is_tracking(said: str, tracked: bool) -> None:
    asked = menu_request(said, when=False) or _names_when(said)
    assert (asked == 2) is tracked, said
