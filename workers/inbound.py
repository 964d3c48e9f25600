"""Jobs that drain inbound message queues (the webhook only accepts; see core.services.inbound)."""

from __future__ import annotations

import logging

from rq.timeouts import BaseTimeoutException

from bots.whatsapp import handle as whatsapp_turn
from core.adapters.db import database_away
from core.services import inbound, partner_sms
from core.services.inbound import Handler

log = logging.getLogger(__name__)

# A partner SMS is answered inside its webhook, and comes here only when it was parked
# while Redis was away, or queued behind such a one (inbound.answer).
HANDLERS: dict[str, Handler] = {"whatsapp": whatsapp_turn, "sms": partner_sms.handle}


def drain() -> int:
    """Handle queued messages, contact by contact, each contact's in order (RQ job on the
    ``inbound`` queue, or a hand-over behind the ``default`` queue's waiting jobs; several
    may run, never two on one contact). Messages parked while Redis was away are queued
    first, so that a contact's later message waits behind its parked one (PostgreSQL
    away: the sweep queues them later; the drain itself goes on, and stops at the first
    turn if it needs the database)."""
    try:
        inbound.unpark_if_any()
    except Exception as exc:
        if not database_away(exc):
            raise
        log.warning("parked inbound messages left for the sweep: database away")
    return inbound.drain_ready(HANDLERS.__getitem__)


def sweep() -> int:
    """Queue the messages parked while Redis was away, and take up inboxes whose drainer
    was lost (run by the outbox sweep). Each on its own: PostgreSQL away must not keep
    the inboxes from being taken up; the first error is raised once both ran."""
    count, failed = 0, None
    for part in (inbound.unpark, inbound.sweep_inboxes):
        try:
            count += part()
        except BaseTimeoutException:
            raise  # the job's time is up: the rest waits for the next run
        except Exception as exc:  # noqa: BLE001 (raised below, after the other ran)
            failed = failed or exc
    if failed is not None:
        raise failed
    return count
