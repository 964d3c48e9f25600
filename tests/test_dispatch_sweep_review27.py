"""The dispatch sweep takes each item on its own, and a recipient told of her parcel only
by our SMS answer hears it is late with no word of a code (review 27, fixer f12)."""

from __future__ import annotations

import pytest

from core import i18n
from core.adapters.db import transaction
from core.adapters.models import Booking
from core.services import dispatch
from tests.conftest import run_jobs
from tests.test_dispatch import (
    CUSTOMER,
    LAXMIPUR,
    RECIPIENT,
    bodies_to,
    freeze_at,
    frozen,  # noqa: F401  (fixture)
    last_code,
    legs_of,
    make_partner,
    make_point,
    offers,
    paid_booking,
    sms,
    start,
)

pytestmark = pytest.mark.db


def _ref(booking_id: int) -> str:
    with transaction() as s:
        return s.get(Booking, booking_id).reference


def test_a_late_pickup_whose_reminder_fails_leaves_the_next_reminded_and_fails_the_run(
        client, live, frozen, monkeypatch):  # noqa: F811
    """Two jobs taken and not picked up in the window; chasing the first raises (a row
    the code cannot handle). The second rider is still reminded in the same run, and
    the run still fails (RQ records it) with that first error; the next run, the first
    job's trouble gone, reminds it too."""
    ramesh, r_phone = make_partner("Ramesh", LAXMIPUR, max_active_legs=1)
    suresh, s_phone = make_partner("Suresh", (26.895, 84.49))
    first = paid_booking()
    start(first)
    assert [o.partner_id for o in offers(legs_of(first)[0].id)] == [ramesh]
    sms(client, r_phone, "1")
    second = paid_booking()
    start(second)
    assert [o.partner_id for o in offers(legs_of(second)[0].id)] == [suresh]
    sms(client, s_phone, "1")
    bad_leg, good_leg = legs_of(first)[0].id, legs_of(second)[0].id
    assert bad_leg < good_leg  # the sweep takes the failing one first
    real = dispatch.pickup_late

    def failing(leg_id: int) -> str:
        if leg_id == bad_leg:
            raise RuntimeError("this leg cannot be chased now")
        return real(leg_id)

    monkeypatch.setattr(dispatch, "pickup_late", failing)
    freeze_at(61 * 60)  # past the 60-minute pickup window
    with pytest.raises(RuntimeError, match="cannot be chased"):
        dispatch.sweep()
    reminder = i18n.t("dispatch.pickup_late", "hi", job=str(good_leg))
    assert reminder in bodies_to(s_phone), "one failing job kept the next unchased"
    assert i18n.t("dispatch.pickup_late", "hi", job=str(bad_leg)) not in bodies_to(r_phone)

    monkeypatch.setattr(dispatch, "pickup_late", real)
    freeze_at(62 * 60)
    assert dispatch.sweep()["late_pickups"] == 1  # the first one, once; not the second again
    assert i18n.t("dispatch.pickup_late", "hi", job=str(bad_leg)) in bodies_to(r_phone)
    assert bodies_to(s_phone).count(reminder) == 1


def test_a_recipient_told_only_by_our_sms_answer_hears_it_is_late_without_a_code(
        client, live, frozen):  # noqa: F811
    """A relay whose last leg nobody took: no delivery code went to Sita. We answered her
    SMS (the parcel is on its way, give the rider the code we will send). Late, she
    hears so in words that do not ask her to keep ready a code she never had."""
    from tests.test_dispatch_relay import A, B, D, P
    from tests.test_relay_review import PICK_MARK

    point_a = make_point("Point A", *A)
    make_point("Point B", *B)
    _, r_phone = make_partner("Ramesh", A, point_id=point_a, max_active_legs=1)
    booking_id = paid_booking(pickup=P, drop=D)
    start(booking_id)
    sms(client, r_phone, "1")
    sms(client, r_phone, f"PICK {last_code(CUSTOMER, PICK_MARK)}")
    ref = _ref(booking_id)
    [answer] = sms(client, RECIPIENT, "parcel kab aayega?")
    assert answer == i18n.t("sms.recipient_on_the_way_no_code", "hi", ref=ref)
    freeze_at(8 * 3600 + 60)
    assert dispatch.sweep()["late_deliveries"] == 1
    run_jobs()
    no_code = i18n.t("dispatch.recipient_delivery_late_no_code", "hi", ref=ref)
    assert bodies_to(RECIPIENT) == [no_code]
    # The wording she would have had with a code asks for it; hers does not.
    with_code = i18n.t("dispatch.recipient_delivery_late", "hi", ref=ref)
    assert no_code != with_code and no_code in with_code
    freeze_at(8 * 3600 + 120)
    dispatch.sweep()
    run_jobs()
    assert bodies_to(RECIPIENT) == [no_code]  # once
