"""027a3f1's "when will it come" reading, after review rnew2a. At the rating question
praise with a come in it ("delivered on time", "time pe mila") was taken as "when will it
come" and the rating thrown away; at the menu a complaint ("toot ke aaya kya karu", "did
not like it") or another subject's when ("refund kab milega") opened tracking; Marathi
and Gujarati in Latin letters ("samajla nahi", "kya che", "aap kem cho") were offered
Hindi at the language list."""

from __future__ import annotations

import pytest

from core.dialog import words
from core.dialog.booking import menu_request
from core.dialog.engine import DialogState
from tests.test_chat_langs_review27 import say
from tests.test_dialog import FakePorts, keys


class RatingPorts(FakePorts):
    def __init__(self) -> None:
        super().__init__()
        self.ratings: list[tuple[str, int]] = []

    def rate(self, ref, stars):
        self.ratings.append((ref, stars))
        return {}

    def my_bookings(self, open_only: bool = False):
        return [("48217730", "delivered")]


@pytest.mark.parametrize(("lang", "said"), [
    ("en", "5 stars, delivered on time, will use again!"),
    ("en", "Delivered on time, will use again"),
    ("en", "did a great job, delivered safely"),
    ("hi", "5 star, kya service hai, time pe mila"),
    ("hi", "kya fast aaya yaar"),
    ("hi", "parcel mila, kya service hai"),
])
def test_praise_at_the_rating_question_keeps_the_rating(lang: str, said: str) -> None:
    """Praise is no "when will it come": the rating question stays (how to answer it is
    said) or the stars are taken; she is not sent to tracking's "which booking?"."""
    state = DialogState("rate", data={"rate_ref": "48217730"})
    ports = RatingPorts()
    outs = say(state, ports, said, lang)
    assert state.data.get("rate_ref") == "48217730" or ports.ratings, (
        said, state.step, keys(outs))
    assert not any(k.startswith("bot.track") for k in keys(outs)), keys(outs)


def test_a_where_at_the_rating_question_is_still_answered() -> None:
    """A plain request still leaves the rating question, as before 027a3f1."""
    state = DialogState("rate", data={"rate_ref": "48217730"})
    ports = RatingPorts()
    say(state, ports, "mera parcel kahan hai", "hi")
    assert "rate_ref" not in state.data and not ports.ratings


@pytest.mark.parametrize("said", [
    "parcel toot ke aaya kya karu", "kharab aaya kya karu", "parcel damaged mila kya karein",
    "it arrived damaged, did not like it", "itna late kyu aaya?",
    "refund kab milega", "OTP kab milega", "bill kab milega", "code kab milega",
    "reply kab aayega", "paisa kab milega", "it arrived, will use again",
])
def test_complaints_and_other_whens_are_no_tracking(said: str) -> None:
    """A complaint (came broken, late, not liked) or a when of something else (refund,
    OTP, bill, code, a reply) is not "where is my parcel"."""
    assert menu_request(said) != 2, said


@pytest.mark.parametrize("said", [
    "parcel pahucha kya", "parcel aaya kya?", "kab aayega", "has it arrived yet",
    "when will my parcel arrive?", "mera parcel kab milega?"])
def test_a_come_asked_is_still_tracking(said: str) -> None:
    assert menu_request(said) == 2, said


@pytest.mark.parametrize("said", ["mala kahi samajla nahi", "maro parcel kya che?",
                                  "aap kem cho"])
def test_marathi_and_gujarati_in_latin_letters_are_not_offered_hindi(said: str) -> None:
    """At the language list: asked again (the list), not "shall we talk in Hindi?"."""
    assert not words.hinglish(said), said
    state = DialogState("language")
    say(state, FakePorts(), said, "hi")
    assert state.step == "language" and state.data.get("lang_guess") is None, said
