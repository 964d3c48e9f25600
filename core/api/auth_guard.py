"""Bearer-token checks for API endpoints: 401 when not signed in, 403 when not allowed."""

from __future__ import annotations

from flask import g, request

from core.api.spec import ApiError
from core.services.auth import Principal, authenticate


def require(roles: tuple[str, ...]) -> Principal:
    """The signed-in principal, if its role is one of ``roles``."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "unauthenticated", "sign in first (Authorization: Bearer <token>)")
    principal = authenticate(token.strip())
    if principal.role not in roles:
        raise ApiError(403, "forbidden", "your account cannot do this")
    g.principal = principal
    return principal


def principal() -> Principal:
    return g.principal
