"""Partner app endpoints: the rider's profile, duty, live location, offers, jobs in hand
(and giving one back), pickup/drop with OTPs, photos, earnings.

The same dispatch service answers partners on SMS; here its replies (catalog keys) become
HTTP statuses: taken or expired offers are 409, a wrong OTP 422, a locked leg 423.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from core import clock, i18n
from core.adapters import storage
from core.adapters.db import transaction
from core.adapters.dispatch_models import DispatchOffer
from core.adapters.models import Booking, Leg, PartnerProfile, Person
from core.api import bp
from core.api.auth_guard import principal
from core.api.spec import ApiError, BodyLimit, Strict, endpoint
from core.config import get_settings
from core.domain.booking import LegStatus
from core.domain.errors import NotFound
from core.services import dispatch, partner_app

PARTNER = ("partner",)

# Dispatch replies that are not a success, as HTTP answers.
REPLY_STATUS = {
    "dispatch.taken": (409, "offer_taken"),
    "dispatch.offer_expired": (409, "offer_expired"),
    "dispatch.no_such_offer": (404, "not_found"),
    "dispatch.no_offer": (404, "not_found"),
    "dispatch.at_capacity": (409, "at_capacity"),
    "dispatch.already_yours": (409, "already_accepted"),
    "dispatch.cancel_hint": (409, "already_accepted"),
    "dispatch.no_such_job": (404, "not_found"),
    "dispatch.no_job": (404, "not_found"),
    "dispatch.otp_wrong": (422, "otp_wrong"),
    "dispatch.otp_locked": (423, "leg_locked"),
    "dispatch.otp_format_pick": (422, "validation_error"),
    "dispatch.otp_format_drop": (422, "validation_error"),
    "dispatch.pick_first": (409, "invalid_transition"),
    "dispatch.pick_first_handed": (409, "invalid_transition"),
    "dispatch.already_picked": (409, "invalid_transition"),
    "dispatch.already_delivered": (409, "invalid_transition"),
    "dispatch.cancel_too_late": (409, "invalid_transition"),
    "dispatch.duty_blocked": (403, "duty_blocked"),
    # KYC pending, or verified with no linked account: no duty and no job until they
    # can be paid.
    "dispatch.duty_pending_kyc": (403, "kyc_pending"),
    "dispatch.duty_no_payout_account": (403, "no_payout_account"),
    # Works by SMS (no app on their profile) and stopped our SMS: no offer could reach them.
    "dispatch.duty_sms_stopped": (403, "sms_stopped"),
    # Works by SMS, and their home Point is closed with no other they serve open: no
    # search could find them until ops give them a new home.
    "dispatch.duty_no_point": (403, "point_closed"),
    "dispatch.given_back": (409, "offer_closed"),
    "dispatch.withdrawn": (409, "offer_closed"),  # e.g. taking another job filled them up
    "dispatch.taken_from_you": (409, "offer_closed"),
    # The booking was cancelled (or failed) while the offer or the job was on the screen.
    "dispatch.job_cancelled": (409, "job_cancelled"),
    # The partner no longer fits the job (a vehicle retired, the trust tier lowered since
    # the offer went out): the offer is closed, the job goes to another partner.
    "dispatch.unfit_vehicle": (409, "offer_closed"),
    "dispatch.unfit_trust_tier": (409, "offer_closed"),
    # A relay's carrier at the Point before anyone took the next leg: nobody to hand the
    # parcel to yet; he keeps it safe and is told when the next rider comes.
    "dispatch.carrier_wait": (409, "next_rider_not_found"),
}

# Dispatch replies worded for SMS ("send PICK and the OTP"), with the app's own words: in
# the app a pickup or a drop is confirmed by entering the code on the job's screen. A job
# of theirs that is not theirs any more (the booking cancelled, or the job taken off them
# while the screen was open) is said so, not "Send STATUS", a command the app has not.
# A job of theirs is given back, and duty turned on again, in the app, not by CANCEL or ON.
# On duty in the app, the offers appear in it (not "by SMS").
APP_TEXT = {key: f"dispatch.app.{key.removeprefix('dispatch.')}" for key in (
    "dispatch.accepted", "dispatch.picked", "dispatch.pick_first",
    "dispatch.pick_first_handed", "dispatch.already_picked", "dispatch.no_such_job",
    "dispatch.cancel_hint", "dispatch.duty_on", "dispatch.duty_off",
    "dispatch.duty_off_assigned", "dispatch.duty_off_carrying", "dispatch.duty_off_handed",
    "dispatch.duty_off_jobs")}


class DutyIn(Strict):
    on_duty: bool


class DutyOut(BaseModel):
    on_duty: bool
    message: str = Field(description="what to show the rider: off duty with a job still in "
                                     "hand, that the job is still theirs and what to do")


class LocationIn(Strict):
    lat: float = Field(ge=-90, le=90)
    lng: float = Field(ge=-180, le=180)
    accuracy_m: float = Field(default=50, ge=0, le=5000)
    timestamp: datetime = Field(description="when the phone took the fix, with its time "
                                            "zone: at most 5 minutes old and 60 s ahead of "
                                            "the server's clock, and later than the last "
                                            "one sent. Send one every few seconds at most "
                                            "(more is 429, with Retry-After)")


class LocationOut(BaseModel):
    accepted: bool = Field(description="always true: a position refused is an error answer "
                                       "(422, or 429 when sent too often)")
    taken: bool = Field(description="whether this fix became the rider's position. False "
                                    "when a wide fix (accuracy_m over 500, the phone's "
                                    "network fix) agrees with a recent precise one: that "
                                    "one is kept, and lat/lng are its")
    lat: float = Field(description="the rider's position now, as dispatch and the "
                                   "customer's map see it: this fix's if taken, else the "
                                   "one kept (not the lat sent)")
    lng: float = Field(description="as lat: this fix's if taken, else the one kept")


class OfferOut(BaseModel):
    id: int
    leg_id: int
    booking_reference: str
    pickup: str | None
    drop: str | None
    distance_m: int
    payout_paise: int
    size: str | None
    weight: str | None
    expires_at: datetime
    expires_in_s: int = Field(description="seconds left to accept, by the server's clock "
                                          "(count down from this: a phone's own clock may "
                                          "be wrong)")


class ActionOut(BaseModel):
    result: str
    message: str
    leg_id: int | None = None
    leg_status: LegStatus | None = None


class OtpIn(Strict):
    otp: str = Field(pattern=r"^\s*\d{4}\s*$")


class PhotoOut(BaseModel):
    leg_id: int
    stored: bool
    size_bytes: int
    proof_of_delivery: bool = Field(description="the leg's proof of delivery (taken after "
                                                "the drop was confirmed); false: kept as a "
                                                "pickup photo (taken before the drop)")


class VehicleOut(BaseModel):
    type: str
    payload_kg: int
    max_size: str
    registration: str | None


class ProfileOut(BaseModel):
    partner_id: int
    name: str
    language: str
    on_duty: bool
    kyc_status: str
    payable: bool = Field(description="can work: KYC verified and a payout account linked "
                                      "(working by SMS: SMS not stopped, and an open "
                                      "Point to be placed at)")
    not_payable_reason: partner_app.NotPayable | None = Field(
        description="why not, in the codes PUT /partners/me/duty refuses with")
    payout_account_masked: str | None
    rating: float = Field(description="0 to 5")
    vehicles: list[VehicleOut]


class JobOut(BaseModel):
    leg_id: int
    booking_reference: str
    leg_status: LegStatus
    handed_over: bool = Field(description="a relay parcel handed over to you (the leg is "
                                          "still assigned): yours, confirm the pickup")
    pickup: str | None
    drop: str | None
    pickup_phone: str | None = Field(
        description="whom to call at the pickup while the parcel is still to collect: the "
                    "sender, or on a relay the rider handing it over (null: nobody yet, or "
                    "the parcel is picked up)")
    drop_name: str | None = Field(
        description="whom to give the parcel to at the drop, once it is in your hands on "
                    "its last leg (null before that, on a leg ending at a Point, or no "
                    "name given)")
    drop_phone: str | None = Field(
        description="her number to call, at the same times as drop_name (null: not yet, "
                    "or none kept); the sender's when drop_phone_is_sender")
    drop_phone_is_sender: bool = Field(
        False, description="drop_phone is the sender's: the recipient's number told us the "
                           "parcel is not hers, the sender has the code and knows where "
                           "it goes")
    payout_paise: int


class EarningsOut(BaseModel):
    today_paise: int
    week_paise: int
    total_paise: int = Field(description="payouts of the jobs delivered and fees, less "
                                         "payouts reversed and given to the customer or "
                                         "written off")
    delivered_legs: int
    fees_paise: int = Field(description="part of the totals: cancellation fees for trips "
                                        "the customer cancelled after you were assigned")


def _me(session: Session) -> tuple[Person, PartnerProfile]:
    who = principal()
    person = session.get(Person, who.person_id)
    partner = session.scalar(select(PartnerProfile).where(
        PartnerProfile.person_id == who.person_id))
    if person is None or partner is None:
        raise ApiError(403, "forbidden", "this account has no partner profile")
    return person, partner


def _lang(person: Person) -> str:
    return person.preferred_language or i18n.DEFAULT_LANGUAGE


def _text(reply: dispatch.Reply, person: Person) -> str:
    """A dispatch reply in the rider's language, in the app's words where SMS's differ."""
    return i18n.t(APP_TEXT.get(reply.key, reply.key), _lang(person), **reply.params)


def _answer(reply: dispatch.Reply, person: Person, ok_key: str, leg: Leg | None) -> ActionOut:
    message = _text(reply, person)
    if reply.key != ok_key:
        status, code = REPLY_STATUS.get(reply.key, (409, "conflict"))
        raise ApiError(status, code, message)
    return ActionOut(result=ok_key.split(".")[-1], message=message,
                     leg_id=leg.id if leg else None,
                     leg_status=LegStatus(leg.status) if leg else None)


@endpoint(bp, "GET", "/partners/me", summary="My profile, and whether I can work",
          roles=PARTNER, response=ProfileOut, tags=("partner",), errors=(403,))
def get_me() -> ProfileOut:
    with transaction() as session:
        person, partner = _me(session)
        p = partner_app.profile(session, person, partner, i18n.DEFAULT_LANGUAGE)
    return ProfileOut(
        partner_id=p.partner_id, name=p.name, language=p.language, on_duty=p.on_duty,
        kyc_status=p.kyc_status, payable=p.payable,
        not_payable_reason=p.not_payable_reason,
        payout_account_masked=p.payout_account_masked, rating=p.rating,
        vehicles=[VehicleOut(type=v.type, payload_kg=v.payload_kg, max_size=v.max_size,
                             registration=v.registration) for v in p.vehicles])


@endpoint(bp, "PUT", "/partners/me/duty", summary="Go on or off duty", roles=PARTNER,
          body=DutyIn, response=DutyOut, tags=("partner",), errors=(403,))
def put_duty(body: DutyIn) -> DutyOut:
    with transaction() as session:
        person, partner = _me(session)
        reply = dispatch.set_duty(session, partner, body.on_duty)
        # Suspended or rejected, not payable yet (KYC pending, no payout account), out
        # of reach by SMS, or placed nowhere (Point closed): the reason, said.
        if reply.key in ("dispatch.duty_blocked", "dispatch.duty_pending_kyc",
                         "dispatch.duty_no_payout_account", dispatch.DUTY_SMS_STOPPED,
                         dispatch.DUTY_NO_POINT):
            status, code = REPLY_STATUS[reply.key]
            raise ApiError(status, code, reply.render(_lang(person)))
        # Off with a job still in hand, the job is still theirs: said, as over SMS.
        return DutyOut(on_duty=partner.on_duty, message=_text(reply, person))


@endpoint(bp, "PUT", "/partners/me/location", summary="Report the phone's live position",
          roles=PARTNER, body=LocationIn, response=LocationOut, tags=("partner",),
          errors=(429,))
def put_location(body: LocationIn) -> LocationOut:
    with transaction() as session:
        _, partner = _me(session)
        partner_id = partner.id
    got = partner_app.report_location(partner_id, body.lat, body.lng, body.accuracy_m,
                                      body.timestamp)
    return LocationOut(accepted=True, taken=got.taken, lat=got.fix.lat, lng=got.fix.lng)


@endpoint(bp, "GET", "/partners/me/offers", summary="My open job offers", roles=PARTNER,
          response=list[OfferOut], tags=("partner",))
def get_offers() -> list[OfferOut]:
    with transaction() as session:
        _, partner = _me(session)
        out = []
        now = clock.now()
        for offer in dispatch.open_offers_of(session, partner):
            leg = session.get(Leg, offer.leg_id)
            assert leg is not None
            booking = session.get(Booking, leg.booking_id)
            assert booking is not None
            parcel = booking.parcels[0] if booking.parcels else None
            out.append(OfferOut(
                id=offer.id, leg_id=leg.id, booking_reference=booking.reference,
                # Named as the offer SMS names them: a relay leg's Points too.
                pickup=dispatch.place(session, booking, leg, "from"),
                drop=dispatch.place(session, booking, leg, "to"),
                distance_m=leg.distance_m, payout_paise=leg.payout_paise,
                size=parcel.size_bucket if parcel else None,
                weight=parcel.weight_bucket if parcel else None, expires_at=offer.expires_at,
                # Whole seconds, rounded down: the app never shows time that is not there.
                expires_in_s=max(0, int((offer.expires_at - now).total_seconds()))))
        return out


@endpoint(bp, "GET", "/partners/me/jobs", summary="My jobs in hand (taken, not delivered)",
          roles=PARTNER, response=list[JobOut], tags=("partner",))
def get_jobs() -> list[JobOut]:
    with transaction() as session:
        _, partner = _me(session)
        out = []
        for leg in dispatch.active_legs_of(session, partner):
            booking = session.get(Booking, leg.booking_id)
            assert booking is not None
            to = partner_app.drop_contact(session, booking, leg)
            out.append(JobOut(
                leg_id=leg.id, booking_reference=booking.reference,
                leg_status=LegStatus(leg.status),
                handed_over=dispatch.handed_over_to(session, leg),
                # Named as the SMS names them (STATUS): a relay leg's Points too.
                pickup=dispatch.place(session, booking, leg, "from"),
                drop=dispatch.place(session, booking, leg, "to"),
                # As the accept's answer gave it: an answer lost on 2G loses no phone.
                pickup_phone=(partner_app.pickup_contact(session, booking, leg)
                              if leg.status == LegStatus.ASSIGNED.value else None),
                drop_name=to.name if to else None, drop_phone=to.phone if to else None,
                drop_phone_is_sender=bool(to and to.sender),
                payout_paise=leg.payout_paise))
        return out


def _my_offer(session: Session, partner: PartnerProfile, offer_id: int) -> DispatchOffer:
    offer = session.get(DispatchOffer, offer_id)
    if offer is None or offer.partner_id != partner.id:
        raise NotFound("no such offer", code="not_found")
    return offer


@endpoint(bp, "POST", "/offers/<int:offer_id>/accept", summary="Accept a job offer",
          roles=PARTNER, response=ActionOut, tags=("partner",), errors=(403, 404, 409))
def accept_offer(offer_id: int) -> ActionOut:
    with transaction() as session:
        person, partner = _me(session)
        offer = _my_offer(session, partner, offer_id)
        # By its id: never another offer of the same job (partner_app.answer_offer).
        reply = partner_app.answer_offer(session, partner, offer, "accept")
        result = _answer_or_keep(session, reply, person, "dispatch.accepted",
                                 session.get(Leg, offer.leg_id))
        first = (partner_app.accepted_again(session, partner, offer)
                 if reply.key == "dispatch.already_yours" else None)
        if first is not None:
            # An accept sent again (its answer lost on 2G, the app retried) while the job
            # is still to pick up: 409 already_accepted as ever, in the first answer's
            # words, which carry where and whom to collect from (not only "already yours").
            result = ApiError(*REPLY_STATUS[reply.key], _text(first, person))
    return _raise_or_return(result)


@endpoint(bp, "POST", "/offers/<int:offer_id>/decline", summary="Decline a job offer",
          roles=PARTNER, response=ActionOut, tags=("partner",), errors=(403, 404, 409))
def decline_offer(offer_id: int) -> ActionOut:
    with transaction() as session:
        person, partner = _me(session)
        offer = _my_offer(session, partner, offer_id)
        # A decline sent again (its answer lost, the app retried) is answered "declined"
        # as over SMS; an offer closed otherwise is said so by dispatch, in their words.
        reply = partner_app.answer_offer(session, partner, offer, "decline")
        result = _answer_or_keep(session, reply, person, "dispatch.declined",
                                 session.get(Leg, offer.leg_id))
    return _raise_or_return(result)


# A give-back refused, said precisely: the parcel is with them already (picked up, or
# handed over at a Point) or delivered; the others as on every leg route.
GIVE_BACK_STATUS = {
    "dispatch.cancel_too_late": (409, "already_picked_up"),
    "dispatch.already_delivered": (409, "already_delivered"),
}


@endpoint(bp, "POST", "/legs/<int:leg_id>/give-back",
          summary="Give back a job taken but not picked up (it goes to another rider)",
          roles=PARTNER, response=ActionOut, tags=("partner",), errors=(404, 409, 423))
def give_back_leg(leg_id: int) -> ActionOut:
    with transaction() as session:
        person, partner = _me(session)
        reply = partner_app.give_back(session, partner, leg_id)
        result: ActionOut | ApiError
        if reply.key in GIVE_BACK_STATUS:
            status, code = GIVE_BACK_STATUS[reply.key]
            result = ApiError(status, code, reply.render(_lang(person)))
        else:
            result = _answer_or_keep(session, reply, person, "dispatch.cancelled",
                                     session.get(Leg, leg_id))
    return _raise_or_return(result)


def _my_leg(session: Session, person: Person, partner: PartnerProfile, leg_id: int,
            kind: str) -> Leg:
    leg = session.get(Leg, leg_id)
    if leg is None or leg.partner_id != partner.id:
        raise _not_yours(session, person, partner, leg, kind)
    return leg


def _not_yours(session: Session, person: Person, partner: PartnerProfile, leg: Leg | None,
               kind: str) -> ApiError | NotFound:
    """The answer to a pickup, a drop or a photo of a leg that is not the rider's. One they held
    once (given back, or taken back: by the pickup timer, or by ops suspending them) is
    said as dispatch says a job taken off them while the request waited, in their words:
    no longer theirs; and to a pickup by a rider suspended since, that they cannot take
    jobs now and whom to call, as PICK by SMS answers (not "no such job", which reads as
    the app broken at the sender's door); its booking cancelled since, 409 job_cancelled.
    Any other leg: the bare 404, naming nothing."""
    if leg is None or not partner_app.held_once(session, partner, leg.id):
        return NotFound("no such job", code="not_found")
    if kind == "pickup" and partner.kyc_status in dispatch.BLOCKED_KYC:
        reply = dispatch.Reply("dispatch.duty_blocked",
                               {"ops_phone": get_settings().ops_phone})
    elif partner_app.job_off(session, leg):
        reply = dispatch.Reply("dispatch.job_cancelled", {"job": dispatch.job_code(leg)})
    else:
        reply = dispatch.Reply("dispatch.no_such_job", {"job": dispatch.job_code(leg)})
    status, code = REPLY_STATUS[reply.key]
    return ApiError(status, code, _text(reply, person))


def _confirm(leg_id: int, kind: str, otp: str, ok_key: str) -> ActionOut:
    with transaction() as session:
        person, partner = _me(session)
        leg = _my_leg(session, person, partner, leg_id, kind)
        job = dispatch.job_code(leg)
        if leg.status not in dispatch.ACTIVE_LEG_STATES:
            # The URL names the leg, and no code names another: dispatch reads "DROP <code>
            # <job>" as SMS, where a number equal to one of his active jobs is that job, so
            # a retried drop of a delivered leg whose code was another job's number went to
            # that job (its code checked, a try counted). Answered as dispatch answers a
            # job of his not active (delivered, or handed on, cancelled), the code unread.
            # Its booking cancelled (the leg stopped, still naming him): said so, as his
            # yes to its offer is (409 job_cancelled), not "no longer yours".
            if leg.status == LegStatus.DELIVERED.value:
                key = "dispatch.already_delivered"
            elif partner_app.job_off(session, leg):
                key = "dispatch.job_cancelled"
            else:
                key = "dispatch.no_such_job"
            reply = dispatch.Reply(key, {"job": job})
        else:
            # Active, the leg is in the job numbers dispatch reads, so it is the job taken
            # whatever the code. retries: the app sends a request again when its answer
            # was lost; the same wrong code again is that request, not a second try.
            reply = dispatch.confirm(session, partner, kind, (otp.strip(), job),
                                     retries=True)
        result = _answer_or_keep(session, reply, person, ok_key, leg)
    return _raise_or_return(result)


def _raise_or_return(result: ActionOut | ApiError) -> ActionOut:
    # Raised only after the commit: what the refusal changed (a wrong OTP counted, a lock,
    # an expired offer closed) is kept, exactly as over SMS.
    if isinstance(result, ApiError):
        raise result
    return result


def _answer_or_keep(session: Session, reply: dispatch.Reply, person: Person, ok_key: str,
                    leg: Leg | None) -> ActionOut | ApiError:
    if leg is not None:
        session.flush()
        session.refresh(leg)
    try:
        return _answer(reply, person, ok_key, leg)
    except ApiError as exc:
        return exc


@endpoint(bp, "POST", "/legs/<int:leg_id>/pickup", summary="Confirm pickup with the OTP",
          roles=PARTNER, body=OtpIn, response=ActionOut, tags=("partner",),
          errors=(403, 404, 409, 423))
def pickup_leg(leg_id: int, body: OtpIn) -> ActionOut:
    return _confirm(leg_id, "pickup", body.otp, "dispatch.picked")


@endpoint(bp, "POST", "/legs/<int:leg_id>/drop",
          summary="Confirm delivery with the OTP (at a relay's Point, the next rider's "
                  "code; 409 next_rider_not_found while nobody has taken the next leg: "
                  "keep the parcel, you are told when someone does)",
          roles=PARTNER, body=OtpIn, response=ActionOut, tags=("partner",),
          errors=(404, 409, 423))
def drop_leg(leg_id: int, body: OtpIn) -> ActionOut:
    return _confirm(leg_id, "drop", body.otp, "dispatch.delivered")


@endpoint(bp, "POST", "/legs/<int:leg_id>/photo",
          summary="Upload a photo: after the drop, the proof of delivery; with the parcel "
                  "in hand before it, a pickup photo", roles=PARTNER, response=PhotoOut,
          status=201, tags=("partner",), errors=(404, 409, 422, 503),
          raw_body=("image/jpeg", "image/png", "image/webp"),
          raw_limit=BodyLimit(lambda: storage.load_config().max_bytes, "photo_too_large",
                              "the photo"))
def upload_photo(leg_id: int, raw: bytes) -> PhotoOut:
    from flask import request

    if not raw:
        raise ApiError(400, "empty_body", "the photo is empty")
    with transaction() as session:
        _, partner = _me(session)
        partner_id = partner.id
    try:
        photo = partner_app.upload_photo(partner_id, leg_id, raw, request.mimetype)
    except NotFound:  # not theirs (any more): said as a pickup or drop of it is
        with transaction() as session:
            person, partner = _me(session)
            raise _not_yours(session, person, partner, session.get(Leg, leg_id),
                             "photo") from None
    return PhotoOut(leg_id=photo.leg_id, stored=True, size_bytes=photo.size_bytes,
                    proof_of_delivery=photo.proof_of_delivery)


@endpoint(bp, "GET", "/partners/me/earnings", summary="What I earned", roles=PARTNER,
          response=EarningsOut, tags=("partner",))
def get_earnings() -> EarningsOut:
    with transaction() as session:
        _, partner = _me(session)
        e = partner_app.earnings(session, partner.id)
    return EarningsOut(today_paise=e.today_paise, week_paise=e.week_paise,
                       total_paise=e.total_paise, delivered_legs=e.delivered_legs,
                       fees_paise=e.fees_paise)
