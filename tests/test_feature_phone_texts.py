"""A customer who booked by phone call reads our news by SMS: what it tells them to do
next must work from a feature phone (call the IVR), and an SMS to our number from someone
who is not a rider is told how to book, not only how to become a rider."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from sqlalchemy import select

from core import clock, i18n
from core.adapters.db import transaction
from core.adapters.models import OutboxMessage
from core.config import get_settings
from core.services import payments
from tests.conftest import post_twilio, run_jobs
from tests.test_ivr import book_in_hindi, phone, prompts  # noqa: F401 (fixtures)

pytestmark = pytest.mark.db

# What a customer may be sent outside a chat and then acts on.
NEXT_STEP_KEYS = ("payment.expired", "payment.link_failed", "bot.handoff.closed",
                  "bot.handoff.expired", "sms.not_partner")


@pytest.mark.parametrize("lang", sorted(i18n.LANGUAGES))
@pytest.mark.parametrize("key", NEXT_STEP_KEYS)
def test_every_language_names_the_number_to_call(key, lang):
    text = i18n.t(key, lang, ref="48217730", ops_phone="+919000000042")
    assert get_settings().twilio_voice_number in text
    assert "{" not in text


def sms_bodies(to: str) -> list[str]:
    with transaction() as s:
        return list(s.scalars(select(OutboxMessage.body).where(
            OutboxMessage.to_addr == to, OutboxMessage.channel == "sms")
            .order_by(OutboxMessage.id)))


def test_a_caller_whose_booking_expired_can_book_again_from_a_feature_phone(live, phone):  # noqa: F811
    book_in_hindi(phone)
    run_jobs()
    clock.freeze(clock.now() + timedelta(minutes=45))
    assert payments.expire_unpaid() == 1
    run_jobs()
    expired = i18n.t("payment.expired", "hi", ref="REF").split("REF")[1]
    (told,) = [b for b in sms_bodies(phone.phone) if b.endswith(expired)]
    assert get_settings().twilio_voice_number in told
    # They answer the SMS itself, as people do: it reaches the riders' number.
    r = post_twilio(phone.client, "/webhooks/sms", {
        "MessageSid": "SMcust1", "From": phone.phone, "To": get_settings().twilio_sms_from,
        "Body": "hi"})
    assert r.status_code == 200
    answer = re.sub(r"\s+", " ", r.get_data(as_text=True))
    assert get_settings().twilio_voice_number in answer  # how to book
