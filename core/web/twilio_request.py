"""Turn a Twilio webhook request into a checked, parsed value (or a clean 4xx)."""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
from collections.abc import Mapping
from functools import wraps
from typing import Any

from flask import abort, request
from twilio.request_validator import (
    HMAC_SHA1,
    SIGNATURE_SETTINGS_HEADER,
    RequestValidator,
    get_signature_algorithm,
)

from core.config import get_settings, listed_secrets
from core.domain.errors import ValidationError
from core.domain.phone import normalize_phone
from core.services.inbound import InboundMessage, shared_place
from core.web import old_secrets

SECONDARY = "TWILIO_AUTH_TOKEN_SECONDARY"

log = logging.getLogger(__name__)


def public_url() -> str:
    """The URL Twilio signed: PUBLIC_BASE_URL + path + query (we sit behind proxies)."""
    base = get_settings().public_base_url
    qs = request.query_string.decode("latin-1")
    return f"{base}{request.path}" + (f"?{qs}" if qs else "")


def signed(view):
    """Reject (403) a request whose X-Twilio-Signature does not match; 4xx on bad bodies."""

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any):
        settings = get_settings()
        length = request.content_length
        if length is not None and length > settings.max_webhook_bytes:
            abort(413, "request body too large")
        raw = request.get_data(cache=True)
        if len(raw) > settings.max_webhook_bytes:
            abort(413, "request body too large")
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            log.warning("webhook body is not valid UTF-8", extra={"path": request.path})
            abort(400, "request body is not valid UTF-8")
        signature = request.headers.get("X-Twilio-Signature", "")
        keys, algorithm = signing_keys(settings)
        params: Mapping[str, str] = request.form  # each value of a repeated one is signed
        url = public_url()
        if not body_hash_matches(raw):
            log.warning("webhook body is not the one signed", extra={"path": request.path})
            abort(403, "invalid Twilio signature")
        if "bodySHA256" in request.args:
            params = {}  # the body is signed by its hash, in the URL
        # A secondary token past its end signs nothing of Twilio's: refused, and counted.
        ended = old_secrets.expired_keys(settings.twilio_auth_token_secondary_keys,
                                         settings.twilio_auth_token_secondary_until)
        old_secrets.note_ended(SECONDARY, settings.twilio_auth_token_secondary_until, ended)
        if not signature or not any(
                signature_matches(RequestValidator(key), url, params, signature, algorithm)
                for key in keys):
            extra = {"path": request.path}
            if (signature and algorithm == HMAC_SHA1 and SIGNATURE_SETTINGS_HEADER not in
                    request.headers and any(
                        signature_matches(RequestValidator(key), url, params, signature)
                        for key in ended)):
                old_secrets.count_expired(SECONDARY)
                extra["expired_secret"] = SECONDARY
            log.warning("bad twilio signature", extra=extra)
            abort(403, "invalid Twilio signature")
        return view(*args, **kwargs)

    return wrapper


def body_hash_matches(raw: bytes) -> bool:
    """A JSON body is not among the signed parameters: Twilio signs the URL, which carries
    the body's SHA-256 (hex) in ``bodySHA256``. The body must be the one hashed, or any
    body could ride on a signed URL. True when there is no such parameter (a form body,
    whose parameters the signature covers). A repeated parameter must agree in full."""
    hashes = request.args.getlist("bodySHA256")
    if not hashes:
        return True
    actual = hashlib.sha256(raw).hexdigest()
    return all(hmac.compare_digest(actual.encode(), h.strip().lower().encode())
               for h in hashes)


def signing_keys(settings) -> tuple[tuple[str, ...], str]:  # noqa: ANN001 (core.config.Settings)
    """The secrets, and the algorithm, this request says Twilio signed it with.

    By default Twilio signs with the auth token and HMAC-SHA1 (or, while the token is
    rotated, TWILIO_AUTH_TOKEN_SECONDARY's, as Twilio signs with its primary, until
    TWILIO_AUTH_TOKEN_SECONDARY_UNTIL: Settings gives none after it). A webhook
    that a Twilio Webhook Rule sends through a Webhook Setting with a SharedKey is signed with that
    key instead, and says so in X-Twilio-Webhooks-Signature-Settings
    ("key=<id>,algorithm=HMAC_SHA256"). Such a request is checked against the secrets in
    TWILIO_WEBHOOK_SHARED_KEY only (several, comma-separated, while a key is rotated),
    never the auth token, and only with the algorithm the header names; a header that
    names none is not Twilio's. Without a usable key the request is refused (no secrets),
    and the log says what is missing.
    """
    settings_header = request.headers.get(SIGNATURE_SETTINGS_HEADER)
    if settings_header is None:
        # The auth token first (one HMAC for a genuine request), then a secondary one
        # while the token is rotated: a webhook signed with either passes.
        return (settings.twilio_auth_token, *settings.twilio_auth_token_secondary), HMAC_SHA1
    named = any(part.partition("=")[0].strip() == "algorithm" and part.partition("=")[2].strip()
                for part in settings_header.split(","))
    if not named:
        log.warning("webhook signature settings name no algorithm", extra={"path": request.path})
        return (), HMAC_SHA1
    secrets = listed_secrets(settings.twilio_webhook_shared_key or "")
    if not secrets:
        log.warning("webhook signed with a Twilio shared key, but TWILIO_WEBHOOK_SHARED_KEY "
                    "is not set", extra={"path": request.path})
    return secrets, get_signature_algorithm(settings_header)


def signature_matches(validator: RequestValidator, url: str, params: Mapping[str, str],
                      signature: str, algorithm: str = HMAC_SHA1) -> bool:
    """True if ``signature`` is Twilio's for this URL and these parameters.

    Twilio signs the URL as it was configured, so that is tried first: one HMAC for a
    genuine request. Only a mismatch pays for the library's check, which also tries the
    URL with and without its port (Twilio is not consistent about ports) and costs two.
    An algorithm the library does not know fails the check.
    """
    try:
        expected = validator.compute_signature(url, params, algorithm)
    except ValueError:  # not HMAC_SHA1 or HMAC_SHA256
        return False
    if hmac.compare_digest(expected.encode(), signature.encode()):
        return True
    return bool(validator.validate(url, params, signature, algorithm))


def _float_or_none(value: str | None) -> float | None:
    try:
        number = float(value) if value not in (None, "") else None
    except ValueError:
        return None
    return number if number is not None and math.isfinite(number) else None


def _text(value: str | None, limit: int) -> str:
    """A form value as PostgreSQL can store it: no NUL characters, at most ``limit``."""
    return (value or "").replace("\x00", "")[:limit]


FROM_MAX = 80  # outbox.to_addr; Twilio's longest, "whatsapp:+" and 15 digits, is 25


def parse_message(channel: str) -> InboundMessage:
    """Read Twilio's message parameters (ignoring any we do not know)."""
    form = request.form
    sid = form.get("MessageSid") or form.get("SmsMessageSid") or ""
    from_addr = form.get("From", "")
    if not sid:
        abort(400, "MessageSid is required")
    if not sid.isprintable():  # Twilio's are "SM" + 32 hex; a NUL cannot be stored
        abort(400, "MessageSid is not a message id")
    if not from_addr:
        abort(400, "From is required")
    if not from_addr.isprintable() or len(from_addr) > FROM_MAX:
        # Replies go to From as given (outbox.to_addr): a cut address would reach nobody.
        abort(400, "From is not an address")
    raw_from = from_addr.removeprefix("whatsapp:")
    try:
        phone: str | None = normalize_phone(raw_from)
    except ValidationError:
        phone = None
    if channel == "whatsapp":
        contact = form.get("WaId") or raw_from
        if not phone and form.get("WaId", "").isdigit():
            try:
                phone = normalize_phone("+" + form["WaId"])
            except ValidationError:
                phone = None
    else:
        if phone is None:
            abort(400, "From is not a phone number")
        contact = phone
    try:
        num_media = max(0, int(form.get("NumMedia", "0") or 0))
    except ValueError:
        num_media = 0
    return InboundMessage(
        channel=channel,
        sid=sid[:80],
        from_addr=from_addr,
        to_addr=_text(form.get("To"), 80),
        body=_text(form.get("Body"), 1600),
        contact=_text(contact, 80),
        phone=phone,
        profile_name=_text(form.get("ProfileName"), 120).strip() or None,
        num_media=num_media,
        media_types=tuple(form.get(f"MediaContentType{i}", "") for i in range(min(num_media, 10))),
        media_urls=tuple(form.get(f"MediaUrl{i}", "")[:500] for i in range(min(num_media, 10))),
        latitude=_float_or_none(form.get("Latitude")),
        longitude=_float_or_none(form.get("Longitude")),
        place=shared_place(_text(form.get("Label"), 200), _text(form.get("Address"), 300)),
        button_payload=_text(form.get("ButtonPayload"), 200) or None,
    )
