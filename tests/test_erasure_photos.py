"""Proof-of-delivery photos under erasure and retention, and how an erasure finds stored
answers.

A POD photo shows the parcel at the recipient's door: it is personal data of the booking's
sender and recipient, not of the partner who took it. Data comes from the real flows
(delivered_booking: the REST API, the sandbox payment link, the partner app's photo
upload); file deletions run through RQ; time moves by core.clock.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from rq.registry import ScheduledJobRegistry
from sqlalchemy import event, func, select, text

from core import clock
from core.adapters import db, storage
from core.adapters.db import transaction
from core.adapters.dispatch_models import PodPhoto, PodPhotoDeletion
from core.adapters.models import Leg, PartnerProfile, Person
from core.adapters.queue import queue
from core.services import retention
from core.services.seed import OPS_PERSON, seed_demo
from tests.conftest import run_jobs
from tests.test_api import API, sign_in
from tests.test_retention import (
    CUSTOMER,
    RAMESH,
    RECIPIENT,
    delivered_booking,
    erase,
    erase_partner,
    person_id,
    run_retention_job,
)

pytestmark = pytest.mark.db


@pytest.fixture(autouse=True)
def _clock():
    yield
    clock.freeze(None)


@pytest.fixture
def pod_dir(tmp_path, monkeypatch):
    """Proof-of-delivery photos in a folder of this test's own."""
    monkeypatch.setenv("POD_LOCAL_DIR", str(tmp_path / "pod"))
    storage.reset()
    yield tmp_path / "pod"
    storage.reset()


def photo_files(pod_dir: Path) -> list[Path]:
    return [p for p in pod_dir.rglob("*") if p.is_file()] if pod_dir.exists() else []


def photo_rows() -> tuple[int, int, int]:
    """(photo rows, legs pointing at a photo, files waiting to be deleted)"""
    with transaction() as s:
        return (s.scalar(select(func.count()).select_from(PodPhoto)),
                s.scalar(select(func.count()).select_from(Leg).where(
                    Leg.pod_photo_url.is_not(None))),
                s.scalar(select(func.count()).select_from(PodPhotoDeletion)))


def delivered_with_photo(client, pod_dir: Path) -> tuple[dict[str, str], str, int, Path]:
    """A delivered booking with two photos Ramesh sent (delivered_booking's, and one more
    of the door after the drop, which is the leg's proof now). (ops, reference, leg, the
    last photo's file)"""
    seed_demo()
    ops = sign_in(client, OPS_PERSON[1])
    customer = sign_in(client, CUSTOMER)
    ref, leg_id = delivered_booking(client, customer)
    (first,) = photo_files(pod_dir)
    at_door = client.post(f"{API}/legs/{leg_id}/photo", data=b"\xff\xd8\xff\xe0at the door",
                          headers={**sign_in(client, RAMESH), "Content-Type": "image/jpeg"})
    assert at_door.status_code == 201, at_door.get_json()
    (photo,) = [p for p in photo_files(pod_dir) if p != first]
    assert photo_rows() == (2, 1, 0)
    return ops, ref, leg_id, photo


# --- erasure on request --------------------------------------------------------------------


def test_erasing_the_sender_deletes_the_photos_of_their_bookings(client, live, pod_dir):
    ops, _, _, photo = delivered_with_photo(client, pod_dir)
    pid = person_id(CUSTOMER)
    r = erase(client, ops, pid)
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["counts"]["photos"] == 2
    # The database first: no row, no leg names a photo; the files wait for the job.
    assert photo_rows() == (0, 0, 2) and len(photo_files(pod_dir)) == 2
    run_jobs(("default",))
    assert not photo.exists() and photo_files(pod_dir) == []
    assert photo_rows() == (0, 0, 0)
    # Erasing again finds nothing left.
    again = erase(client, ops, pid)
    assert again.status_code == 200 and not any(again.get_json()["counts"].values())


def test_erasing_the_recipient_deletes_the_photo_of_their_door(client, live, pod_dir):
    ops, _, _, photo = delivered_with_photo(client, pod_dir)
    sign_in(client, RECIPIENT)  # the recipient is a person of ours too
    r = erase(client, ops, person_id(RECIPIENT))
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["counts"]["photos"] == 2
    run_jobs(("default",))
    assert photo_files(pod_dir) == [] and photo_rows() == (0, 0, 0)


def test_a_store_error_keeps_the_erasure_and_the_file_is_deleted_later(client, live, pod_dir,
                                                                       monkeypatch):
    ops, _, _, photo = delivered_with_photo(client, pod_dir)
    pid = person_id(CUSTOMER)

    def store_down(self, key):
        raise OSError("disk away")

    monkeypatch.setattr(storage.LocalStore, "delete", store_down)
    r = erase(client, ops, pid)
    assert r.status_code == 200, r.get_json()
    run_jobs(("default",))  # the deletion job fails: RQ schedules it again
    with transaction() as s:
        assert s.get(Person, pid).phone is None  # the erasure stands
    assert photo.exists() and photo_rows() == (0, 0, 2)
    assert [j for j in ScheduledJobRegistry(queue=queue("default")).get_job_ids()
            if j == retention.photo_job_id(pid)], "no retry was scheduled"

    monkeypatch.undo()
    monkeypatch.setenv("POD_LOCAL_DIR", str(pod_dir))
    storage.reset()
    # The retry (or, at the latest, the night's run) deletes it.
    q = queue("default")
    ScheduledJobRegistry(queue=q).remove(retention.photo_job_id(pid))
    q._enqueue_job(q.fetch_job(retention.photo_job_id(pid)))
    assert run_jobs(("default",)) == 1
    assert photo_files(pod_dir) == [] and photo_rows() == (0, 0, 0)


def test_a_file_already_gone_is_no_error(client, live, pod_dir):
    ops, _, _, photo = delivered_with_photo(client, pod_dir)
    photo.unlink()
    assert erase(client, ops, person_id(CUSTOMER)).status_code == 200
    run_jobs(("default",))
    assert photo_rows() == (0, 0, 0)


def test_erasing_the_partner_keeps_the_photos_of_customers_parcels(client, live, pod_dir):
    """The partner took the photo; it shows the customer's parcel at the recipient's door.
    It is the booking's proof of delivery: it stays with the booking, for its sender and
    recipient's erasure or the retention window."""
    ops, _, leg_id, photo = delivered_with_photo(client, pod_dir)
    with transaction() as s:
        partner_id = s.scalar(select(PartnerProfile.id).where(
            PartnerProfile.person_id == person_id(RAMESH)))
    assert client.put(f"{API}/ops/partners/{partner_id}/kyc", headers=ops,
                      json={"status": "suspended", "note": "asked to leave"}).status_code == 200
    r = erase_partner(client, ops, partner_id)
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["counts"].get("photos", 0) == 0
    run_jobs(("default",))
    assert photo.exists() and len(photo_files(pod_dir)) == 2 and photo_rows() == (2, 1, 0)
    with transaction() as s:
        assert s.get(Leg, leg_id).pod_photo_url is not None


# --- the daily job -------------------------------------------------------------------------


def test_the_daily_job_deletes_photos_older_than_the_message_window(client, live, pod_dir):
    delivered_with_photo(client, pod_dir)
    start = datetime.now(UTC)
    clock.freeze(start + timedelta(days=retention.message_days() - 1))
    done = run_retention_job()
    assert done["pod_photos"] == 0 and photo_rows() == (2, 1, 0)

    clock.freeze(start + timedelta(days=retention.message_days() + 1))
    done = run_retention_job()
    assert done["pod_photos"] == 2 and done["photo_files"] == 2 and done["unfinished"] == 0
    assert photo_files(pod_dir) == [] and photo_rows() == (0, 0, 0)
    again = run_retention_job()
    assert not any(again.values()), again


def test_the_daily_job_retries_files_a_store_error_left(client, live, pod_dir, monkeypatch):
    ops, _, _, photo = delivered_with_photo(client, pod_dir)
    monkeypatch.setattr(storage.LocalStore, "delete",
                        lambda self, key: (_ for _ in ()).throw(OSError("disk away")))
    assert erase(client, ops, person_id(CUSTOMER)).status_code == 200
    monkeypatch.undo()
    monkeypatch.setenv("POD_LOCAL_DIR", str(pod_dir))
    storage.reset()
    # The job's tries are lost (Redis flushed, say): the night's run still finds the row.
    queue("default").empty()
    done = run_retention_job()
    assert done["photo_files"] == 2
    assert photo_files(pod_dir) == [] and photo_rows() == (0, 0, 0)


# --- the store's delete ----------------------------------------------------------------------


def test_the_s3_store_deletes_by_key_and_refuses_a_bucket_not_its_own():
    import boto3
    from botocore.stub import Stubber

    from core.domain.errors import Unavailable

    client = boto3.client("s3", region_name="auto", endpoint_url="https://r2.example.com",
                          aws_access_key_id="k", aws_secret_access_key="s")
    store = storage.S3Store("pods", client)
    with Stubber(client) as stub:
        stub.add_response("delete_object", {}, {"Bucket": "pods", "Key": "pod/r/leg-2/a.png"})
        storage.delete_photo("s3://pods/pod/r/leg-2/a.png", store=store)
        stub.add_client_error("delete_object", "InternalError", http_status_code=500)
        with pytest.raises(Unavailable):  # the store away: kept to try again
            storage.delete_photo("s3://pods/pod/r/leg-2/b.png", store=store)
        stub.assert_no_pending_responses()
    for uri in ("s3://other/pod/r/leg-2/a.png", "local://pod/r/leg-2/a.png"):
        with pytest.raises(Unavailable):  # not this store's: never a wrong delete
            storage.delete_photo(uri, store=store)


# --- how an erasure finds the stored answers -----------------------------------------------


def test_erasure_reads_only_the_stored_answers_not_every_webhook(client):
    """inbound_events keeps a row for every webhook for good (a very late retry is still
    not handled twice); only the SMS and call answers of the message window hold text. The
    erasure looks for a number in those, by an index, not through every row."""
    seed_demo()
    with db.engine().begin() as conn:
        conn.execute(text(
            "INSERT INTO inbound_events (provider, external_id, channel, received_at) "
            "SELECT 'twilio', 'SM' || g, 'whatsapp', now() FROM generate_series(1, 20000) g"))
        conn.execute(text(
            "INSERT INTO inbound_events (provider, external_id, channel, response_body) "
            "SELECT 'twilio', 'CA' || g, 'voice', 'your job' FROM generate_series(1, 20) g"))
        conn.execute(text("ANALYZE inbound_events"))
    seen: list[tuple[str, object]] = []

    def record(conn, cursor, statement, parameters, context, executemany):
        if "inbound_events" in statement and statement.lstrip().upper().startswith("UPDATE"):
            seen.append((statement, parameters))

    engine = db.engine()
    event.listen(engine, "before_cursor_execute", record)
    try:
        with transaction() as s:
            retention.erase_person(s, _a_customer(s))
    finally:
        event.remove(engine, "before_cursor_execute", record)
    (statement, parameters) = seen[0]
    with engine.connect() as conn:
        plan = "\n".join(conn.exec_driver_sql("EXPLAIN " + statement, parameters).scalars())
    assert "Seq Scan on inbound_events" not in plan, plan
    # The index of answers by id, not the retention's by time (which starts the same way).
    assert re.search(r"ix_inbound_events_answered\b(?!_)", plan), plan


def _a_customer(s) -> int:
    found = Person(phone="+919812300091", role="customer", name="Asha")
    s.add(found)
    s.flush()
    return found.id
