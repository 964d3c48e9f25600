"""Which partners a transaction changed, so that their cached dispatch facts go when it
commits.

Dispatch caches each partner's eligibility and ranking facts in Redis (geo_index,
``FACTS_KEY``). They come from three tables: partner_profiles, vehicles and legs. Every
ORM flush that inserts, changes or deletes such a row marks its partner (both partners
when a leg changes hands); the outermost commit then drops the marked partners' cached
facts and bumps their generation. A rollback forgets the marks, since nothing changed.

The application writes those tables only through the ORM (tests/test_dispatch_facts.py
checks the code for Core UPDATE and DELETE statements on them). A change made by hand in
psql is not seen here; cached facts older than ``FACTS_MAX_AGE_S`` are ignored, which
bounds how long such a change can go unseen.
"""

from __future__ import annotations

import logging
from itertools import chain
from typing import Any

from redis.exceptions import RedisError
from sqlalchemy import event, inspect
from sqlalchemy.orm import InstanceState, Session

from core.adapters import geo_index
from core.adapters.models import Leg, PartnerProfile, Vehicle

log = logging.getLogger(__name__)

TOUCHED = "dispatch_facts_touched"  # session.info key: partner ids changed, uncommitted


def touched(session: Session) -> set[int]:
    """Partners whose rows this session changed and has not committed yet (flushed)."""
    return session.info.get(TOUCHED) or set()


def _partner_ids(obj: object) -> tuple[Any, ...]:
    if isinstance(obj, PartnerProfile):
        return (obj.id,)
    if isinstance(obj, Vehicle | Leg):
        # Annotated: mypy joins inspect()'s per-class overloads on a union to object.
        state: InstanceState[Vehicle | Leg] = inspect(obj)
        history = state.attrs.partner_id.history
        return (obj.partner_id, *history.deleted)
    return ()


@event.listens_for(Session, "after_flush")
def _mark(session: Session, flush_context: Any) -> None:
    ids = {pid for obj in chain(session.new, session.dirty, session.deleted)
           for pid in _partner_ids(obj) if pid is not None}
    if ids:
        session.info.setdefault(TOUCHED, set()).update(ids)


@event.listens_for(Session, "after_commit")
def _invalidate(session: Session) -> None:
    if session.in_nested_transaction():
        return  # a savepoint released: nothing is committed yet
    ids = session.info.pop(TOUCHED, None)
    if not ids:
        return
    try:
        geo_index.invalidate_facts(ids)
    except RedisError:
        # Committed already; the cached facts of these partners age out instead.
        log.warning("could not drop cached dispatch facts", extra={"partners": len(ids)})


@event.listens_for(Session, "after_rollback")
def _forget(session: Session) -> None:
    if session.get_nested_transaction() is None:  # a savepoint's rollback keeps the marks
        session.info.pop(TOUCHED, None)
