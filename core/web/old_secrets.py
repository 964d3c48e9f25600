"""Old webhook secrets past their end (core.config: <NAME>_UNTIL): counted and warned of.

An old secret stops verifying at its end (core.config.Settings' properties). A webhook
still signed with it is refused like any bad signature, and counted on /metrics
(``webhook_expired_secret_total{setting}``): Twilio still signing with a token we dropped
(a rotation left half done), or a leaked copy being tried. The first webhook a process
checks after an end logs a warning once, naming the setting to remove.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime

from prometheus_client import Counter

from core import clock
from core.web.ops import REGISTRY

log = logging.getLogger(__name__)

EXPIRED_SECRET = Counter(
    "webhook_expired_secret",
    "Webhooks signed with an old secret past its end (<setting>_UNTIL), refused",
    ["setting"], registry=REGISTRY)

_warned: set[str] = set()
_lock = threading.Lock()


def expired_keys(keys: tuple[str, ...], until: datetime | None) -> tuple[str, ...]:
    """``keys`` once their end has passed on the service clock; else none."""
    return keys if keys and until is not None and clock.now() >= until else ()


def note_ended(setting: str, until: datetime | None, keys: tuple[str, ...]) -> None:
    """Warn once per process that ``setting``'s old secret has ended, when it has."""
    if not expired_keys(keys, until) or setting in _warned:
        return
    with _lock:
        if setting in _warned:
            return
        _warned.add(setting)
    assert until is not None
    log.warning("an old webhook secret has ended and verifies nothing now; remove it",
                extra={"setting": setting, "ended_at": until.isoformat()})


def count_expired(setting: str) -> None:
    """A webhook signed with ``setting``'s ended secret: counted (it is refused)."""
    EXPIRED_SECRET.labels(setting).inc()


def forget_warnings() -> None:
    """Warn again at the next end (tests)."""
    with _lock:
        _warned.clear()
