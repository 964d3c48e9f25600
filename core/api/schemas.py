"""Request and response models shared by the API's route modules."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Generic, TypeVar

from pydantic import AfterValidator, BaseModel, BeforeValidator, Field, model_validator

from core.api.spec import MAX_ID, ApiError, Strict
from core.dialog.words import ascii_digits
from core.domain.booking import BookingStatus, LegStatus
from core.domain.pricing import (
    MAX_DECLARED_VALUE_PAISE,  # one rule for every channel: the chat's too
    ParcelCategory,
    SizeBucket,
    SpeedTier,
    WeightBucket,
)
from core.domain.text import visible, without_format_marks

T = TypeVar("T")


def _readable(value: str) -> str:
    """A name or landmark as others will read it (a rider's SMS, an operator's screen):
    without control characters or invisible marks (a right-to-left override turns the
    rest of an SMS around), its words one space apart, as the chat keeps them."""
    kept = visible(value)
    if value and not kept:
        raise ValueError("has no visible characters")
    return kept


# Text we keep and show to others, made readable (see _readable).
ShownText = Annotated[str, AfterValidator(_readable)]


def _phone_as_typed(value: Any) -> Any:
    """A phone number read as the chat reads one (core.dialog.booking.mobile): its digits
    in any script ("९८७६५४३२१०") as ASCII, without the invisible direction marks a number
    copied from a phone's contacts comes wrapped in ("\u202a+91 98765 43210\u202c"), a
    minus sign for a dash. What is then no phone is still refused (bad_phone) where the
    number is read (normalize_phone)."""
    if not isinstance(value, str):
        return value
    return ascii_digits(without_format_marks(value)).replace("\u2212", "-")


# A phone number as typed or pasted: every phone field of a request takes this type.
PhoneText = Annotated[str, BeforeValidator(_phone_as_typed)]


def _json_integer(value: Any) -> Any:
    """A whole number (paise, stars) only as a JSON integer: pydantic's lax mode read
    "9200" and 9200.0 as 9200. Money is integer paise; an app sending text or a decimal
    has a bug to be shown, not guessed around."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ValueError("must be a whole number written as a JSON integer (no quotes, "
                     "no decimal point)")


# An amount in paise in a JSON body. Bounds go inside, before the check: given on top (a
# field's Field(ge=0)) the OpenAPI document would show them as "ge", not "minimum".
PaiseIn = Annotated[int, Field(ge=0), BeforeValidator(_json_integer)]
DeclaredValueIn = Annotated[int, Field(ge=0, le=MAX_DECLARED_VALUE_PAISE),
                            BeforeValidator(_json_integer)]
StarsIn = Annotated[int, Field(ge=1, le=5), BeforeValidator(_json_integer)]


def _said_readably(value: Any) -> Any:
    """Free text someone wrote (a cancel's reason) as it is read (core.domain.text.visible),
    so a length check counts what one can see: "\u200b\u200b\u200b" is nothing said."""
    return visible(value) if isinstance(value, str) else value


def _at_least_visible(count: int) -> AfterValidator:
    def check(value: str) -> str:
        # visible() keeps the joiners a spelling needs; alone they say nothing either.
        if len(without_format_marks(value)) < count:
            raise ValueError(f"say it in at least {count} characters one can see")
        return value

    return AfterValidator(check)


# Free text of at least 3 visible characters (a reason): made readable, then counted.
SaidText = Annotated[str, BeforeValidator(_said_readably), _at_least_visible(3)]


def _remark_or_none(value: Any) -> Any:
    """Free text one may leave out (a rating's comment) as it is read (core.domain.text.
    visible); nothing one can see (direction marks, zero-width joiners as filler, spaces)
    is no remark: None, as if none was sent."""
    if not isinstance(value, str):
        return value
    kept = visible(value)
    # visible() keeps the joiners a spelling needs; alone they say nothing.
    return kept if without_format_marks(kept) else None


# Optional free text (a rating's comment): made readable; blank or invisible is None.
RemarkText = Annotated[str | None, BeforeValidator(_remark_or_none)]


class PlaceIn(Strict):
    """A place: a map position, or a pincode with (optionally) its post office name."""

    lat: float | None = Field(default=None, ge=-90, le=90)
    lng: float | None = Field(default=None, ge=-180, le=180)
    pincode: str | None = Field(default=None, min_length=6, max_length=12)
    post_office: ShownText | None = Field(default=None, min_length=1, max_length=120)
    landmark: ShownText | None = Field(default=None, max_length=200)

    @model_validator(mode="after")
    def _one_way_to_say_where(self) -> PlaceIn:
        has_pos = self.lat is not None and self.lng is not None
        if (self.lat is None) != (self.lng is None):
            raise ValueError("give both lat and lng")
        if not has_pos and not self.pincode:
            raise ValueError("give lat and lng, or a pincode")
        if has_pos and (self.pincode or self.post_office):
            # Either would be set aside for the position's nearest office, silently.
            raise ValueError("give lat and lng, or a pincode (and post office), not both")
        return self


class ParcelIn(Strict):
    category: ParcelCategory = ParcelCategory.OTHER
    size: SizeBucket
    weight: WeightBucket
    fragile: bool = False
    declared_value_paise: DeclaredValueIn = 0
    description: ShownText | None = Field(default=None, max_length=200)


class RecipientIn(Strict):
    name: ShownText = Field(min_length=1, max_length=120)
    phone: PhoneText = Field(min_length=8, max_length=20)


class FareLineOut(BaseModel):
    code: str
    amount_paise: int


class FareOut(BaseModel):
    tier: SpeedTier
    total_paise: int
    lines: list[FareLineOut]
    delivery_hours: int  # what the tier promises: delivered within this many hours
    search_minutes: int  # once paid, how long we look for a rider before a full refund


class PlaceOut(BaseModel):
    lat: float
    lng: float
    pincode: str | None
    post_office: str | None
    landmark: str | None


class LegOut(BaseModel):
    id: int
    sequence: int
    status: LegStatus
    partner_first_name: str | None
    distance_m: int


class BookingOut(BaseModel):
    reference: str
    status: BookingStatus
    channel: str
    speed_tier: SpeedTier
    vehicle_type: str
    distance_m: int
    total_paise: int
    fare_lines: list[FareLineOut]
    pickup: PlaceOut
    drop: PlaceOut
    recipient_name: str | None
    recipient_phone_masked: str | None
    payment_url: str | None = Field(
        description="the link to pay, while the booking waits for payment and its time "
                    "to pay is not over; null otherwise")
    created_at: datetime
    legs: list[LegOut]


class OpsBookingOut(BookingOut):
    """A booking in an operator's list: also whose it is, so they can tell a caller's
    bookings apart (the number masked, as everywhere in the console)."""

    customer_id: int = Field(description="the customer's person id "
                                         "(what /ops/people/{person_id}/erase takes)")
    customer_phone_masked: str | None = Field(
        description="the phone, or a WhatsApp-only customer's WhatsApp number, masked; "
                    "null once they are erased")


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_offset: int | None


class PageQuery(Strict):
    limit: int = Field(default=20, ge=1, le=100)
    offset: int = Field(default=0, ge=0, le=100_000)


class CursorPage(Page[T], Generic[T]):
    """A page of a list that also pages by cursor (keyset): rows added or removed while an
    operator reads do not make later pages skip or repeat rows, and depth costs nothing."""

    next_after: str | None = Field(description="give it as ?after= for the next page; "
                                               "null on the last page")


class CursorQuery(PageQuery):
    offset: int = Field(default=0, ge=0, le=100_000,
                        description="deprecated for deep pages (rows added or removed while "
                                    "you page make pages skip or repeat rows, and it stops "
                                    "at 100000): page with after instead")
    after: str | None = Field(default=None,
                              description="the next_after of the page before (not together "
                                          "with offset); next_offset is null then")


CURSOR_VERSION = 1
MAX_CURSOR_CHARS = 512  # far more than any key of ours needs; longer is not one of ours
_LIST_NAMES: set[str] = set()  # of every Keyset made: the only cursor text an error names


def bad_cursor(why: str) -> ApiError:
    return ApiError(400, "bad_cursor", f"after: {why}; start again from the first page",
                    field="after")


@dataclass(frozen=True)
class Keyset:
    """How one list pages by cursor: its name (a cursor of another list is refused) and the
    types of its sort key, the row's id last so the order is total.

    A cursor is urlsafe base64 (unpadded) of {"v": version, "l": list, "k": key}. It is
    not signed: it holds only sort values the operator saw on the page, so an edited but
    well-formed one is just another place in the same list.
    """

    name: str
    kinds: tuple[type, ...]  # int (an id) or datetime (timezone-aware)

    def __post_init__(self) -> None:
        _LIST_NAMES.add(self.name)

    def encode(self, key: tuple[Any, ...]) -> str:
        values = [v.isoformat() if isinstance(v, datetime) else v for v in key]
        raw = json.dumps({"v": CURSOR_VERSION, "l": self.name, "k": values},
                         separators=(",", ":"))
        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")

    def decode(self, cursor: str) -> tuple[Any, ...]:
        """The key a cursor holds; ApiError 400 (bad_cursor) for anything we did not make."""
        if len(cursor) > MAX_CURSOR_CHARS:
            raise bad_cursor("not a cursor of ours (too long)")
        try:
            raw = base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_",
                                   validate=True)
            data = json.loads(raw.decode("utf-8"))
        except (ValueError, binascii.Error, RecursionError):  # UnicodeError is a ValueError
            raise bad_cursor("not a cursor of ours (garbled)") from None
        if not isinstance(data, dict) or set(data) != {"v", "l", "k"}:
            raise bad_cursor("not a cursor of ours")
        if data["v"] != CURSOR_VERSION:
            raise bad_cursor("a cursor of another version")
        if data["l"] != self.name:
            # Named only if it is one of our lists: anything else the client wrote (a lone
            # surrogate, a control character) must not reach the answer or a log line.
            known = isinstance(data["l"], str) and data["l"] in _LIST_NAMES
            other = f" ({data['l']})" if known else ""
            raise bad_cursor(f"a cursor of another list{other}, not of {self.name}")
        values = data["k"]
        if not isinstance(values, list) or len(values) != len(self.kinds):
            raise bad_cursor("its key does not fit this list")
        return tuple(_key_value(kind, v) for kind, v in zip(self.kinds, values, strict=True))


def _key_value(kind: type, value: object) -> int | datetime:
    if kind is int:
        # bool is an int to Python, not to us; ids are PostgreSQL integers
        if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_ID:
            return value
        raise bad_cursor("its key holds no row id")
    try:
        at = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        at = None
    if at is None or at.tzinfo is None:
        raise bad_cursor("its key holds no time with its zone")
    return at
