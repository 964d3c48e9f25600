"""What the booking dialog asks of the outside world. core.services implements it with a
database session; tests of the engine can pass a small fake. Values are plain and
JSON-safe so they can live in the conversation state."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

# A place: {"lat", "lng", "pincode", "post_office", "name", "district", "landmark"}
Place = dict[str, Any]

# The start of the status of a parcel someone else sends to this person's number
# (Ports.my_bookings, booking_status): told as its recipient hears it ("booking.status.
# to_you_on_the_way": on the way to you, give the rider the code we sent you).
TO_YOU = "to_you_"


@dataclass(frozen=True)
class PlaceResult:
    """Outcome of looking up a pin or a pincode.

    kind: "ok" (``place``), "list" (``offices`` to choose from), "outside" (not served:
    ``place`` and the nearest served ``point`` with ``km``), "error" (``code``)."""

    kind: str
    place: Place | None = None
    offices: list[Place] = field(default_factory=list)
    point: str | None = None
    km: str | None = None
    code: str | None = None


class Ports(Protocol):
    def set_language(self, lang: str) -> None: ...
    def locate(self, lat: float, lng: float) -> PlaceResult: ...
    def offices(self, pincode_text: str) -> PlaceResult: ...
    def check_area(self, place: Place) -> PlaceResult: ...
    def quote(self, slots: dict[str, Any]) -> dict[str, Any]: ...
    # Whether a rider who could take the parcel is free near the pickup now (shown
    # before paying); apart from quote, which is called where a fare is shown.
    def rider_free(self, slots: dict[str, Any]) -> bool: ...
    # Book the slots: {"ref", "total_paise"}, or {"refused": code, ...} and nothing booked.
    # slots["agreed_total_paise"], when there, is the total the customer said yes to: the
    # booking's own fare must be it, or {"refused": "price_changed", "total_paise": now}.
    def confirm(self, slots: dict[str, Any]) -> dict[str, Any]: ...
    # (reference, status) of their newest bookings; without ``open_only`` (the track
    # lists) then the parcels others send to their number that are under way, each with a
    # status starting TO_YOU (only where it is and about her code: nothing of the
    # sender's payment, nor anything she could change).
    def my_bookings(self, open_only: bool = False) -> list[tuple[str, str]]: ...
    # The status of a booking of theirs, or TO_YOU... of a parcel under way to their
    # number; None for any other (not found).
    def booking_status(self, reference: str) -> str | None: ...
    # A booking of theirs waiting for payment: {"url": its link, None while it is made,
    # "total_paise"}; None otherwise. by_sms: the link goes to their phone again.
    def payment_link(self, reference: str, *, by_sms: bool = False) -> dict[str, Any] | None: ...
    # {"allowed", "refund_paise", "fee_paise", "reason_code", "status", "drop"} (drop: the
    # delivery place, how a caller hears which booking it is: the phone's ports give the
    # name as its village list says it, core.services.ivr.booked_place); None if not theirs.
    def cancel_preview(self, reference: str) -> dict[str, Any] | None: ...
    def cancel(self, reference: str, shown: dict[str, Any]) -> dict[str, Any]: ...
    # {"done": True}, or {"refused": code} (already rated, not delivered, not theirs).
    def rate(self, reference: str, stars: int) -> dict[str, Any]: ...
    def talk_to_person(self, reason: str) -> dict[str, Any]: ...


class VoicePorts(Ports, Protocol):
    """What the phone dialog (core.dialog.voice) asks besides; core.services.ivr has it."""

    # How news of their booking reaches the caller now: "sms", "whatsapp" (they stopped
    # our SMS), "chat" (stopped SMS; WhatsApp only once they write), "none".
    def reach(self) -> str: ...
    # Their booking's time to pay ran out: expired on its link (not one closed for want of
    # a link), or waiting past its time.
    def payment_over(self, reference: str) -> bool: ...
    # Their booking's drop place as the phone names it (core.services.ivr.booked_place),
    # how a caller hears which booking is which; None if not theirs.
    def drop_place(self, reference: str) -> dict[str, Any] | None: ...
    # Their booking as slots, to book the same parcel again; None if not theirs.
    def booking_slots(self, reference: str) -> dict[str, Any] | None: ...
    # Their overdue booking is closed (True), still being checked with the gateway (None),
    # or paid meanwhile / not theirs (False): only a closed one is booked again.
    def overdue_closed(self, reference: str) -> bool | None: ...
    # Their unpaid booking's payment link sent by SMS to another mobile: "sent",
    # "not_ready", "not_payable", "limit", "day_limit" or "stopped" (core.services.ivr);
    # "own": the number keyed is the caller's, whose link goes as tracking sends it.
    def send_link_to(self, reference: str, phone: str) -> str: ...
    # Whether a new pickup code may be read out for their booking now.
    def pickup_code_left(self, reference: str) -> bool: ...
    # {"code"} (a new one, the old one void) or {"refused": "limit" | "not_now"}.
    def pickup_code(self, reference: str) -> dict[str, Any]: ...
