"""Request and response models shared by the API's route modules."""

from __future__ import annotations

from datetime import datetime
from typing import Generic, TypeVar

from pydantic import BaseModel, Field, model_validator

from core.api.spec import Strict
from core.domain.booking import BookingStatus, LegStatus
from core.domain.pricing import ParcelCategory, SizeBucket, SpeedTier, WeightBucket

T = TypeVar("T")

MAX_DECLARED_VALUE_PAISE = 10_00_00_000_00  # ₹10 crore: beyond this, talk to ops


class PlaceIn(Strict):
    """A place: a map position, or a pincode with (optionally) its post office name."""

    lat: float | None = Field(default=None, ge=-90, le=90)
    lng: float | None = Field(default=None, ge=-180, le=180)
    pincode: str | None = Field(default=None, min_length=6, max_length=12)
    post_office: str | None = Field(default=None, min_length=1, max_length=120)
    landmark: str | None = Field(default=None, max_length=200)

    @model_validator(mode="after")
    def _one_way_to_say_where(self) -> PlaceIn:
        has_pos = self.lat is not None and self.lng is not None
        if (self.lat is None) != (self.lng is None):
            raise ValueError("give both lat and lng")
        if not has_pos and not self.pincode:
            raise ValueError("give lat and lng, or a pincode")
        return self


class ParcelIn(Strict):
    category: ParcelCategory = ParcelCategory.OTHER
    size: SizeBucket
    weight: WeightBucket
    fragile: bool = False
    declared_value_paise: int = Field(default=0, ge=0, le=MAX_DECLARED_VALUE_PAISE)
    description: str | None = Field(default=None, max_length=200)


class RecipientIn(Strict):
    name: str = Field(min_length=1, max_length=120)
    phone: str = Field(min_length=8, max_length=20)


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
    payment_url: str | None
    created_at: datetime
    legs: list[LegOut]


class OpsBookingOut(BookingOut):
    """A booking in an operator's list: also whose it is, so they can tell a caller's
    bookings apart (the number masked, as everywhere in the console)."""

    customer_id: int = Field(description="the customer's person id "
                                         "(what /ops/people/{person_id}/erase takes)")
    customer_phone_masked: str | None = Field(description="null once they are erased")


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_offset: int | None


class PageQuery(Strict):
    limit: int = Field(default=20, ge=1, le=100)
    offset: int = Field(default=0, ge=0, le=100_000)
