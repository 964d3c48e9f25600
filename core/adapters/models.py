"""The relational model (SQLAlchemy 2 typed ORM). Alembic migrations mirror this file.

Statuses are stored as short strings with CHECK constraints generated from the domain
enums, so the database refuses a value the state machines do not know.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    FetchedValue,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from core.domain.booking import BookingStatus, LegStatus
from core.domain.pricing import ParcelCategory, SizeBucket, SpeedTier, VehicleType, WeightBucket

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

ROLES = ("customer", "partner", "ops")
CHANNELS = ("whatsapp", "sms", "voice", "app")
OUTBOX_STATUSES = (
    "pending", "sending", "queued", "sent", "delivered", "read", "undelivered", "failed",
)


def one_of(column: str, values: Any) -> str:
    """SQL for `column IN (...)` from an enum class or a tuple of strings."""
    items = [v.value if isinstance(v, StrEnum) else v for v in values]
    return f"{column} IN ({', '.join(repr(str(i)) for i in items)})"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


def created_col() -> Mapped[datetime]:
    return mapped_column(DateTime(timezone=True), server_default=func.now(), nullable=False)


class Person(Base):
    """Anyone we talk to: customer, partner or operator. Phone is E.164 when known."""

    __tablename__ = "people"
    __table_args__ = (CheckConstraint(one_of("role", ROLES), name="role"),
                      # outbox._moved_from: who moved off a number (migration 0056)
                      Index("ix_people_former_phones", "former_phones",
                            postgresql_using="gin"))

    id: Mapped[int] = mapped_column(primary_key=True)
    phone: Mapped[str | None] = mapped_column(String(16), unique=True)
    # WhatsApp may give a business-scoped user id without a phone number: key on it.
    wa_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    name: Mapped[str | None] = mapped_column(String(120))
    preferred_language: Mapped[str | None] = mapped_column(String(5))
    role: Mapped[str] = mapped_column(String(10), default="customer")
    # Opt-outs, one per channel (Twilio keeps them apart too): ``opted_out`` is STOP sent
    # to the WhatsApp bot, or Twilio refusing a WhatsApp message to her (63014: she blocked
    # us; ``wa_blocked`` then says so); ``sms_opted_out`` an SMS opt-out word, or Twilio
    # refusing an SMS to the number (21610). Either leaves the other channel open. A block
    # ends when she writes to us on WhatsApp again; her own STOP only with START.
    opted_out: Mapped[bool] = mapped_column(Boolean, default=False)
    sms_opted_out: Mapped[bool] = mapped_column(Boolean, default=False,
                                                server_default=false())
    # Read only beside ``opted_out`` (true alone means nothing). Migration 0037.
    wa_blocked: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # The numbers ops moved them off (a partner's new SIM: partner_profile.set_phone), each
    # with when it stopped being theirs (ISO 8601, the database's time, as created_at):
    # {"+919812300062": "2026-12-06T01:20:00+00:00"}. Read by their erasure alone, which
    # takes what was theirs at a number until then (messages to it, its chats let go,
    # parcels sent to it) and clears these. Kept until then: those rows keep the number
    # for good (the retention job redacts texts, not addresses). Migration 0048.
    former_phones: Mapped[dict[str, str] | None] = mapped_column(JSONB)
    created_at: Mapped[datetime] = created_col()

    partner: Mapped[PartnerProfile | None] = relationship(back_populates="person")


class NumberOptOut(Base):
    """A STOP kept after the person who sent it was erased: the number (or WhatsApp id) is
    kept only as a keyed hash (``number_hash``), which names nobody, yet says "this
    number stopped us" when we are about to write to it. One row a number: its phone and
    its WhatsApp id hash alike (outbox.number_hash), each channel a flag. Honoured when
    sending to a number no person holds (``_opted_out``), and carried onto the person made
    anew when the number writes again (``_carry_opt_out``): they are asked for START as
    before, and START clears it as ever (a block, 63014, ends at their next WhatsApp
    message instead: ``wa_blocked``). Written by ``retention.erase_person``, and when
    Twilio refuses a message for an opt-out (21610, 63014) to a number nobody holds; an
    SMS START from the number ends it (partner_sms.handle). Rotating OTP_KEY forgets these.
    The code that reads and writes it: core.services.outbox. Migration 0032."""

    __tablename__ = "number_opt_outs"

    number_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    whatsapp: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    sms: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # ``whatsapp`` closed by her block (63014), not her STOP: carried as such (0037).
    wa_blocked: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_at: Mapped[datetime] = created_col()


class Point(Base):
    """A village hub where parcels can change hands between relay legs."""

    __tablename__ = "points"
    __table_args__ = (
        # Nearest active Points first (migration 0010): core.adapters.points.
        Index("ix_points_active_position", func.point(text("lng"), text("lat")),
              postgresql_using="gist", postgresql_where=text("active")),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(120))
    lat: Mapped[float] = mapped_column(Float)
    lng: Mapped[float] = mapped_column(Float)
    pincode: Mapped[str] = mapped_column(String(6), index=True)
    post_office: Mapped[str | None] = mapped_column(String(120))
    district: Mapped[str | None] = mapped_column(String(80))
    state: Mapped[str | None] = mapped_column(String(80))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = created_col()


class PartnerProfile(Base):
    """What makes a person a partner: duty, home Point, track record, payout account."""

    __tablename__ = "partner_profiles"
    __table_args__ = (
        CheckConstraint("rating_x100 BETWEEN 0 AND 500", name="rating"),
        CheckConstraint("trust_tier BETWEEN 0 AND 3", name="trust_tier"),
        # One partner per payout account: another's payouts must never reach it (0021).
        Index("uq_partner_profiles_payout_account_id", "payout_account_id", unique=True),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    person_id: Mapped[int] = mapped_column(ForeignKey("people.id"), unique=True)
    first_name: Mapped[str] = mapped_column(String(60))
    home_point_id: Mapped[int | None] = mapped_column(ForeignKey("points.id"))
    on_duty: Mapped[bool] = mapped_column(Boolean, default=False)
    has_app: Mapped[bool] = mapped_column(Boolean, default=False)
    rating_x100: Mapped[int] = mapped_column(Integer, default=450)
    offers_received: Mapped[int] = mapped_column(Integer, default=0)
    offers_accepted: Mapped[int] = mapped_column(Integer, default=0)
    trust_tier: Mapped[int] = mapped_column(Integer, default=1)
    max_active_legs: Mapped[int] = mapped_column(Integer, default=2)
    payout_account_id: Mapped[str | None] = mapped_column(String(40))
    kyc_status: Mapped[str] = mapped_column(String(20), default="pending")
    created_at: Mapped[datetime] = created_col()

    person: Mapped[Person] = relationship(back_populates="partner")
    vehicles: Mapped[list[Vehicle]] = relationship(back_populates="partner")
    points: Mapped[list[Point]] = relationship(secondary="partner_points")


class PartnerPoint(Base):
    """Which Points a partner serves (SMS-only partners are placed at these)."""

    __tablename__ = "partner_points"

    partner_id: Mapped[int] = mapped_column(ForeignKey("partner_profiles.id"), primary_key=True)
    point_id: Mapped[int] = mapped_column(ForeignKey("points.id"), primary_key=True)


class Vehicle(Base):
    __tablename__ = "vehicles"
    __table_args__ = (
        CheckConstraint(one_of("type", VehicleType), name="type"),
        CheckConstraint(one_of("max_size", SizeBucket), name="max_size"),
        CheckConstraint("payload_kg > 0", name="payload"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    partner_id: Mapped[int] = mapped_column(ForeignKey("partner_profiles.id"), index=True)
    type: Mapped[str] = mapped_column(String(12))
    payload_kg: Mapped[int] = mapped_column(Integer)
    max_size: Mapped[str] = mapped_column(String(10))
    registration: Mapped[str | None] = mapped_column(String(20))
    active: Mapped[bool] = mapped_column(Boolean, default=True)

    partner: Mapped[PartnerProfile] = relationship(back_populates="vehicles")


class RateCardRow(Base):
    """A rate card version (JSON of core.domain.pricing.RateCard); the newest active wins."""

    __tablename__ = "rate_cards"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(60), unique=True)
    card: Mapped[dict[str, Any]] = mapped_column(JSONB)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = created_col()


class Booking(Base):
    __tablename__ = "bookings"
    __table_args__ = (
        CheckConstraint(one_of("status", BookingStatus), name="status"),
        CheckConstraint(one_of("speed_tier", SpeedTier), name="speed_tier"),
        CheckConstraint(one_of("channel", CHANNELS), name="channel"),
        CheckConstraint("total_paise >= 0", name="total"),
        CheckConstraint("commission_paise + partner_share_paise = total_paise", name="split"),
        # The open bookings to a number (a parcel under way to it), for the two lookups
        # that filter on these statuses (partner_sms._parcel_coming,
        # conversation._coming_to_me); they write them into the SQL (literal_execute), or
        # a prepared statement's generic plan cannot use the index (migration 0047).
        Index("ix_bookings_open_recipient_phone", "recipient_phone",
              postgresql_where=text("status IN ('paid', 'dispatching', 'assigned', "
                                    "'picked_up', 'in_transit')")),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    reference: Mapped[str] = mapped_column(String(8), unique=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("people.id"), index=True)
    channel: Mapped[str] = mapped_column(String(10))
    status: Mapped[str] = mapped_column(String(20), index=True)
    pickup_lat: Mapped[float] = mapped_column(Float)
    pickup_lng: Mapped[float] = mapped_column(Float)
    pickup_pincode: Mapped[str | None] = mapped_column(String(6))
    pickup_post_office: Mapped[str | None] = mapped_column(String(120))
    pickup_landmark: Mapped[str | None] = mapped_column(String(200))
    drop_lat: Mapped[float] = mapped_column(Float)
    drop_lng: Mapped[float] = mapped_column(Float)
    drop_pincode: Mapped[str | None] = mapped_column(String(6))
    drop_post_office: Mapped[str | None] = mapped_column(String(120))
    drop_landmark: Mapped[str | None] = mapped_column(String(200))
    recipient_name: Mapped[str | None] = mapped_column(String(120))
    recipient_phone: Mapped[str | None] = mapped_column(String(16), index=True)
    speed_tier: Mapped[str] = mapped_column(String(10))
    vehicle_type: Mapped[str] = mapped_column(String(12))
    distance_m: Mapped[int] = mapped_column(Integer)
    fare: Mapped[dict[str, Any]] = mapped_column(JSONB)
    total_paise: Mapped[int] = mapped_column(BigInteger)
    commission_paise: Mapped[int] = mapped_column(BigInteger)
    partner_share_paise: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The language it was made in (its customer's then; a phone is often a family's, and
    # another caller may choose another later): its messages go in it. NULL: made before
    # migration 0046, told in the person's language.
    language: Mapped[str | None] = mapped_column(String(5))
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = created_col()
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )

    __mapper_args__ = {"version_id_col": version}

    parcels: Mapped[list[Parcel]] = relationship(back_populates="booking", order_by="Parcel.id")
    legs: Mapped[list[Leg]] = relationship(back_populates="booking", order_by="Leg.sequence")
    customer: Mapped[Person] = relationship()


class Parcel(Base):
    __tablename__ = "parcels"
    __table_args__ = (
        CheckConstraint(one_of("category", ParcelCategory), name="category"),
        CheckConstraint(one_of("size_bucket", SizeBucket), name="size_bucket"),
        CheckConstraint(one_of("weight_bucket", WeightBucket), name="weight_bucket"),
        CheckConstraint("declared_value_paise >= 0", name="declared_value"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    booking_id: Mapped[int] = mapped_column(ForeignKey("bookings.id"), index=True)
    category: Mapped[str] = mapped_column(String(20))
    size_bucket: Mapped[str] = mapped_column(String(10))
    weight_bucket: Mapped[str] = mapped_column(String(10))
    declared_value_paise: Mapped[int] = mapped_column(BigInteger, default=0)
    fragile: Mapped[bool] = mapped_column(Boolean, default=False)
    description: Mapped[str | None] = mapped_column(String(200))

    booking: Mapped[Booking] = relationship(back_populates="parcels")


class Leg(Base):
    """One partner's part of a booking: from a place or Point to the next."""

    __tablename__ = "legs"
    __table_args__ = (
        UniqueConstraint("booking_id", "sequence", name="uq_legs_booking_sequence"),
        CheckConstraint(one_of("status", LegStatus), name="status"),
        CheckConstraint("payout_paise >= 0", name="payout"),
        CheckConstraint("sequence >= 1", name="sequence"),
        # A partner's deliveries by day: earnings and dispatch's fairness term.
        Index("ix_legs_partner_delivered_at", "partner_id", "delivered_at",
              postgresql_where=text("delivered_at IS NOT NULL")),
        # The payments sweep's delivered legs of the last days, whose release it checks
        # (migration 0016).
        Index("ix_legs_delivered_at_with_partner", "delivered_at",
              postgresql_where=text("status = 'delivered' AND partner_id IS NOT NULL")),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    booking_id: Mapped[int] = mapped_column(ForeignKey("bookings.id"), index=True)
    sequence: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(12), index=True)
    from_point_id: Mapped[int | None] = mapped_column(ForeignKey("points.id"))
    to_point_id: Mapped[int | None] = mapped_column(ForeignKey("points.id"))
    from_lat: Mapped[float] = mapped_column(Float)
    from_lng: Mapped[float] = mapped_column(Float)
    to_lat: Mapped[float] = mapped_column(Float)
    to_lng: Mapped[float] = mapped_column(Float)
    distance_m: Mapped[int] = mapped_column(Integer)
    partner_id: Mapped[int | None] = mapped_column(ForeignKey("partner_profiles.id"), index=True)
    # OTPs are keyed hashes only (core.domain.otp), set when the leg is assigned; the plain
    # codes go out once, in the messages to the sender and the recipient.
    pickup_otp_hash: Mapped[str | None] = mapped_column(String(64))
    drop_otp_hash: Mapped[str | None] = mapped_column(String(64))
    otp_failures: Mapped[int] = mapped_column(Integer, default=0)
    payout_paise: Mapped[int] = mapped_column(BigInteger)
    pod_photo_url: Mapped[str | None] = mapped_column(Text)
    # When the drop was confirmed (set with the move to delivered, never after): what a
    # day's earnings count by. updated_at moves with later changes, such as a late photo.
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = created_col()
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )

    __mapper_args__ = {"version_id_col": version}

    booking: Mapped[Booking] = relationship(back_populates="legs")


class TransitionLog(Base):
    """Every state change of a booking or leg: who, when, why. Append-only."""

    __tablename__ = "transitions"
    __table_args__ = (
        CheckConstraint("entity IN ('booking', 'leg')", name="entity"),
        # A booking's or leg's history, and the sweeps that ask when a state was entered.
        Index("ix_transitions_entity_entity_id", "entity", "entity_id"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    entity: Mapped[str] = mapped_column(String(10))
    entity_id: Mapped[int] = mapped_column(BigInteger)
    from_status: Mapped[str | None] = mapped_column(String(20))
    to_status: Mapped[str] = mapped_column(String(20))
    actor: Mapped[str] = mapped_column(String(40))
    reason: Mapped[str] = mapped_column(String(200))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


# What scrub would still change in a message's last error (a superset: the pass below
# asks scrub itself): a number of 8 digits or more after "+" (or %2B), or a mobile's 10
# digits from a 6-9 (with what logs.mask_phones takes between digits: spaces, dashes,
# brackets, a dot); a WhatsApp id; a database error's row values; a signed URL's query.
# What scrub leaves has none ("+91******3210", "DETAIL: (values hidden)", "?(signed query
# hidden)"): a masked error is not read again, night after night.
_ERROR_GAP = "[-[:space:]().\u2010-\u2015]{0,2}"
UNMASKED_ERROR = (rf"(\+|%2b)[0-9]({_ERROR_GAP}[0-9]){{7}}|[6-9]({_ERROR_GAP}[0-9]){{9}}"
                  r"""|wa_?id["']?[[:space:]]*[:=][[:space:]]*["']?[0-9]{7}"""
                  r"|detail: (?!\(values hidden\))"
                  r"|x-amz-|signature=|awsaccesskeyid=|security-token=")


class OutboxMessage(Base):
    """A message we will send (written in the same transaction as its cause)."""

    __tablename__ = "outbox_messages"
    __table_args__ = (
        CheckConstraint(one_of("channel", ("whatsapp", "sms")), name="channel"),
        CheckConstraint(one_of("status", OUTBOX_STATUSES), name="status"),
        # /metrics counts the messages that failed lately (migration 0025): failures only.
        Index("ix_outbox_messages_failed_at", "failed_at",
              postgresql_where=text("status IN ('failed', 'undelivered')")),
        # The retention run's walks (migration 0036), over the texts not redacted yet
        # (retention.REDACTED): those to redact by age, the week's codes by when they went.
        Index("ix_outbox_messages_unredacted_created_at", "created_at", "id",
              postgresql_where=text("body <> '[removed]' OR media_url IS NOT NULL")),
        Index("ix_outbox_messages_unredacted_sent_at",
              func.coalesce(text("sent_at"), text("created_at")), "id",
              postgresql_where=text("body <> '[removed]'")),
        # The retention run's redacted_errors pass (migration 0053): the redacted messages
        # whose last error still shows what scrub masks (UNMASKED_ERROR).
        Index("ix_outbox_messages_unmasked_errors", "id", postgresql_where=text(
            "status IN ('failed', 'undelivered') AND body = '[removed]'"
            " AND last_error IS NOT NULL AND last_error ~* '"
            + UNMASKED_ERROR.replace("'", "''") + "'")),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    channel: Mapped[str] = mapped_column(String(10))
    # An erasure finds the messages to a number by it (migration 0022).
    to_addr: Mapped[str] = mapped_column(String(80), index=True)
    from_addr: Mapped[str] = mapped_column(String(80))
    body: Mapped[str] = mapped_column(Text)
    media_url: Mapped[str | None] = mapped_column(Text)
    # A natural key from the cause ("booking-123-created") so a retried cause adds no twin.
    dedupe_key: Mapped[str | None] = mapped_column(String(120), unique=True)
    booking_id: Mapped[int | None] = mapped_column(ForeignKey("bookings.id"), index=True)
    status: Mapped[str] = mapped_column(String(12), default="pending", index=True)
    provider_sid: Mapped[str | None] = mapped_column(String(64), unique=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error_code: Mapped[str | None] = mapped_column(String(16))
    last_error: Mapped[str | None] = mapped_column(String(300))
    created_at: Mapped[datetime] = created_col()
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )
    # When the status turned failed or undelivered (the database's now(), set by a trigger
    # of migration 0025 for every writer); updated_at moves with any later change (the
    # retention run's redaction, an erasure). NULL for a failure older than that migration.
    failed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True),
                                                       server_onupdate=FetchedValue())
    # Where the body says its one-time code, found when the row was written (the text was
    # just made from the catalog then): [[start, end], ...], character offsets, every place
    # the code is said; after masking, where the mask is. Masking goes by it, so a catalog
    # text reworded since changes nothing (core.services.outbox, migration 0033). NULL:
    # no code, or a row written before the column (masked by matching the catalog).
    code_spans: Mapped[list[list[int]] | None] = mapped_column(JSONB(none_as_null=True))
    # What the row is, as its writer told queue_message: "reply", "needed", "asked",
    # "work" or "plain" (a booking's by booking_id). The sender asks again whether a STOP
    # since ends it (core.services.outbox, migration 0040). NULL: a row written before.
    kind: Mapped[str | None] = mapped_column(String(8))


class MessageStatusEvent(Base):
    """Twilio's status callbacks as received (status history of an outbound message)."""

    __tablename__ = "message_status_events"
    # The retention run deletes them by age (migration 0036).
    __table_args__ = (Index("ix_message_status_events_received_at", "received_at", "id"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    outbox_id: Mapped[int | None] = mapped_column(ForeignKey("outbox_messages.id"), index=True)
    provider_sid: Mapped[str] = mapped_column(String(64), index=True)
    status: Mapped[str] = mapped_column(String(20))
    error_code: Mapped[str | None] = mapped_column(String(16))
    received_at: Mapped[datetime] = created_col()


class InboundEvent(Base):
    """Every webhook we processed, by the provider's id: a retry is answered, not redone."""

    __tablename__ = "inbound_events"
    __table_args__ = (
        UniqueConstraint("provider", "external_id", name="uq_inbound_events_provider_external"),
        # The rows holding an answer (the message window's SMS and call answers) among every
        # webhook kept for good: an erasure's search and the retention job (migration 0028).
        Index("ix_inbound_events_answered", "id",
              postgresql_where=text("response_body IS NOT NULL")),
        # The retention run's walks of the answers by age (migration 0036).
        Index("ix_inbound_events_answered_received_at", "received_at", "id",
              postgresql_where=text("response_body IS NOT NULL")),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    provider: Mapped[str] = mapped_column(String(20))
    external_id: Mapped[str] = mapped_column(String(80))
    channel: Mapped[str] = mapped_column(String(20))
    response_body: Mapped[str | None] = mapped_column(Text)
    received_at: Mapped[datetime] = created_col()


class Conversation(Base):
    """Where a contact is in a dialog on one channel; survives restarts."""

    __tablename__ = "conversations"
    __table_args__ = (
        UniqueConstraint("channel", "contact", name="uq_conversations_channel_contact"),
        CheckConstraint(one_of("channel", CHANNELS), name="channel"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    channel: Mapped[str] = mapped_column(String(10))
    contact: Mapped[str] = mapped_column(String(80))
    person_id: Mapped[int | None] = mapped_column(ForeignKey("people.id"), index=True)
    step: Mapped[str] = mapped_column(String(40), default="start")
    state: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    misses: Mapped[int] = mapped_column(Integer, default=0)
    handoff: Mapped[bool] = mapped_column(Boolean, default=False)
    last_inbound_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )


class SandboxMessage(Base):
    """What the sandbox Twilio emulator accepted (sandbox mode only; empty in production)."""

    __tablename__ = "sandbox_messages"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    sid: Mapped[str] = mapped_column(String(34), unique=True)
    account_sid: Mapped[str] = mapped_column(String(34))
    to_addr: Mapped[str] = mapped_column(String(80), index=True)
    from_addr: Mapped[str] = mapped_column(String(80))
    body: Mapped[str] = mapped_column(Text)
    media_url: Mapped[str | None] = mapped_column(Text)
    channel: Mapped[str] = mapped_column(String(10))
    status: Mapped[str] = mapped_column(String(12))
    status_callback: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = created_col()


class InboundParked(Base):
    """An inbound message that came while Redis was away (a WhatsApp message, or an SMS
    from a partner: ``inbound.answer``), as ``inbound.encode`` wrote it, until the
    sweep or a drain job queues it in Redis (migration 0050, whose docstring still says
    WhatsApp only; core.services.inbound.park)."""

    __tablename__ = "inbound_parked"
    __table_args__ = (
        UniqueConstraint("sid", name="uq_inbound_parked_sid"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    channel: Mapped[str] = mapped_column(String(20))
    contact: Mapped[str] = mapped_column(String(80))
    sid: Mapped[str] = mapped_column(String(80))
    message: Mapped[str] = mapped_column(Text)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = created_col()


class OpsDeferredAlert(Base):
    """A daytime ops alert raised outside the team's hours, kept until it is sent at their
    opening (``due_at``): by its RQ job, else by the dispatch sweep, so neither a failed
    run nor a Redis flush loses it (migration 0051; core.services.dispatch.alert_ops).
    Deleted in the transaction that queues its SMS."""

    __tablename__ = "ops_deferred_alerts"
    __table_args__ = (
        UniqueConstraint("dedupe_key", name="uq_ops_deferred_alerts_dedupe_key"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    dedupe_key: Mapped[str] = mapped_column(String(120))
    key: Mapped[str] = mapped_column(String(80))
    booking_id: Mapped[int | None] = mapped_column(BigInteger)
    params: Mapped[dict[str, Any]] = mapped_column(JSONB)
    due_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = created_col()

# Each area keeps its tables in its own module; importing them here puts every table in
# Base.metadata for Alembic and the tests; facts_watch registers the Session listeners
# that keep dispatch's cached partner facts honest, wherever these models are used.
from core.adapters import (  # noqa: E402,F401
    api_models,
    dialog_models,
    dispatch_models,
    facts_watch,
    payment_models,
)
