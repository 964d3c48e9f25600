"""Domain errors: what went wrong in business terms, mapped to HTTP/TwiML at the edges."""

from __future__ import annotations


class DomainError(Exception):
    """Base of every error the core raises on purpose.

    ``code`` is a stable machine-readable string (used in API error bodies and to pick
    the user-facing catalog message); ``field`` names the input at fault, if any.
    """

    code = "domain_error"

    def __init__(self, message: str, *, code: str | None = None, field: str | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.field = field


class ValidationError(DomainError):
    """Input that can never be right (bad phone, malformed pincode, negative amount)."""

    code = "validation_error"


class NotFound(DomainError):
    """The thing asked for does not exist (or is not visible to the asker)."""

    code = "not_found"


class Conflict(DomainError):
    """The request is valid but clashes with the current state."""

    code = "conflict"


class InvalidTransition(Conflict):
    """A state machine refused a transition (the API answers 409)."""

    code = "invalid_transition"


class Unavailable(DomainError):
    """A dependency we need is down; the caller may retry later."""

    code = "unavailable"
