"""A recipient we told of a parcel before any delivery code went to her (she asked us by
SMS: "a parcel (booking ...) is coming to you ... the code we send you") was never told
when it would not come: only a recipient holding a code was. She now hears it, with no
word of a code she never had."""

from __future__ import annotations

from datetime import timedelta

import pytest

from core import i18n
from core.domain.pricing import SpeedTier
from tests.conftest import release_scheduled
from tests.test_dispatch import (
    RECIPIENT,
    bodies_to,
    booking_status,
    freeze_at,
    frozen,  # noqa: F401  (fixture)
    paid_booking,
    run_jobs_expecting_refund,
    sms,
    start,
)
from tests.test_notices_end_to_end import customer_speaks, ref_of

pytestmark = pytest.mark.db


def _nobody_takes_it(client, *, asks: bool) -> tuple[int, str]:
    booking_id = paid_booking(tier=SpeedTier.EXPRESS)  # 20 minute search deadline
    customer_speaks("en")
    start(booking_id)
    ref = ref_of(booking_id)
    if asks:
        [answer] = sms(client, RECIPIENT, "parcel kab aayega?")
        assert ref in answer
    freeze_at(20 * 60 + 1)
    release_scheduled(timedelta(minutes=21))
    run_jobs_expecting_refund(booking_id)
    assert booking_status(booking_id) == "failed"
    return booking_id, ref


def test_a_recipient_told_of_the_parcel_hears_it_will_not_come(client, live,
                                                                frozen):  # noqa: F811
    _, ref = _nobody_takes_it(client, asks=True)
    [told] = bodies_to(RECIPIENT)  # her question was answered inline (TwiML)
    assert told == i18n.t("dispatch.recipient_no_rider_no_code", "en", ref=ref)
    assert "code" not in told


def test_a_recipient_never_told_of_it_hears_nothing(client, live, frozen):  # noqa: F811
    _nobody_takes_it(client, asks=False)
    assert bodies_to(RECIPIENT) == []
