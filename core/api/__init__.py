"""REST API v1 for the apps (issue 7)."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("api_v1", __name__, url_prefix="/api/v1")
