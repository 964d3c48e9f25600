""""Okay" in the partners' and customers' own words: "theek hai", "சரி", "సరే", "ಸರಿ",
"ঠিক আছে", "ઠીક છે", "बरं" and "ok" written in each script are how people in these
languages say yes to a job or to a question. A partner's "சரி" to an offer was not
understood (the offer waited out its time and went to someone else), and "ठीक आहे" or
"ஓகே" at a chat's yes/no question was asked again. Okay with a no is still no yes."""

from __future__ import annotations

import pytest

from core import i18n
from core.dialog.words import is_yes
from core.domain.dispatch import Kind, parse_command
from tests.test_dispatch import (
    LAXMIPUR,
    frozen,  # noqa: F401  (fixture)
    legs_of,
    make_partner,
    offers,
    paid_booking,
    sms,
    start,
)

OKAY = ["theek hai", "Thik hai", "theek", "accepted", "சரி", "sari", "ஓகே", "సరే", "sare",
        "ఓకే", "ಸರಿ", "ಆಯ್ತು", "ಓಕೆ", "ঠিক আছে", "ওকে", "ઠીક છે", "ઓકે", "બરાબર",
        "ठीक आहे", "बरं"]


@pytest.mark.parametrize("text", OKAY)
def test_okay_takes_an_offer(text: str) -> None:
    assert parse_command(text).kind is Kind.ACCEPT


@pytest.mark.parametrize("text", ["சரி 57", "theek hai 57", "సరే, 57"])
def test_okay_with_the_job_names_it(text: str) -> None:
    command = parse_command(text)
    assert (command.kind, command.numbers) == (Kind.ACCEPT, ("57",))


@pytest.mark.parametrize("text", ["theek nahi", "thik nahi hai", "ठीक नहीं", "சரி இல்லை",
                                  "ঠিক আছে না"])
def test_okay_with_a_no_is_not_taken_as_yes(text: str) -> None:
    assert parse_command(text).kind is not Kind.ACCEPT


@pytest.mark.parametrize("text", ["ஓகே", "ఓకే", "ಓಕೆ", "ಆಯ್ತು", "ওকে", "ઠીક છે", "ઓકે",
                                  "ठीक आहे", "बरं", "accepted"])
def test_okay_is_yes_in_chat(text: str) -> None:
    assert is_yes(text)


@pytest.mark.db
@pytest.mark.parametrize(("lang", "text"), [("ta", "சரி"), ("hi", "theek hai"),
                                            ("kn", "ಸರಿ")])
def test_partner_saying_okay_gets_the_job(client, live, frozen, lang: str,  # noqa: F811
                                          text: str) -> None:
    """A Tamil partner's "சரி" to the job just offered takes it (before: "not understood",
    and the offer timed out against him)."""
    partner_id, phone = make_partner("Murugan", LAXMIPUR, lang=lang)
    booking_id = paid_booking()
    start(booking_id)
    leg = legs_of(booking_id)[0]
    reply = sms(client, phone, text)
    assert reply and reply[0] != i18n.t("dispatch.unknown_offer", lang, job=leg.id), reply
    taken = legs_of(booking_id)[0]
    assert (taken.status, taken.partner_id) == ("assigned", partner_id)
    assert [o.status for o in offers(leg.id)] == ["accepted"]
