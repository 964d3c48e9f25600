"""Jobs that drain inbound message queues (the webhook only accepts; see core.services.inbound)."""

from __future__ import annotations

from bots.whatsapp import handle as whatsapp_turn
from core.services import inbound
from core.services.inbound import Handler

HANDLERS: dict[str, Handler] = {"whatsapp": whatsapp_turn}


def drain() -> int:
    """Handle queued messages, contact by contact, each contact's in order (RQ job on the
    ``inbound`` queue, or a hand-over behind the ``default`` queue's waiting jobs; several
    may run, never two on one contact)."""
    return inbound.drain_ready(HANDLERS.__getitem__)


def sweep() -> int:
    """Take up inboxes whose drainer was lost (run by the outbox sweep)."""
    return inbound.sweep_inboxes()
