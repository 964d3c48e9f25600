"""A lost drop code must not hand back the wrong tries made
against the pickup code, which nobody lost.

The drop code goes out when the rider accepts (the leg still assigned), so Twilio's
report that the recipient's SMS failed often comes before the pickup. drop_code_lost then
sets ``leg.otp_failures`` (one counter for the leg, whichever code is tried) to the
drop code's fresh tries: the wrong PICK codes the rider sent against the pickup code,
which still works, are forgotten, and the same code can be guessed again from zero.
Before 45fe702 the counter was kept as it was.
"""

from __future__ import annotations

import pytest

from core import i18n
from core.adapters.db import transaction
from core.adapters.models import Leg
from core.adapters.queue import QUEUES
from core.config import get_settings
from core.domain.booking import LegStatus
from core.services import dispatch
from tests.conftest import run_jobs
from tests.test_code_delivery import taken
from tests.test_dispatch import (
    CUSTOMER,
    RECIPIENT,
    bodies_to,
    frozen,  # noqa: F401  (fixture)
    paid_booking,
    sms,
)
from tests.test_notice_review import (
    cannot_deliver,
    codes_in,
    customer_speaks,
    leg_of,
    passed_on,
    recipient_code_row,
)

pytestmark = pytest.mark.db


def test_a_lost_drop_code_keeps_the_wrong_tries_against_the_pickup_code(
        client, live, frozen):  # noqa: F811
    """Ramesh sends four wrong PICK codes (one more locks the leg). Sita's drop-code SMS is
    then reported undelivered and a new drop code goes to the sender. The pickup code is
    the one he was guessing all along: his fifth wrong PICK must lock the leg."""
    cannot_deliver(RECIPIENT, "undelivered", "30003")
    booking_id = paid_booking()
    customer_speaks("en")
    rider = taken(client, booking_id, queues=QUEUES)  # Twilio's reports not in yet
    limit = dispatch.config().otp_max_failures
    job = str(leg_of(booking_id))
    pick = [c for b in bodies_to(CUSTOMER) if "at pickup" in b for c in codes_in([b])]
    wrong = [f"{(int(pick[-1]) + n) % 10000:04d}" for n in range(1, limit + 1)]
    for n, guess in enumerate(wrong[:-1]):
        assert sms(client, rider, f"PICK {guess}") == [
            i18n.t("dispatch.otp_wrong", "en", job=job, left=limit - 1 - n)]
    with transaction() as s:
        assert s.get(Leg, leg_of(booking_id)).otp_failures == limit - 1
    run_jobs()  # Twilio's late report: the recipient's drop code undelivered
    assert recipient_code_row(booking_id).status == "undelivered"
    assert len(passed_on(booking_id)) == 1  # a new drop code, to the sender to pass on
    with transaction() as s:
        leg = s.get(Leg, leg_of(booking_id))
        assert leg.status == LegStatus.ASSIGNED.value
        assert leg.otp_failures == limit - 1, (
            "losing the drop code wiped the wrong tries made against the pickup code")
    assert sms(client, rider, f"PICK {wrong[-1]}") == [
        i18n.t("dispatch.otp_locked", "en", job=job, ops_phone=get_settings().ops_phone)]
    with transaction() as s:
        assert s.get(Leg, leg_of(booking_id)).status == LegStatus.LOCKED.value
