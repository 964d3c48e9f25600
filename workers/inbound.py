"""Jobs that drain inbound message queues (the webhook only accepts; see core.services.inbound)."""

from __future__ import annotations

from bots.whatsapp import handle as whatsapp_turn
from core.services import inbound

HANDLERS = {"whatsapp": whatsapp_turn}


def drain(channel: str, contact: str) -> int:
    """Handle one contact's queued messages in order (RQ job on the ``inbound`` queue)."""
    return inbound.drain(channel, contact, HANDLERS[channel])


def sweep() -> int:
    """Schedule drains for inboxes whose job was lost (run by the outbox sweep)."""
    return inbound.sweep_inboxes()
