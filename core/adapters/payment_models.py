"""Tables owned by the payment area (added to the shared metadata by core.adapters.models)."""

from __future__ import annotations

from core.adapters.models import Base  # noqa: F401
