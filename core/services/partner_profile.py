"""Changing what a partner signed up with: their vehicle, their language, whether they
have the app.

A rider sells the bicycle and buys a motorcycle, a family phone changes hands and the
offers should come in Marathi, a rider gets a smartphone: the operator changes it here
(``PUT /api/v1/ops/partners/<id>/vehicle|language|app``). As the rest of core.services.admin:
each call runs in the caller's transaction under the partner's row lock, writes an
audit_log entry beside its change, and run again it finds what is there, says so and
changes nothing (nor audits anything). An erased partner is refused (``erased``).

What follows a change:

* the vehicle: the next search sees it (a committed change to a partner's vehicles drops
  their cached dispatch facts, core.adapters.facts_watch); an offer they hold for a
  parcel the new vehicle cannot carry is refused at their yes (dispatch.accept checks the
  fit again); jobs in hand stay theirs, as with a move of home Point;
* the language: every later offer, SMS and call to them is in it;
* the app: on duty, they are placed again in the dispatch home set (without the app they
  are found at their home Point; with it, only by a fresh position from the app).
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from core.adapters.models import PartnerProfile, Person, Vehicle
from core.domain.errors import ValidationError
from core.domain.pricing import VEHICLE_CAPACITY, VehicleType
from core.i18n import LANGUAGES
from core.logs import mask_phones
from core.services import dispatch
from core.services.admin import MIN_PAYLOAD_KG, Outcome, locked_partner, record


def _noted(note: str | None) -> dict[str, str]:
    return {"note": mask_phones(note)} if note else {}


def vehicle_of(p: PartnerProfile) -> Vehicle | None:
    """The partner's vehicle in use (the newest active one)."""
    active = [v for v in p.vehicles if v.active]
    return max(active, key=lambda v: v.id) if active else None


def set_vehicle(session: Session, partner_id: int, vehicle: str, payload_kg: int, *,
                actor: str, note: str | None = None) -> Outcome:
    """The partner rides ``vehicle`` carrying up to ``payload_kg`` now: their other
    vehicles are retired (kept, inactive: past legs name them) and this one is the one
    dispatch fits parcels to. The payload is checked as at sign-up (ValidationError
    ``bad_vehicle`` / ``bad_payload``). Same vehicle and payload again: nothing changed."""
    try:
        kind = VehicleType(vehicle)
    except ValueError:
        raise ValidationError(f"vehicle must be one of {', '.join(VehicleType)}",
                              code="bad_vehicle", field="vehicle") from None
    most = VEHICLE_CAPACITY[kind].max_weight.max_grams // 1000
    if isinstance(payload_kg, bool) or not isinstance(payload_kg, int) \
            or not MIN_PAYLOAD_KG <= payload_kg <= most:
        raise ValidationError(f"a {kind.value} carries {MIN_PAYLOAD_KG} to {most} kg (no "
                              f"parcel is offered to one that carries less than "
                              f"{MIN_PAYLOAD_KG} kg)", code="bad_payload", field="payload_kg")
    p, who = locked_partner(session, partner_id)
    now = vehicle_of(p)
    active = [v for v in p.vehicles if v.active]
    if now is not None and len(active) == 1 and now.type == kind.value \
            and now.payload_kg == payload_kg:
        return Outcome(False, p.id, f"{who} already rides a {kind.value} carrying "
                       f"{payload_kg} kg; nothing changed")
    for v in active:
        v.active = False
    p.vehicles.append(Vehicle(type=kind.value, payload_kg=payload_kg,
                              max_size=VEHICLE_CAPACITY[kind].max_size.value))
    session.flush()
    before = f"{now.type} {now.payload_kg} kg" if now is not None else None
    record(session, actor, "partner.vehicle", f"partner:{p.id}", before=before,
           after=f"{kind.value} {payload_kg} kg", **_noted(note))
    return Outcome(True, p.id, f"{who} rides a {kind.value} carrying {payload_kg} kg now "
                   f"(was {before or 'none'}); jobs in hand stay theirs")


def set_language(session: Session, partner_id: int, language: str, *, actor: str,
                 note: str | None = None) -> Outcome:
    """Offers, SMS and calls to the partner go in ``language`` from now on
    (ValidationError ``bad_language``). Same language again: nothing changed."""
    if language not in LANGUAGES:
        raise ValidationError(f"language must be one of {', '.join(LANGUAGES)}",
                              code="bad_language", field="language")
    p, who = locked_partner(session, partner_id)
    person = session.get(Person, p.person_id, with_for_update=True)
    assert person is not None, "a profile's person is never deleted (erasure blanks it)"
    before = person.preferred_language
    if before == language:
        return Outcome(False, p.id, f"{who} is written to in {language} already; "
                       "nothing changed")
    person.preferred_language = language
    record(session, actor, "partner.language", f"partner:{p.id}", before=before,
           after=language, **_noted(note))
    return Outcome(True, p.id, f"{who} is written to in {language} now (was "
                   f"{before or 'not chosen'})")


def set_has_app(session: Session, partner_id: int, has_app: bool, *, actor: str,
                note: str | None = None) -> Outcome:
    """Whether the partner works from the app (found by its fresh position) or by SMS
    alone (found at their home Point while on duty). Same again: nothing changed."""
    p, who = locked_partner(session, partner_id)
    if p.has_app is has_app:
        return Outcome(False, p.id, f"{who} {'has' if has_app else 'has no'} app already; "
                       "nothing changed")
    p.has_app = has_app
    session.flush()
    # The home set (Redis) follows once committed, as a move of home Point does.
    dispatch._home_follows_duty(session, p)
    record(session, actor, "partner.app", f"partner:{p.id}", before=not has_app,
           after=has_app, **_noted(note))
    how = ("found by the app's position" if has_app
           else "found at their home Point, offered jobs by SMS")
    return Outcome(True, p.id, f"{who} {'has the app' if has_app else 'has no app'} now: "
                   f"{how} while on duty")
