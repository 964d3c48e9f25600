"""REST API v1 for the Book, Partner and Dispatch apps (JSON; OpenAPI at /openapi.json)."""

from __future__ import annotations

from flask import Blueprint, jsonify

from core.api.spec import openapi_document

bp = Blueprint("api_v1", __name__, url_prefix="/api/v1")

PREFIX = "/api/v1"

# Importing the route modules declares their endpoints on bp (and in the OpenAPI registry).
from core.api import addressing, auth, customer, ops, partner  # noqa: E402,F401


@bp.get("/openapi.json")
def openapi():
    return jsonify(openapi_document(PREFIX))
