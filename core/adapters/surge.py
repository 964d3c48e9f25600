"""Per-area surge multipliers kept in Redis (set by ops or a demand job, read by pricing)."""

from __future__ import annotations

import logging

from core.adapters.redis_conn import redis_client
from core.domain.pricing import BP

log = logging.getLogger(__name__)


def _key(area: str) -> str:
    return f"surge:{area}"


def surge_bp(area: str | None) -> int:
    """The surge multiplier for an area in basis points (10000 = none); pricing caps it."""
    if not area:
        return BP
    try:
        raw = redis_client().get(_key(area))
    except Exception:  # no surge is the safe answer when Redis blinks
        log.warning("surge lookup failed; pricing without surge")
        return BP
    try:
        return max(BP, int(raw)) if raw is not None else BP
    except ValueError:
        return BP


def set_surge_bp(area: str, bp: int, ttl_s: int = 3600) -> None:
    """Set an area's surge (expires on its own so a forgotten surge cannot linger)."""
    if bp < BP:
        raise ValueError("surge below 1.00 is a discount, not a surge")
    redis_client().set(_key(area), int(bp), ex=ttl_s)
