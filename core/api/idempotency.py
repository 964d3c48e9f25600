"""Idempotency-Key for the REST API's POSTs that must not act twice on a client's retry
(a timeout, a double tap): POST /bookings, POST /bookings/{ref}/cancel, POST
/bookings/{ref}/rating, POST /ops/handoffs/{id}/reply, POST /ops/handoffs/{id}/close,
POST /ops/legs/{id}/new-code
(POST /auth/verify reads the header too, for its own retry: core.services.auth). Each
declares the header (``KEY_HEADER``), so the OpenAPI document shows it to the clients
generated from it.

The first request with a key claims it (``idempotency_records``, one row per person and
key) in the transaction that does the work, and saves its answer there; a retry with the
same key and the same request gets that answer again and does nothing. A concurrent copy
waits on the claim (the unique index) until the first commits, then replays its answer,
or, if the first failed and rolled back, takes the key itself. Errors are not saved: a
refused request may be retried with its key.

The key is the caller's, for all their requests: a request's fingerprint (``fingerprint``)
is what tells two requests apart. An endpoint whose fingerprint could equal another
endpoint's puts its own name in what it fingerprints, so one key sent to two endpoints
is refused (``idempotency_key_reused``), never answered with the other's saved answer.

A saved answer may hold something a retry needs for minutes only (POST
/ops/legs/{id}/new-code's code): the endpoint reads the record replayed (``replayed``)
before sending it again, and core.services.retention redacts it once that time is over.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flask import Response, request
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from core import clock
from core.adapters.api_models import IdempotencyRecord
from core.api.spec import ApiError, Header

HEADER = "Idempotency-Key"
MAX_KEY = 100  # idempotency_records.key

# The header as a route declares it (core.api.spec.endpoint's headers).
KEY_HEADER = Header(HEADER, max_length=MAX_KEY, description=(
    "a unique key (a UUID) of this request: a retry with it answers the first answer "
    "and does nothing again; the key of another request is refused (422 "
    "idempotency_key_reused)"))


def fingerprint(canonical: Mapping[str, Any]) -> str:
    """The digest of a request, given as plain JSON values (keys in any order)."""
    return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()


@dataclass
class Idempotent:
    """One request's use of its Idempotency-Key; without a key every step does nothing."""

    person_id: int
    key: str | None
    digest: str
    record_id: int | None = None
    replayed: IdempotencyRecord | None = None  # the saved answer ``claim`` sent again

    def claim(self, session: Session) -> Response | None:
        """Claim the key first thing in the work's transaction. Returns the saved answer
        to send again (the work is then not to be done), or None: go on, then ``save``.
        422 ``idempotency_key_reused`` for the key of a different request."""
        if not self.key:
            return None
        # A concurrent copy of this request waits here until ours commits or rolls back.
        # The time is the project clock's, as the windows measured from it (retention).
        self.record_id = session.scalar(
            insert(IdempotencyRecord)
            .values(person_id=self.person_id, key=self.key, request_hash=self.digest,
                    status=0, response={}, created_at=clock.now())
            .on_conflict_do_nothing(constraint="uq_idempotency_person_key")
            .returning(IdempotencyRecord.id))
        if self.record_id is not None:
            return None
        rec = session.scalar(select(IdempotencyRecord).where(
            IdempotencyRecord.person_id == self.person_id, IdempotencyRecord.key == self.key))
        assert rec is not None
        if rec.request_hash != self.digest:
            raise ApiError(422, "idempotency_key_reused",
                           f"this {HEADER} was used for a different request", HEADER)
        self.replayed = rec
        return Response(json.dumps(rec.response, ensure_ascii=False),
                        status=rec.status, mimetype="application/json")

    def save(self, session: Session, status: int, answer: BaseModel) -> None:
        """Keep the answer, as the endpoint sends it, to send again on a retry (in the
        transaction of the work and the claim)."""
        if not self.key:
            return
        assert self.record_id is not None, "save() without a claim()"
        rec = session.get(IdempotencyRecord, self.record_id)
        assert rec is not None
        rec.status = status
        rec.response = answer.model_dump(mode="json")


def idempotent(person_id: int, canonical: Mapping[str, Any]) -> Idempotent:
    """This request's Idempotency-Key (optional) for ``person_id``, and the fingerprint
    of ``canonical``; 422 for a key we cannot keep (over 100 characters, or not
    printable), and for an empty one: a client that sends the header means its retries to
    be safe (an empty ``$(uuidgen)`` where uuidgen is missing), and would not be."""
    sent = request.headers.get(HEADER)
    key = (sent or "").strip()
    if sent is not None and not key:
        raise ApiError(422, "validation_error",
                       f"{HEADER} is empty: send a unique key (a UUID), or no header", HEADER)
    if key and (len(key) > MAX_KEY or not key.isprintable()):
        raise ApiError(422, "validation_error",
                       f"{HEADER}: at most {MAX_KEY} printable characters", HEADER)
    return Idempotent(person_id, key or None, fingerprint(canonical))
