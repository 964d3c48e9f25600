"""Who may use the sandbox's routes (/sandbox/...): this machine only, unless
SANDBOX_PUBLIC=1.

They need no sign-in, and /sandbox/outbox (and the Twilio emulator's message list) shows
every sign-in code sent: anyone else who reached them could sign in as anyone, the demo
operator too. The service's own calls to its emulators (PUBLIC_BASE_URL's default is
http://127.0.0.1) and a tunnel's agent running here come from this machine; a client
behind PROXY_HOPS proxies is the one they forwarded. A demo other machines use (BIND_HOST
0.0.0.0 on a LAN, a sandbox deployed on a platform, a tunnel with PROXY_HOPS) says so
with SANDBOX_PUBLIC=1.

A loopback address is this machine's own only when nothing forwarded the request: a
tunnel's agent (ngrok, cloudflared) or a proxy here connects from 127.0.0.1 and says whom
it forwarded in X-Forwarded-For / Forwarded / CF-Connecting-IP. With PROXY_HOPS=0 that
client is not taken (it could be anyone on the internet), so such a request is refused;
the service's own calls to its emulators send none of these headers.
"""

from __future__ import annotations

import ipaddress
import logging

from flask import current_app, jsonify, request

from core.config import get_settings

log = logging.getLogger(__name__)


def is_loopback(address: str | None) -> bool:
    """True for a loopback address (127.0.0.0/8, ::1, ::ffff:127.x.x.x)."""
    try:
        ip = ipaddress.ip_address((address or "").strip("[]"))
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


# Headers a proxy or tunnel agent adds to say whom it forwarded (WSGI environ names).
FORWARDING_HEADERS = ("HTTP_X_FORWARDED_FOR", "HTTP_FORWARDED", "HTTP_CF_CONNECTING_IP",
                      "HTTP_X_REAL_IP", "HTTP_TRUE_CLIENT_IP", "HTTP_X_FORWARDED_HOST")


def _forwarded_untaken(proxy_hops: int) -> bool:
    """True when the request carries a forwarding header but PROXY_HOPS did not take the
    client's address from it (PROXY_HOPS=0, or fewer X-Forwarded-For addresses than it):
    its loopback address is then a proxy's or tunnel agent's, not the client's."""
    environ = request.environ
    if not any(name in environ for name in FORWARDING_HEADERS):
        return False
    if not proxy_hops:
        return True
    given = [a for a in environ.get("HTTP_X_FORWARDED_FOR", "").split(",") if a.strip()]
    return len(given) < proxy_hops


def _refuse(message: str):
    resp = jsonify({"error": {"code": "sandbox_local_only", "message": message}})
    resp.status_code = 403
    return resp


def local_only():
    """A blueprint's before_request: a 403 naming SANDBOX_PUBLIC for a client of another
    machine (or one a proxy or tunnel here forwarded, PROXY_HOPS not taking its address);
    None (go on) for this machine's, or with SANDBOX_PUBLIC=1."""
    if get_settings().sandbox_public:
        return None
    if is_loopback(request.remote_addr):
        # The app's own settings (create_app may be given others than get_settings()'s).
        settings = current_app.extensions.get("ridechain_settings") or get_settings()
        if not _forwarded_untaken(settings.proxy_hops):
            return None
        log.warning("sandbox route refused to a request forwarded by a proxy or tunnel",
                    extra={"path": request.path})
        return _refuse(
            "The sandbox answers this machine only (its outbox shows every sign-in code); "
            "this request came through a proxy or tunnel and PROXY_HOPS does not say which "
            "client it forwarded. Set PROXY_HOPS to the number of proxies in front, or "
            "SANDBOX_PUBLIC=1 to open the sandbox to other machines")
    log.warning("sandbox route refused to a client of another machine",
                extra={"path": request.path})
    return _refuse("The sandbox answers this machine only (its outbox shows every sign-in "
                   "code); set SANDBOX_PUBLIC=1 to open it to other machines")
