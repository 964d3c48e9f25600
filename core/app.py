"""create_app(): the composition root.

This is the one place in core/ that names the channel packages (bots/, ivr_flows/) and
the sandbox: it wires them to the core; the core itself never calls a channel.
"""

from __future__ import annotations

import importlib
import logging
import uuid

from flask import Flask, g, request
from werkzeug.middleware.proxy_fix import ProxyFix

from core import logs
from core.config import Settings, get_settings
from core.web import errors, ops

log = logging.getLogger(__name__)

CHANNEL_BLUEPRINTS = (
    "bots.whatsapp", "bots.sms", "bots.status", "ivr_flows.voice", "ivr_flows.audio",
    "core.web.razorpay",
    "core.api",
)
SANDBOX_BLUEPRINTS = ("sandbox.twilio", "sandbox.razorpay")


def create_app(settings: Settings | None = None) -> Flask:
    """Build the Flask app for the configured environment."""
    settings = settings or get_settings()
    logs.configure(settings.log_level)
    app = Flask(__name__)
    app.config.update(
        # Webhooks and JSON; the photo upload reads up to POD_MAX_BYTES (core/api/spec.py).
        MAX_CONTENT_LENGTH=max(settings.max_webhook_bytes, 1024 * 1024),
        JSON_SORT_KEYS=False,
        # No SECRET_KEY: nothing here uses Flask's cookie session (the API signs its own
        # tokens), and without one Flask skips building a cookie signer on every request.
    )
    app.json.ensure_ascii = False  # type: ignore[attr-defined]
    if settings.proxy_hops:
        # Behind our proxies, the client's address (per-IP limits) is the one the last
        # proxy_hops of them forwarded. Twilio's signatures do not depend on this: they
        # are checked against PUBLIC_BASE_URL, not the forwarded host and scheme.
        hops = settings.proxy_hops
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops)

    @app.before_request
    def _bind_request_id() -> None:
        # The caller's id only when it is a short safe token (core.logs.accepted_request_id):
        # it is logged with every line of the request and echoed in the answer.
        given = logs.accepted_request_id(request.headers.get("X-Request-Id"))
        g.request_id = given or uuid.uuid4().hex[:16]
        logs.request_id.set(g.request_id)

    @app.after_request
    def _echo_request_id(response):
        response.headers["X-Request-Id"] = g.get("request_id", "")
        return response

    @app.teardown_request
    def _unbind_request_id(_exc: BaseException | None) -> None:
        logs.request_id.set(None)  # the thread serves other requests next

    errors.register(app)
    ops.instrument(app, settings)
    app.register_blueprint(ops.bp)
    for module in CHANNEL_BLUEPRINTS:
        app.register_blueprint(importlib.import_module(module).bp)
    if settings.is_sandbox:
        for module in SANDBOX_BLUEPRINTS:
            app.register_blueprint(importlib.import_module(module).bp)
    from core.adapters import pincode

    pincode.warm_up()
    log.info("app ready", extra={"app_env": settings.app_env})
    return app
