"""Session 39: Twilio's refusals of the rider's number itself count as his phone's.

An offer SMS refused because his number is not a valid one (21211), cannot be routed
(21612), cannot take SMS (21614) or is a landline (21635) never reached him, for a reason
of his number, not of our side: UNREACHED_OFFERS_OFF such offers in a row put him OFF as
30003 does (HANDSET_SMS_ERRORS). Our side's failures still put nobody OFF
(test_dispatch_rnew5_s38)."""
from __future__ import annotations

import pytest

from core.adapters.db import transaction
from core.adapters.models import PartnerProfile
from core.domain import dispatch as rules
from core.services import dispatch
from tests.test_dispatch import (  # noqa: F401  (frozen: fixture)
    LAXMIPUR,
    freeze_at,
    frozen,
    legs_of,
    make_partner,
    offers,
    paid_booking,
    sms,
    start,
)
from tests.test_notice_review import cannot_deliver

pytestmark = pytest.mark.db
FAR = (26.90, 84.49)


@pytest.mark.parametrize("code", ["21211", "21612", "21614", "21635"])
def test_a_number_twilio_refuses_puts_its_rider_off(client, live, frozen, code):  # noqa: F811
    near, near_phone = make_partner("Near", LAXMIPUR, lang="en")
    far, far_phone = make_partner("Far", FAR, lang="en", max_active_legs=50)
    cannot_deliver(near_phone, "failed", code)
    for k in range(dispatch.UNREACHED_OFFERS_OFF):
        freeze_at(k * 300)
        b = paid_booking()
        start(b)
        leg = legs_of(b)[0].id
        first = offers(leg)[0]
        assert (first.partner_id, first.status) == (near, rules.OfferStatus.WITHDRAWN.value)
        assert sms(client, far_phone, f"1 {leg}")
    with transaction() as s:
        assert not s.get(PartnerProfile, near).on_duty, f"{code}: still ON"
