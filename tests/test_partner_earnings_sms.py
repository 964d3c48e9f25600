"""A rider without the app asks what he earned by SMS (EARN, "kamai", "paisa nahi mila",
his language's word): the answer is what the app's earnings show, in his language."""

from __future__ import annotations

from datetime import timedelta

import pytest

from core import i18n
from core.domain import dispatch as rules
from core.domain.money import format_inr
from tests.test_dispatch import T0, frozen, make_partner, sms  # noqa: F401 (fixture)
from tests.test_dispatch_facts import deliver_for

pytestmark = pytest.mark.db


@pytest.mark.parametrize(("body", "lang"), [("EARN", "hi"), ("kamai", "hi"),
                                            ("paisa nahi mila", "hi"), ("मेरा हिसाब", "hi"),
                                            ("வருமானம்", "ta"), ("earnings?", "en")])
def test_a_rider_is_told_his_earnings_by_sms(client, frozen, body, lang):  # noqa: F811
    partner, phone = make_partner("Ramesh", (26.8, 84.5), lang=lang)
    today = deliver_for(partner, T0 - timedelta(hours=1))
    earlier = deliver_for(partner, T0 - timedelta(days=3))
    old = deliver_for(partner, T0 - timedelta(days=30))
    (reply,) = sms(client, phone, body)
    assert reply == i18n.t("sms.earnings", lang, today_paise=today,
                           week_paise=today + earlier, total_paise=today + earlier + old,
                           legs=3)
    assert format_inr(today + earlier + old) in reply


def test_the_earnings_words_are_read_as_earn_and_a_no_does_not_turn_them_around():
    for body in ("EARN", "Kamai", "paisa nahi mila", "पैसे कब मिलेंगे", "টাকা", "ಹಣ"):
        assert rules.parse_command(body).kind is rules.Kind.EARN, body
    assert rules.parse_command("OFF").kind is rules.Kind.OFF  # others are as they were
