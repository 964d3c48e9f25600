"""core.adapters.queue.after_commit: actions that must follow a real commit (enqueueing a
job, sending a reply), on real PostgreSQL sessions with savepoints."""

from __future__ import annotations

from sqlalchemy import func, select

from core.adapters import db
from core.adapters.db import transaction
from core.adapters.models import Person
from core.adapters.queue import after_commit


def committed_phones() -> set[str]:
    """What another connection sees: only committed rows."""
    with db.engine().connect() as conn:
        return set(conn.scalars(select(Person.phone)))


def add(session, phone: str) -> None:
    session.add(Person(phone=phone, role="customer"))
    session.flush()


def test_an_action_registered_in_a_released_savepoint_waits_for_the_real_commit(clean_db):
    seen: list[tuple[str, set[str], int]] = []

    def action(name: str):
        # Run with the session's connection back in the pool, and the rows committed.
        return lambda: seen.append((name, committed_phones(), db.engine().pool.checkedout()))

    with transaction() as s:
        add(s, "+919800000001")
        savepoint = s.begin_nested()
        add(s, "+919800000002")
        after_commit(s, action("in the savepoint"))
        savepoint.commit()  # RELEASE SAVEPOINT: nothing is committed yet
        assert seen == []
        after_commit(s, action("after it"))
    both = {"+919800000001", "+919800000002"}
    assert seen == [("in the savepoint", both, 0), ("after it", both, 0)]


def test_a_savepoint_rolled_back_drops_its_actions_only(clean_db):
    ran: list[str] = []
    with transaction() as s:
        after_commit(s, lambda: ran.append("before"))
        savepoint = s.begin_nested()
        after_commit(s, lambda: ran.append("inside, undone"))
        savepoint.rollback()
        savepoint = s.begin_nested()
        after_commit(s, lambda: ran.append("inside, kept"))
        savepoint.commit()
        after_commit(s, lambda: ran.append("after"))
    assert ran == ["before", "inside, kept", "after"]


def test_nothing_runs_when_the_transaction_rolls_back(clean_db):
    ran: list[str] = []
    try:
        with transaction() as s:
            add(s, "+919800000003")
            after_commit(s, lambda: ran.append("never"))
            raise RuntimeError("the use case fails")
    except RuntimeError:
        pass
    with transaction() as s:  # a later transaction on a session of its own runs its own
        after_commit(s, lambda: ran.append("later"))
        assert s.scalar(select(func.count()).select_from(Person)) == 0
    assert ran == ["later"]


def test_a_rollback_with_a_savepoint_open_leaves_nothing_for_the_next_commit(clean_db):
    ran: list[str] = []
    session = db.session_factory()()
    try:
        session.begin()
        after_commit(session, lambda: ran.append("outer"))
        session.begin_nested()
        after_commit(session, lambda: ran.append("inner"))
        session.rollback()  # the whole transaction, the savepoint still open
        with session.begin():  # the same session, a new transaction
            after_commit(session, lambda: ran.append("next"))
    finally:
        session.close()
    assert ran == ["next"]
