"""Review r10: a partner's life from sign-up to leaving (sign-up by CLI and API, vehicles,
duty across SMS and the app, home Point). Each test asserts what a partner, an operator or
the README expects, and failed on the code it was written against (the docstrings say how).

Set-ups are those of tests/test_dispatch.py and tests/test_admin.py: real PostgreSQL,
Redis, RQ and the signed SMS webhook; time frozen through core.clock.
"""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import select, text

from core import i18n
from core.adapters.db import autocommit, transaction
from core.adapters.models import PartnerProfile, Person, Point
from core.config import get_settings
from core.domain import dispatch as rules
from core.domain.errors import DomainError
from core.domain.pricing import SizeBucket, VehicleType, WeightBucket
from core.services import admin, dispatch
from tests.test_admin import LAXMIPUR as ADD_LAXMIPUR
from tests.test_admin import run
from tests.test_api import API, sign_in
from tests.test_dispatch import (
    LAXMIPUR,
    frozen,  # noqa: F401  (fixture)
    legs_of,
    make_partner,
    make_point,
    offers,
    paid_booking,
    sms,
    start,
)

pytestmark = pytest.mark.db

OPERATOR = "+919812310001"
NEAR_KM = 3
BAG = rules.Load(SizeBucket.BAG, WeightBucket.W5, 0)


def _profile(pid: int) -> PartnerProfile:
    with transaction() as s:
        p = s.get(PartnerProfile, pid)
        assert p is not None
        s.expunge(p)
        return p


def _near(at: tuple[float, float]) -> list[int]:
    """The partners dispatch finds within NEAR_KM of ``at`` for a bag of 5 kg."""
    with transaction() as s:
        return [r.candidate.partner_id for r in dispatch.find_candidates(s, *at, BAG, NEAR_KM)]


# --- 1. STOP, then a yes naming the job: back on duty and holding a job ------------------


@pytest.mark.parametrize("channel", ["sms", "app"])
def test_a_partner_who_stopped_our_sms_cannot_take_a_job_by_naming_it(
        client, live, frozen, channel):  # noqa: F811
    """Ramesh works by SMS alone (no app on his profile) and is offered a job; he texts
    STOP. That puts him off duty (partner_sms._opt_out_or_in) and closes his offer as
    OFF does, and set_duty refuses his ON from then on (DUTY_SMS_STOPPED: Twilio refuses
    every SMS to him until START, so no job message could reach him). But a yes naming
    the job ("1 <job>" by SMS, or Accept in the app) went through dispatch.accept, which
    takes an offer closed by going off "in time" and sets ``on_duty = True`` ("taking a
    job means working") without set_duty's check: he held the job and was on duty again,
    the pickup phone in an answer Twilio will not deliver, the customer told a rider is
    coming. Expected: refused as his ON is (nothing taken, still off duty)."""
    pid, phone = make_partner("Ramesh", LAXMIPUR, lang="en")
    booking = paid_booking()
    start(booking)
    leg = legs_of(booking)[0]
    assert [o.partner_id for o in offers(leg.id)] == [pid]
    headers = sign_in(client, phone) if channel == "app" else None
    assert sms(client, phone, "STOP") == []
    assert _profile(pid).on_duty is False
    if channel == "sms":
        sms(client, phone, f"1 {leg.id}")
    else:
        # The app's profile says why he cannot work, in the code his ON is refused with
        # (README: "the codes an ON is refused with"), not "payable" with no reason.
        on = client.put(f"{API}/partners/me/duty", headers=headers, json={"on_duty": True})
        assert on.status_code == 403, on.get_json()
        me = client.get(f"{API}/partners/me", headers=headers).get_json()
        assert (me["payable"], me["not_payable_reason"]) == (
            False, on.get_json()["error"]["code"]), me
        (offer,) = offers(leg.id)
        r = client.post(f"{API}/offers/{offer.id}/accept", headers=headers)
        assert r.status_code == 403, r.get_json()
        assert r.get_json()["error"]["code"] == on.get_json()["error"]["code"]
    leg = legs_of(booking)[0]
    assert leg.partner_id != pid, "a partner who stopped our SMS took the job"
    assert _profile(pid).on_duty is False


# --- 2. The CLI keeps what the API cleans from a partner's name --------------------------


def test_add_partner_by_the_cli_keeps_the_name_as_the_api_keeps_it(client, capsys):
    """README: `add-partner` or `POST /api/v1/ops/partners` "with the same fields". The
    API's name is ShownText (core.domain.text.visible: control characters and invisible
    format marks go, since "a right-to-left override turns the rest of an SMS around"),
    but admin.add_partner, which the CLI calls directly, only collapses spaces: a name
    pasted with a U+202E from a spreadsheet was kept, and customers' "<name> is coming"
    messages carry it. A name of invisible characters alone, refused by the API (422), was
    signed up by the CLI. Expected: the CLI keeps the name the API keeps."""
    assert run(capsys, *ADD_LAXMIPUR)[0] == 0
    assert run(capsys, "add-operator", "--phone", OPERATOR)[0] == 0
    ops = sign_in(client, OPERATOR)
    pasted = "Raju\u202e Kumar\u200b"
    body = {"phone": "+919812310002", "name": pasted, "language": "hi",
            "vehicle": "bicycle", "payload_kg": 20, "point": "Laxmipur"}
    r = client.post(f"{API}/ops/partners", headers=ops, json=body)
    assert r.status_code == 201, r.get_json()
    code, out, err = run(capsys, "add-partner", "--phone", "+919812310003", "--name", pasted,
                         "--language", "hi", "--vehicle", "bicycle", "--payload-kg", "20",
                         "--point", "Laxmipur")
    assert code == 0, err
    with transaction() as s:
        by_api, by_cli = (s.scalar(select(Person).where(Person.phone == phone))
                          for phone in ("+919812310002", "+919812310003"))
        assert by_cli.partner.first_name == by_api.partner.first_name
        assert by_cli.name == by_api.name
    invisible = "\u200b\u202e"
    r = client.post(f"{API}/ops/partners", headers=ops,
                    json={**body, "phone": "+919812310004", "name": invisible})
    assert r.status_code == 422, r.get_json()
    code, _, _ = run(capsys, "add-partner", "--phone", "+919812310005", "--name", invisible,
                     "--language", "hi", "--vehicle", "bicycle", "--payload-kg", "20",
                     "--point", "Laxmipur")
    assert code == 2, "the CLI signed up a partner whose name nobody can read"


# --- 3. A payload no parcel fits --------------------------------------------------------


def test_a_vehicle_payload_too_small_for_any_parcel_is_refused_at_sign_up(client, capsys):
    """admin._checked takes a payload of 1 kg up to the type's most, but dispatch fits a
    parcel by its weight band's heaviest (core.domain.dispatch._fits: ``weight.max_grams
    <= payload_kg * 1000``), and the lightest band holds up to 5 kg. A bicycle signed up
    with 4 kg (its basket, as the rider said) can never be offered any parcel: ON
    succeeds, and he waits for offers that cannot come, with no word to him or to ops.
    Expected: refused at sign-up (422, the payload field) as a payload above the type's
    is."""
    lightest = min(WeightBucket, key=lambda w: w.rank)
    too_small = lightest.max_grams // 1000 - 1
    facts = rules.VehicleFacts(VehicleType.BICYCLE.value, too_small, SizeBucket.BOX.value,
                               True)
    assert not any(rules.vehicle_fits(facts, rules.Load(size, weight))
                   for size in SizeBucket for weight in WeightBucket)  # carries nothing
    assert run(capsys, *ADD_LAXMIPUR)[0] == 0
    assert run(capsys, "add-operator", "--phone", OPERATOR)[0] == 0
    ops = sign_in(client, OPERATOR)
    r = client.post(f"{API}/ops/partners", headers=ops, json={
        "phone": "+919812310006", "name": "Lata", "language": "mr", "vehicle": "bicycle",
        "payload_kg": too_small, "point": "Laxmipur"})
    assert r.status_code == 422, r.get_json()
    assert r.get_json()["error"]["field"] == "payload_kg"


# --- 4. ON at a closed home Point --------------------------------------------------------


def test_on_duty_with_a_closed_home_point_does_not_promise_offers_that_cannot_come(
        client, live, frozen):  # noqa: F811
    """Ops close Ramesh's village Point (he serves no other): README, he "keeps it as home
    but is placed at another active Point they serve, else at none" until ops move him.
    He texts ON and is answered dispatch.duty_on, "You are ON duty.
    Job offers will come by SMS", and STATUS says he is on duty: no search can find him
    (_HOME_POSITIONS places him nowhere), so he waits at home for offers that never come,
    and nobody tells him to call ops. Expected: either he is found near his home, or his
    ON is not answered with that promise."""
    home = make_point("Laxmipur", *LAXMIPUR)
    pid, phone = make_partner("Ramesh", LAXMIPUR, lang="en", on_duty=False, point_id=home)
    with transaction() as s:
        admin.close_point(s, home, actor="test")
    (answer,) = sms(client, phone, "ON")
    promised = i18n.t("dispatch.duty_on", "en")
    found = pid in _near(LAXMIPUR)
    assert found or answer != promised, (answer, _profile(pid).on_duty)
    # What he hears instead tells him whom to call; and STATUS agrees with it (he is not
    # told he is on duty while nothing can find him).
    assert get_settings().ops_phone in answer, answer
    (status,) = sms(client, phone, "STATUS")
    assert status != i18n.t("dispatch.status_none_on", "en"), status


def test_status_of_a_partner_on_duty_when_his_point_closes_says_to_call_ops(
        client, live, frozen):  # noqa: F811
    """Ramesh is on duty (SMS only) when ops close his Point, the only one he serves:
    nothing can find him from then on, as for an ON after the close (above). STATUS
    answered "No job now. You are ON duty.": he waited for offers that cannot come.
    Expected: STATUS tells him what an ON would (his Point is closed: call ops)."""
    home = make_point("Laxmipur", *LAXMIPUR)
    pid, phone = make_partner("Ramesh", LAXMIPUR, lang="en", point_id=home)
    assert pid in _near(LAXMIPUR)
    with transaction() as s:
        admin.close_point(s, home, actor="test")
    assert pid not in _near(LAXMIPUR)
    (status,) = sms(client, phone, "STATUS")
    assert status != i18n.t("dispatch.status_none_on", "en"), status
    assert get_settings().ops_phone in status, status


# --- 5. A home Point moved to while another operator closes it ----------------------------


def test_a_home_point_set_while_it_is_being_closed_is_refused_not_left_closed(
        client, live, frozen):  # noqa: F811
    """set_home_point finds the Point with find_point, a plain read, while close_point
    holds the Point's row lock from its check to its commit. Ops move Ramesh to Bettiah
    just as another operator closes Bettiah: the move read "active", waited only at its
    own write (the foreign key), then committed after the close. Ramesh's home is a closed
    Point, the move said "offered jobs near it now", and the close's message and its audit
    entry (home_partner_ids) do not name him: nobody learns he must be moved again.
    Expected: the move waits for the close and is refused (unknown_point), his home
    unchanged."""
    old = make_point("Laxmipur", *LAXMIPUR)
    target = make_point("Bettiah", 26.80228, 84.51522)
    pid, _ = make_partner("Ramesh", LAXMIPUR, lang="en", point_id=old)
    outcome: list[BaseException | None] = []

    def move() -> None:
        try:
            with transaction() as s:
                admin.set_home_point(s, pid, target, actor="ops:2")
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 (the test looks at it)
            outcome.append(exc)

    with transaction() as closing:
        admin.close_point(closing, target, actor="ops:1")  # flushed, lock held
        racer = threading.Thread(target=move, daemon=True)
        racer.start()
        until = time.monotonic() + 30
        with autocommit() as watch:
            while racer.is_alive() and not watch.scalar(text(
                    "SELECT EXISTS (SELECT FROM pg_stat_activity WHERE datname = "
                    "current_database() AND wait_event_type = 'Lock')")):
                assert time.monotonic() < until, outcome
                time.sleep(0.01)  # a poll interval: the condition above decides
    racer.join(30)
    assert not racer.is_alive()
    home = _profile(pid).home_point_id
    with transaction() as s:
        active = s.get(Point, home).active
    assert active, f"partner {pid}'s home is Point {home}, closed ({outcome})"
    assert len(outcome) == 1 and isinstance(outcome[0], DomainError), outcome


# --- 6. A customer who becomes a partner loses their own bookings in the app ------------------


def test_a_customer_signed_up_as_a_partner_still_sees_and_cancels_her_own_booking(client):
    """Sunita booked a parcel in the app; ops then sign her up to carry (POST
    /api/v1/ops/partners: "a customer becomes a partner", admin.add_partner), which ends
    her sessions. Signed in again her role is partner, and every booking route is for the
    role customer (core/api/customer.py CUSTOMER, CUSTOMER_OR_OPS): her own booking, still
    waiting for payment, answers 403, her list too, and she cannot cancel it in the app.
    Partners who send parcels are a case the service knows (the partner erasure "a partner
    who also sent parcels loses those bookings' details too"; dispatch never offers a
    partner her own parcel). Expected: her bookings stay hers to see and cancel."""
    from core.services.seed import OPS_PERSON, seed_demo
    from tests.test_ops_find import book

    seed_demo()
    sunita = "+919812310007"
    ref = book(client, sign_in(client, sunita), "+919812310008")
    ops = sign_in(client, OPS_PERSON[1])
    r = client.post(f"{API}/ops/partners", headers=ops, json={
        "phone": sunita, "name": "Sunita Devi", "language": "hi", "vehicle": "bicycle",
        "payload_kg": 20, "point": "Laxmipur"})
    assert r.status_code == 201, r.get_json()
    again = sign_in(client, sunita)
    assert client.get(f"{API}/partners/me", headers=again).status_code == 200  # a partner
    r = client.get(f"{API}/bookings/{ref}", headers=again)
    assert r.status_code == 200, r.get_json()
    listed = client.get(f"{API}/bookings", headers=again).get_json()
    assert [b["reference"] for b in listed["items"]] == [ref], listed
    r = client.post(f"{API}/bookings/{ref}/cancel", headers=again)
    assert r.status_code == 200, r.get_json()
