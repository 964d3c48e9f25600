"""The partner app's REST API, more gaps: the rider's own profile, giving a job back, an
offer's countdown by the server's clock, a photo taken before the drop, and a photo
whose row was never committed."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

import pytest
from sqlalchemy import event, func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from core import clock, i18n
from core.adapters.db import transaction
from core.adapters.dispatch_models import PodPhoto
from core.adapters.models import Leg
from tests.test_api import sign_in
from tests.test_dispatch import (
    CUSTOMER,
    LAXMIPUR,
    RECIPIENT,
    freeze_at,
    frozen,  # noqa: F401  (fixture)
    last_code,
    legs_of,
    make_partner,
)
from tests.test_partner_app_review import JPEG, PICK_MARK, _app_partner, _offered

pytestmark = pytest.mark.db

API = "/api/v1"
OTHER_JPEG = b"\xff\xd8\xff\xe0" + b"\x02" * 2000


@pytest.fixture
def pod_dir(tmp_path, monkeypatch):
    from core.adapters import storage

    monkeypatch.setenv("POD_LOCAL_DIR", str(tmp_path))
    storage.reset()
    yield tmp_path
    storage.reset()


def _files(root) -> list:
    return sorted(p for p in root.rglob("*") if p.is_file())


def _taken(client, headers) -> tuple[int, int]:
    """A job offered to the app partner and accepted: (booking id, leg id)."""
    booking_id, leg_id, offer_id = _offered(client, headers)
    r = client.post(f"{API}/offers/{offer_id}/accept", headers=headers)
    assert r.status_code == 200, r.get_json()
    return booking_id, leg_id


def _picked(client, headers) -> tuple[int, int]:
    booking_id, leg_id = _taken(client, headers)
    r = client.post(f"{API}/legs/{leg_id}/pickup", headers=headers,
                    json={"otp": last_code(CUSTOMER, PICK_MARK)})
    assert r.status_code == 200, r.get_json()
    return booking_id, leg_id


def _photo(client, headers, leg_id: int, data: bytes = JPEG):
    return client.post(f"{API}/legs/{leg_id}/photo", data=data,
                       headers={**headers, "Content-Type": "image/jpeg"})


# --- 1. the rider's profile ------------------------------------------------------------------


def test_the_app_shows_the_rider_their_own_profile(client, live, frozen):  # noqa: F811
    """The app had no route for the rider's own profile: it could not show their name,
    vehicle, duty, KYC, or why they cannot go ON (not payable yet)."""
    _, _, headers = _app_partner(client, lang="ta")
    r = client.get(f"{API}/partners/me", headers=headers)
    assert r.status_code == 200, r.get_json()
    me = r.get_json()
    assert me["name"] == "Ramesh" and me["language"] == "ta"
    assert me["on_duty"] is True and me["kyc_status"] == "verified"
    assert me["payable"] is True and me["not_payable_reason"] is None
    assert me["rating"] == 4.5
    assert [(v["type"], v["payload_kg"]) for v in me["vehicles"]] == [("bicycle", 20)]
    masked = me["payout_account_masked"]
    assert masked.startswith("acc_") and "*" in masked  # the whole id is not shown
    with transaction() as s:
        from core.adapters.models import PartnerProfile

        account = s.scalar(select(PartnerProfile.payout_account_id).where(
            PartnerProfile.id == me["partner_id"]))
    assert account and account not in masked and masked.endswith(account[-4:])
    doc = client.get(f"{API}/openapi.json").get_json()
    assert "get" in doc["paths"]["/api/v1/partners/me"]


@pytest.mark.parametrize(("kyc", "account", "reason"), [
    ("pending", "acc_pending0001", "kyc_pending"),
    ("verified", None, "no_payout_account"),
    ("suspended", "acc_suspended01", "duty_blocked"),
])
def test_the_profile_says_why_the_rider_cannot_work(client, live, frozen,  # noqa: F811
                                                    kyc, account, reason):
    _, phone = make_partner("Sita", LAXMIPUR, kyc_status=kyc, payout_account=account,
                            on_duty=False, has_app=True)
    headers = sign_in(client, phone)
    me = client.get(f"{API}/partners/me", headers=headers).get_json()
    assert (me["payable"], me["not_payable_reason"]) == (False, reason), me
    assert me["payout_account_masked"] == (None if account is None
                                           else "acc_******" + account[-4:])
    # The same code the app gets when it tries to go ON.
    on = client.put(f"{API}/partners/me/duty", headers=headers, json={"on_duty": True})
    assert (on.status_code, on.get_json()["error"]["code"]) == (403, reason)


def test_the_profile_is_for_partners_only(client, live, frozen):  # noqa: F811
    headers = sign_in(client, CUSTOMER, role="customer")
    r = client.get(f"{API}/partners/me", headers=headers)
    assert r.status_code == 403 and r.get_json()["error"]["code"]


# --- 2. giving a job back ------------------------------------------------------------------


def test_the_app_gives_back_a_job_not_picked_up(client, live, frozen):  # noqa: F811
    """SMS partners give a job back with CANCEL <job>; the app had no way to: a rider who
    cannot go any more could only leave it to the pickup timer (the customer waiting)."""
    _, _, headers = _app_partner(client)
    booking_id, leg_id = _taken(client, headers)
    r = client.post(f"{API}/legs/{leg_id}/give-back", headers=headers)
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert body["result"] == "cancelled" and body["leg_id"] == leg_id
    assert body["message"] == i18n.t("dispatch.cancelled", "en", job=str(leg_id))
    leg = legs_of(booking_id)[0]
    assert leg.partner_id is None and leg.status == "offering"
    assert client.get(f"{API}/partners/me/jobs", headers=headers).get_json() == []
    # Sent again (the answer was lost on 2G): the same answer, nothing more changes.
    again = client.post(f"{API}/legs/{leg_id}/give-back", headers=headers)
    assert again.status_code == 200, again.get_json()
    assert again.get_json()["message"] == body["message"]
    assert legs_of(booking_id)[0].status == "offering"


def test_a_job_already_picked_up_cannot_be_given_back(client, live, frozen):  # noqa: F811
    _, _, headers = _app_partner(client)
    booking_id, leg_id = _picked(client, headers)
    r = client.post(f"{API}/legs/{leg_id}/give-back", headers=headers)
    assert (r.status_code, r.get_json()["error"]["code"]) == (409, "already_picked_up")
    assert legs_of(booking_id)[0].status == "picked_up"
    r = client.post(f"{API}/legs/{leg_id}/drop", headers=headers,
                    json={"otp": last_code(RECIPIENT)})
    assert r.status_code == 200, r.get_json()
    r = client.post(f"{API}/legs/{leg_id}/give-back", headers=headers)
    assert (r.status_code, r.get_json()["error"]["code"]) == (409, "already_delivered")


def test_giving_back_a_job_not_mine_is_404(client, live, frozen):  # noqa: F811
    _, _, headers = _app_partner(client)
    _, leg_id, _ = _offered(client, headers)  # offered, not taken: not theirs yet
    for leg in (leg_id, 987654):
        r = client.post(f"{API}/legs/{leg}/give-back", headers=headers)
        assert (r.status_code, r.get_json()["error"]["code"]) == (404, "not_found")


# --- 3. the offer's countdown ------------------------------------------------------------


def test_an_offer_says_how_many_seconds_are_left_by_the_servers_clock(client, live,
                                                                      frozen):  # noqa: F811
    """Only an absolute expires_at: a phone whose clock is 3 minutes slow showed an
    offer as open long after it closed (or closed while it was open)."""
    _, _, headers = _app_partner(client)
    _offered(client, headers)
    (offer,) = client.get(f"{API}/partners/me/offers", headers=headers).get_json()
    left = (datetime.fromisoformat(offer["expires_at"]) - clock.now()).total_seconds()
    assert left > 10
    assert offer["expires_in_s"] == int(left)
    freeze_at(10)
    (later,) = client.get(f"{API}/partners/me/offers", headers=headers).get_json()
    assert later["expires_in_s"] == int(left) - 10


# --- 4. a photo before the drop ------------------------------------------------------------


def test_a_photo_before_the_drop_is_not_the_proof_of_delivery(client, live, frozen,  # noqa: F811
                                                               pod_dir):
    """The rider photographs the parcel at pickup; it became the leg's proof of delivery,
    which says the parcel reached the door. Kept as a pickup photo now; the photo after
    the drop is the proof."""
    _, _, headers = _app_partner(client)
    booking_id, leg_id = _picked(client, headers)
    r = _photo(client, headers, leg_id)
    assert r.status_code == 201, r.get_json()
    assert r.get_json()["proof_of_delivery"] is False
    assert legs_of(booking_id)[0].pod_photo_url is None
    r = client.post(f"{API}/legs/{leg_id}/drop", headers=headers,
                    json={"otp": last_code(RECIPIENT)})
    assert r.status_code == 200, r.get_json()
    r = _photo(client, headers, leg_id, OTHER_JPEG)
    assert r.status_code == 201 and r.get_json()["proof_of_delivery"] is True
    with transaction() as s:
        rows = {p.sha256: p.storage_uri for p in s.scalars(
            select(PodPhoto).where(PodPhoto.leg_id == leg_id))}
        proof = s.get(Leg, leg_id).pod_photo_url
    assert len(rows) == 2 and proof in rows.values()
    assert "/pickup/" not in proof and sum("/pickup/" in u for u in rows.values()) == 1
    # The pickup photo sent again after the drop (the app's retry queue) stays what it was.
    again = _photo(client, headers, leg_id)
    assert again.status_code == 201 and again.get_json()["proof_of_delivery"] is False
    assert legs_of(booking_id)[0].pod_photo_url == proof


def test_a_photo_before_pickup_is_refused(client, live, frozen, pod_dir):  # noqa: F811
    _, _, headers = _app_partner(client)
    _, leg_id = _taken(client, headers)
    r = _photo(client, headers, leg_id)
    assert (r.status_code, r.get_json()["error"]["code"]) == (422, "pod_not_now")
    assert _files(pod_dir) == []


# --- 5. a photo whose row was not committed -------------------------------------------------


@contextmanager
def _commit_fails_with_a_photo() -> Iterator[list[int]]:
    """Every commit of a session holding a photo row fails, as a connection lost at
    COMMIT does."""
    failed: list[int] = []

    def seen(session: Session, instance: object) -> None:
        # Marked when added or loaded: the identity map holds rows weakly, and a flushed
        # row nobody refers to any more may be gone from it by the commit.
        if isinstance(instance, PodPhoto):
            session.info["pod_photo"] = True

    def fail(session: Session) -> None:
        if session.info.pop("pod_photo", False):
            failed.append(1)
            raise OperationalError("COMMIT", {}, Exception("server closed the connection"))

    hooks = (("after_attach", seen), ("loaded_as_persistent", seen), ("before_commit", fail))
    for name, fn in hooks:
        event.listen(Session, name, fn)
    try:
        yield failed
    finally:
        for name, fn in hooks:
            event.remove(Session, name, fn)


def _dropped(client, headers) -> tuple[int, int]:
    booking_id, leg_id = _picked(client, headers)
    r = client.post(f"{API}/legs/{leg_id}/drop", headers=headers,
                    json={"otp": last_code(RECIPIENT)})
    assert r.status_code == 200, r.get_json()
    return booking_id, leg_id


def test_a_photo_whose_commit_fails_leaves_no_file(client, live, frozen,  # noqa: F811
                                                   pod_dir):
    """The photo was written to the store, then the database commit failed: the file
    stayed, named by no row (and never deleted, not even by a partner's erasure)."""
    _, _, headers = _app_partner(client)
    booking_id, leg_id = _dropped(client, headers)
    with _commit_fails_with_a_photo() as failed:
        r = _photo(client, headers, leg_id)
    assert failed, "the commit was not made to fail"
    assert r.status_code == 503, r.get_json()
    assert r.get_json()["error"]["code"] == "database_unavailable"
    with transaction() as s:
        assert s.scalar(select(func.count()).select_from(PodPhoto)) == 0
    assert legs_of(booking_id)[0].pod_photo_url is None
    assert _files(pod_dir) == []
    # The app sends it again: kept.
    assert _photo(client, headers, leg_id).status_code == 201
    assert len(_files(pod_dir)) == 1


def test_a_failed_retry_keeps_the_file_a_committed_row_names(client, live, frozen,  # noqa: F811
                                                             pod_dir):
    _, _, headers = _app_partner(client)
    booking_id, leg_id = _dropped(client, headers)
    assert _photo(client, headers, leg_id).status_code == 201
    (kept,) = _files(pod_dir)
    with _commit_fails_with_a_photo() as failed:
        r = _photo(client, headers, leg_id)  # the same photo: its row is read, not written
    assert failed and r.status_code == 503
    assert _files(pod_dir) == [kept]
    assert legs_of(booking_id)[0].pod_photo_url is not None
