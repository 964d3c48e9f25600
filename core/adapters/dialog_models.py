"""Tables owned by the dialog area (added to the shared metadata by core.adapters.models)."""

from __future__ import annotations

from core.adapters.models import Base  # noqa: F401
