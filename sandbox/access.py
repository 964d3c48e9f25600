"""Who may use the sandbox's routes (/sandbox/...): this machine only, unless
SANDBOX_PUBLIC=1.

They need no sign-in, and /sandbox/outbox (and the Twilio emulator's message list) shows
every sign-in code sent: anyone else who reached them could sign in as anyone, the demo
operator too. The service's own calls to its emulators (PUBLIC_BASE_URL's default is
http://127.0.0.1) and a tunnel's agent running here come from this machine; a client
behind PROXY_HOPS proxies is the one they forwarded. A demo other machines use (BIND_HOST
0.0.0.0 on a LAN, a sandbox deployed on a platform, a tunnel with PROXY_HOPS) says so
with SANDBOX_PUBLIC=1.
"""

from __future__ import annotations

import ipaddress
import logging

from flask import jsonify, request

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


def local_only():
    """A blueprint's before_request: a 403 naming SANDBOX_PUBLIC for a client of another
    machine; None (go on) for this machine's, or with SANDBOX_PUBLIC=1."""
    if get_settings().sandbox_public or is_loopback(request.remote_addr):
        return None
    log.warning("sandbox route refused to a client of another machine",
                extra={"path": request.path})
    resp = jsonify({"error": {
        "code": "sandbox_local_only",
        "message": "The sandbox answers this machine only (its outbox shows every sign-in "
                   "code); set SANDBOX_PUBLIC=1 to open it to other machines"}})
    resp.status_code = 403
    return resp
