"""The phone side under a review's edge cases, each a call through the real, signed voice
webhooks (the ``Caller`` of tests/test_ivr.py); each test failed before its fix."""

from __future__ import annotations

import re

import pytest

from core.adapters.db import transaction
from core.adapters.models import Person, RateCardRow
from core.domain.pricing import DEFAULT_RATE_CARD
from tests.test_ivr import Caller, phone, prompts, step_of, t  # noqa: F401


def _to_the_speed_question(caller: Caller) -> str:
    """Hindi, book, Bettiah -> Laxmipur, recipient, "needs a vehicle", up to 5 kg: the
    speed question (with its fares) is what the caller hears last."""
    caller.call()
    for keys in ("1", "1", "845438#", "2", "1", "845450#", "7", "1", "9876543210#", "1",
                 "4", "1"):
        heard = caller.press(keys)
    assert t("ivr.speed.ask", km="14.0")[:20] in heard.text, heard.text
    return heard.text


@pytest.mark.parametrize("how", ["star", "silence"])
def test_star_or_silence_after_the_rate_card_dropped_vans_asks_the_size_again(
        phone: Caller, how: str) -> None:  # noqa: F811
    """A caller hears the speed question for a parcel that "needs a vehicle"; meanwhile ops
    activate a rate card without carts and pickup vans. The caller presses * to hear the
    fares again (or says nothing): they hear "something went wrong on our side, try again
    in a few minutes" and the call is cut. They should hear "sorry, we have no vehicle for
    a parcel this big, choose a smaller one" and the size question, as any key press or
    the chat gets (the engine turns the prompt's Redirect into that step; the IVR's own
    repeat and silence paths call the prompt directly and let the Redirect escape)."""
    _to_the_speed_question(phone)
    card = DEFAULT_RATE_CARD.to_dict()
    card["vehicles"] = {k: v for k, v in card["vehicles"].items() if k not in ("cart", "pickup")}
    with transaction() as s:
        s.add(RateCardRow(name="no-vans", card=card, active=True))

    heard = phone.press("*") if how == "star" else phone.silence()

    assert t("common.error_try_later") not in heard.text, heard.text
    assert heard.gather is not None  # still asking, not hung up
    assert t("bot.parcel.no_vehicle") in heard.text and t("ivr.size.ask") in heard.text
    assert step_of(phone.phone) == "size"


def test_a_known_caller_on_a_foreign_number_is_told_in_their_language(
        client, prompts) -> None:  # noqa: F811
    """Someone who chats with us on WhatsApp from a UK number and chose English calls the
    voice number. They hear, in Hindi only, "please call from an Indian mobile", a sentence
    they cannot understand. They should hear it in English, the language they chose (the
    notice is said before any look-up of the caller, always in the default language)."""
    with transaction() as s:
        s.add(Person(phone="+447700900123", role="customer", preferred_language="en"))
    heard = Caller(client, "+447700900123").call()
    assert heard.hangup and heard.gather is None
    assert t("ivr.not_mobile", "en") in heard.text, heard.text
    assert t("ivr.not_mobile", "hi") not in heard.text


def test_an_unknown_caller_on_a_foreign_number_hears_hindi_then_english(
        client, prompts) -> None:  # noqa: F811
    heard = Caller(client, "+447700900456").call()
    assert heard.hangup and heard.gather is None
    hi, en = t("ivr.not_mobile", "hi"), t("ivr.not_mobile", "en")
    assert hi in heard.text and en in heard.text
    assert heard.text.index(hi) < heard.text.index(en)


def test_the_distance_is_said_without_a_point_zero(phone: Caller) -> None:  # noqa: F811
    """The speed question says "दूरी 14.0 किलोमीटर है" ("The distance is 14.0 kilometres"):
    the voice reads "fourteen point zero kilometres". A caller should hear "14 kilometres"
    (a whole number of kilometres said without ".0"; the chat's one-decimal format is
    handed to the ear unchanged)."""
    heard = _to_the_speed_question(phone)
    assert not re.search(r"\d\.0(?!\d)", heard), heard
