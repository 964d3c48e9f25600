"""The booking dialog for the phone (IVR): the same engine, slots, ports and validation as
the WhatsApp dialog in core.dialog.booking, with steps a caller can answer on a keypad.

What differs from the chat: places are keyed in as 6-digit pincodes (finished with #),
read back digit by digit, then the village post office is picked from a spoken list
(9 = more, 8 = key the pincode again) and confirmed; the recipient is a 10-digit mobile
number read back for confirmation; the parcel is its size and weight only (category
"other", not fragile, no declared value: things a keypad cannot say well); fares are said
in words. Cancelling lists only the bookings that can still be cancelled, each named by
where it goes and its number's last digits, then says the refund or fee in words (the
chat's rules and ports: core.dialog.booking). Names of things to say are catalog keys
under ``ivr.``.

Channel rules the engine does not know (silence, ``*`` to repeat, turns per call,
``<Dial>``) live in core.services.ivr; a step asks for one with ``data["call_action"]``.
"""

from __future__ import annotations

from typing import Any

from core.dialog import spoken, words
from core.dialog.booking import (
    BOOKING,
    MENU,
    SIZES,
    WEIGHTS,
    _choice_step,
    _speed_handle,
    cancel_as_shown,
    cancel_kind,
    change_step,
    choice,
    confirm_as_shown,
    end_cancel,
    is_the_other_end,
    keep_shown,
    not_allowed_kind,
    offered_tiers,
    person_said,
    quote_or_resize,
    said_name,
    same_office,
    tier_gone,
)
from core.dialog.engine import (
    Choices,
    Ctx,
    Dialog,
    Goto,
    Out,
    Redirect,
    Result,
    Retry,
    Say,
    Stay,
    Step,
    UserInput,
)
from core.dialog.ports import TO_YOU
from core.domain.errors import ValidationError
from core.domain.office_names import told_apart
from core.domain.phone import is_indian_mobile, normalize_phone
from core.domain.reference import is_valid_reference, normalize_reference
from core.i18n import LANGUAGES

PAGE_SIZE = 7  # villages per page: 1..7, 8 = key the pincode again, 9 = more
AGAIN = 8
MORE = 9
# state.data key: the page of a village list a 9 just turned to ({"list": which list,
# "page": its number}), for core.services.ivr, which counts no turn to a page not heard
# yet in the call: a pincode of 126 villages is 18 pages, and a caller who must go
# through them is not making a mistake.
PAGE_TURNED = "call_page"
# state.data key: what the caller's answer just finished ("booked:<ref>", "cancel:<ref>",
# "track:<ref>"), for core.services.ivr, which gives each thing done in a call its own
# budget of answers: a shopkeeper booking three parcels in one call is not going round.
FINISHED = "call_finished"
LANGUAGE_KEY = 4  # the menu's "change the language", also taken at "finish your booking?"
RECENT_BOOKINGS = 3  # offered first when tracking
SHORT_REF = 4  # a booking to cancel is named by its place and its number's last digits

# Steps answered by several digits ended with '#' (the most digits expected); every other
# step takes a single key.
ENTRY_DIGITS: dict[str, int] = {"pickup": 6, "drop": 6, "recipient_phone": 10, "track": 8,
                                 "link_phone": 10}
# Steps where the caller has what they called for (a booking made, the pickup code heard,
# perhaps being written down): silence ends the call with thanks and goodbye.
DONE_ON_SILENCE = frozenset({"done", "code_again"})
# Steps where silence ends the call politely at once (the caller is done, or was already
# offered a person).
END_ON_SILENCE = DONE_ON_SILENCE | {"offer_person"}
# state.data key: the caller was just told to wait and press a key again in a minute (the
# payment link for another phone is still being made), at the step they are now at. For
# core.services.ivr, where silence at that step then repeats its prompt instead of ending
# the call (DONE_ON_SILENCE): waiting as told is not "that is all".
TOLD_TO_WAIT = "call_told_to_wait"
# state.data key: a "1 = cancel" that cancelled nothing because the refund or fee changed
# since the caller heard them (the booking's reference), for core.services.ivr: a caller
# whose key came after his call was closed (its late keys) hears nothing on the line, so
# he is told by SMS that nothing was cancelled. Popped by every turn, never kept.
NOT_CANCELLED = "call_not_cancelled"

# Slots a keypad caller is not asked for, with the values their booking gets.
VOICE_DEFAULTS: dict[str, Any] = {"category": "other", "fragile": False, "value_paise": 0,
                                  "recipient_name": None}

_DRAFT_DATA = ("slots", "return_to", "draft_step", "offices", "page", "pin", "place_pick",
               "phone_pick", "shown_total", "spot")


def clear_draft(ctx: Ctx) -> None:
    for key in _DRAFT_DATA:
        ctx.state.data.pop(key, None)


def has_draft(data: dict[str, Any]) -> bool:
    """A half-finished booking worth offering again: a place chosen and a step to go back to."""
    slots = data.get("slots") or {}
    return bool(slots.get("pickup") and data.get("draft_step"))


def full_slots(slots: dict[str, Any]) -> dict[str, Any]:
    """The slots with the values a caller is not asked for."""
    return {**VOICE_DEFAULTS, **slots}


def amount(paise: int, lang: str) -> Say:
    """An amount as it is said: "बारह सौ पचास रुपये", with its paise when it has any
    ("पच्चीस रुपये पचास पैसे"). Fares are whole rupees, but a cancellation fee is a share
    of one: said rounded, a fee and its refund would add up to more or less than was paid.
    One rupee and one paisa are said in the singular ("one rupee", "एक रुपया", not "one
    rupees", "एक रुपये"), and an amount under a rupee by its paise only ("fifty paise",
    not "zero rupees and fifty paise")."""
    rupees, paise_part = spoken.rupees_and_paise(paise)
    said_rupees = (Say("ivr.amount_one") if rupees == 1 else
                   Say("ivr.amount", {"rupees": spoken.number_words(rupees, lang)}))
    if not paise_part:
        return said_rupees
    said_paise = (Say("ivr.amount_paisa_one") if paise_part == 1 else
                  Say("ivr.amount_only_paise", {"paise": spoken.number_words(paise_part, lang)}))
    if not rupees:
        return said_paise
    if rupees == 1 or paise_part == 1:
        return Say("ivr.amount_parts", {"rupees": said_rupees, "paise": said_paise})
    return Say("ivr.amount_paise", {"rupees": spoken.number_words(rupees, lang),
                                    "paise": spoken.number_words(paise_part, lang)})


def _dial(ctx: Ctx, reason: str) -> Result:
    """Put the caller through to ops, on the waiting list first (as a chat's "talk to a
    person" is): if nobody answers, ops still have someone to call back. Outside the
    team's hours nobody's mobile rings: the caller hears when we call back, and goodbye."""
    info = ctx.ports.talk_to_person(reason)
    if not info.get("open", True):
        ctx.state.data["call_action"] = "hangup"
        return Goto(MENU, [person_said(info, "ivr.person.connecting", "ivr.person.after_hours")],
                    prompt=False)
    ctx.state.data["call_action"] = "dial"
    return Goto(MENU, [Say("ivr.person.connecting")], prompt=False)


# --- language and the main menu --------------------------------------------------------

def _language_prompt(ctx: Ctx) -> list[Out]:
    return [Say("voice.language_option", lang=lang) for lang in LANGUAGES]


def listed_language(text: str) -> str | None:
    """The language whose key on the language list ``text`` is ("5": Tamil), else None."""
    num = words.number(text)
    return LANGUAGES[num - 1] if num is not None and 1 <= num <= len(LANGUAGES) else None


def _language_handle(ctx: Ctx, inp: UserInput) -> Result:
    lang = listed_language(inp.text)
    if lang is None:
        return Retry()
    ctx.ports.set_language(lang)
    ctx.lang = lang
    return Goto(MENU, [Say("ivr.hint")])


def _menu_prompt(ctx: Ctx) -> list[Out]:
    return [Say("ivr.menu")]


def _menu_handle(ctx: Ctx, inp: UserInput) -> Result:
    picked = choice(inp, 5)
    if picked == 1:
        if has_draft(ctx.state.data):
            return Goto("resume")
        clear_draft(ctx)
        return Goto("pickup")
    if picked == 2:
        return Goto("track")
    if picked == 3:
        return _dial(ctx, "asked")
    if picked == LANGUAGE_KEY:
        return Goto("language")
    if picked == 5:
        found = _cancellable(ctx)
        if not found:
            return Stay([Say("ivr.cancel.none")])
        # Read by the list's prompt in this same turn: each refund is worked out once.
        ctx.state.data[_CANCELLABLE] = found
        return Goto("cancel_pick")
    return Retry()


def _right_or_again() -> Choices:
    return Choices((Say("ivr.choice.right"), Say("ivr.choice.again")))


def _resume_prompt(ctx: Ctx) -> list[Out]:
    pickup = ctx.slots.get("pickup") or {}
    return [Say("ivr.resume.ask", {"place": said_name(pickup)}),
            Choices((Say("ivr.resume.continue"), Say("ivr.resume.fresh")))]


def _resume_handle(ctx: Ctx, inp: UserInput) -> Result:
    """1 finishes the draft, 2 starts afresh. A call from a number with a draft opens here,
    not at the menu, so the menu's key to the language list is taken here too (said in
    each other language at the call's start: ivr._start): whoever else shares the phone
    can get their language before answering. The draft stays (the menu's 1 offers it)."""
    picked = choice(inp, LANGUAGE_KEY)
    if picked == LANGUAGE_KEY:
        return Goto("language")
    if picked == 1:
        return Goto(ctx.state.data.pop("draft_step", None) or "pickup")
    if picked == 2:
        clear_draft(ctx)
        return Goto("pickup")
    return Retry()


# --- places: pincode, village, confirm -------------------------------------------------

def _place_steps(kind: str, default_next: str) -> list[Step]:
    """``kind`` ("pickup"/"drop"): key the pincode, pick the village, confirm it."""
    where, office, check, spot = kind, f"{kind}_office", f"{kind}_check", f"{kind}_spot"

    def where_prompt(ctx: Ctx) -> list[Out]:
        return [Say(f"ivr.{kind}.ask")]

    def where_handle(ctx: Ctx, inp: UserInput) -> Result:
        digits = words.only_digits(inp.text) or ""
        if len(digits) != 6:
            return Retry([Say("ivr.place.bad_pincode")])
        res = ctx.ports.offices(digits)
        if res.kind == "error":
            return Retry([Say("ivr.place.unknown", {"digits": spoken.spell_digits(digits)})])
        if res.kind == "outside":
            return Stay([_outside(res)])
        # Two offices of one name (Arjunganj BO and SO) are each said with a word that
        # tells them apart, and booked by a name that does.
        ctx.state.data.update(offices=told_apart(res.offices), page=0, pin=digits)
        if len(res.offices) == 1:
            ctx.state.data["place_pick"] = res.offices[0]
            return Goto(check)
        return Goto(office)

    def shown(ctx: Ctx) -> list[dict[str, Any]]:
        offices = ctx.state.data.get("offices") or []
        page = ctx.state.data.get("page", 0)
        return offices[page * PAGE_SIZE:(page + 1) * PAGE_SIZE]

    def office_prompt(ctx: Ctx) -> list[Out]:
        offices = ctx.state.data.get("offices") or []
        pin = ctx.state.data.get("pin", "")
        more: list[Out] = []
        if len(offices) > PAGE_SIZE:
            # On the last page 9 starts the list again (office_handle): no "more names".
            last = (ctx.state.data.get("page", 0) + 1) * PAGE_SIZE >= len(offices)
            more = [Say("ivr.more_again" if last else "ivr.more")]
        # The keys in the order they are pressed: the names 1..7, 8 (key the pincode
        # again), then 9 (more names); the list's own "9 = more" would come before the 8.
        return [Say("ivr.place.pincode", {"digits": spoken.spell_digits(pin)}),
                Say("ivr.place.choose"),
                Choices(tuple(said_name(o) for o in shown(ctx))),
                Say("ivr.place.reenter"),
                *more]

    def office_handle(ctx: Ctx, inp: UserInput) -> Result:
        offices = ctx.state.data.get("offices") or []
        if not offices:
            return Goto(where)
        num = words.number(inp.text)
        if num == MORE and len(offices) > PAGE_SIZE:
            pages = (len(offices) + PAGE_SIZE - 1) // PAGE_SIZE
            page = (ctx.state.data.get("page", 0) + 1) % pages
            ctx.state.data["page"] = page
            ctx.state.data[PAGE_TURNED] = {
                "list": f"{kind}:{ctx.state.data.get('pin', '')}", "page": page}
            return Stay()
        if num == AGAIN:
            return Goto(where)
        page = shown(ctx)
        if num is None or not 1 <= num <= len(page):
            return Retry()
        picked = page[num - 1]
        res = ctx.ports.check_area(picked)
        if res.kind == "outside":
            return Goto(where, [_outside(res)])
        ctx.state.data["place_pick"] = picked
        return Goto(check)

    def check_prompt(ctx: Ctx) -> list[Out]:
        place = ctx.state.data.get("place_pick") or {}
        return [Say("ivr.place.confirm", {
            "place": said_name(place),
            "digits": spoken.spell_digits(place.get("pincode") or "")}), _right_or_again()]

    def check_handle(ctx: Ctx, inp: UserInput) -> Result:
        picked = choice(inp, 2)
        place = ctx.state.data.get("place_pick")
        if place is None or picked == 2:
            return Goto(where)
        if picked != 1:
            return Retry()
        for key in ("offices", "page", "pin", "place_pick"):
            ctx.state.data.pop(key, None)
        if is_the_other_end(ctx, kind, place):
            other = ctx.slots["drop" if kind == "pickup" else "pickup"]
            if same_office(place, other):  # nothing to carry: ask for this end again
                return Goto(where, [Say("ivr.place.same")])
            # Two villages India Post puts at one spot (often their pincode's centre): not
            # one place, but no distance to price by, and a keypad cannot send a location
            # pin as the chat does. A person can book it, or a nearby village will do.
            ctx.state.data["spot"] = {"place": _named(place), "other": _named(other)}
            return Goto(spot)
        ctx.slots[kind] = place
        return Goto(ctx.after(default_next))

    def spot_prompt(ctx: Ctx) -> list[Out]:
        names = ctx.state.data.get("spot") or {}
        return [Say("ivr.place.one_spot", {"place": _said(names.get("place")),
                                           "other": _said(names.get("other"))}),
                Choices((Say("ivr.place.spot_person"), Say("ivr.place.spot_other")))]

    def spot_handle(ctx: Ctx, inp: UserInput) -> Result:
        picked = choice(inp, 2)
        if picked == 1:
            ctx.state.data.pop("spot", None)
            # The draft stays: called again, they can finish it (a nearby village).
            ctx.state.data["draft_step"] = where
            return _dial(ctx, "asked")
        if picked == 2:
            ctx.state.data.pop("spot", None)
            return Goto(where)
        return Retry()

    return [
        Step(where, where_prompt, where_handle, "ivr.pickup.ask", BOOKING),
        Step(office, office_prompt, office_handle, "ivr.place.choose", BOOKING),
        Step(check, check_prompt, check_handle, "ivr.place.choose", BOOKING),
        Step(spot, spot_prompt, spot_handle, "ivr.hint", BOOKING),
    ]


def _named(place: dict[str, Any]) -> dict[str, Any]:
    """What ``said_name`` needs of a place, kept in the call's state."""
    return {k: place[k] for k in ("name", "called", "apart") if place.get(k) is not None}


def _said(named: dict[str, Any] | str | None) -> Say | str:
    """``_named``'s place said (a plain name, as a draft kept before told it)."""
    return said_name(named) if isinstance(named, dict) else named or ""


def spoken_km(km: str) -> str:
    """Kilometres as the voice says them: "14", not "14.0" ("fourteen point zero")."""
    return km.removesuffix(".0")


def _outside(res: Any) -> Say:
    if res.point:
        return Say("ivr.place.outside", {"point": res.point, "km": spoken_km(res.km)})
    return Say("ivr.place.none")


# --- the recipient's mobile ------------------------------------------------------------

def _phone_handle(ctx: Ctx, inp: UserInput) -> Result:
    phone = _keyed_mobile(inp)
    if phone is None:
        return Retry([Say("ivr.phone.bad")])
    ctx.state.data["phone_pick"] = phone
    return Goto("recipient_check")


def _phone_check_prompt(ctx: Ctx) -> list[Out]:
    phone = ctx.state.data.get("phone_pick") or ""
    return [Say("ivr.phone.confirm", {"digits": spoken.spell_digits(phone[-10:])}),
            _right_or_again()]


def _phone_check_handle(ctx: Ctx, inp: UserInput) -> Result:
    picked = choice(inp, 2)
    phone = ctx.state.data.get("phone_pick")
    if phone is None or picked == 2:
        return Goto("recipient_phone")
    if picked != 1:
        return Retry()
    ctx.slots["recipient_phone"] = ctx.state.data.pop("phone_pick")
    return Goto(ctx.after("size"))


# --- speed, fare, confirm --------------------------------------------------------------

def spoken_tier(tier: str, quote: dict[str, Any]) -> Say:
    """A speed tier as the caller hears it: its hours in words ("Fast (within 3 hours)",
    "within one hour" for one), not the written label's short form ("3 hr"), which a
    voice reads letter by letter. An SMS keeps the written label (booking.tier_label)."""
    hours = quote["hours"][tier]
    within = (Say("ivr.within.one_hour") if hours == 1
              else Say("ivr.within.hours", {"count": hours}))
    return Say(f"ivr.tier.{tier}", {"within": within})


def _quote(ctx: Ctx) -> dict[str, Any]:
    """The quote for the call's draft; a trip nothing we have can carry (``too_far``)
    goes to the too_far step: a nearer drop, or a person."""
    return quote_or_resize(ctx, full_slots(ctx.slots), far="too_far", far_say=())


def _too_far_prompt(ctx: Ctx) -> list[Out]:
    return [Say("ivr.trip.too_far"),
            Choices((Say("ivr.trip.other_drop"), Say("ivr.trip.person")))]


def _too_far_handle(ctx: Ctx, inp: UserInput) -> Result:
    picked = choice(inp, 2)
    if picked == 1:
        return Goto("drop")
    if picked == 2:
        # The draft stays: called again, they can finish it with a nearer drop.
        ctx.state.data["draft_step"] = "drop"
        return _dial(ctx, "asked")
    return Retry()


def _speed_prompt(ctx: Ctx) -> list[Out]:
    q = _quote(ctx)
    options = tuple(
        Say("ivr.speed.option", {"tier": spoken_tier(t, q),
                                 "amount": amount(q["tiers"][t]["total_paise"], ctx.lang)})
        for t in offered_tiers(ctx, q)  # pressed 1, 2, ... as said (_speed_handle)
    )
    free = ctx.ports.rider_free(full_slots(ctx.slots))
    out: list[Out] = [] if free else [Say("ivr.speed.no_rider")]
    return [*out, Say("ivr.speed.ask", {"km": spoken_km(q["km"])}), Choices(options)]


def _confirm_prompt(ctx: Ctx) -> list[Out]:
    ctx.state.data.pop("return_to", None)
    s = ctx.slots
    q = _quote(ctx)
    tier_gone(ctx, q, lambda t: Say("ivr.speed.gone", {"tier": spoken_tier(t, q)}))
    total = q["tiers"][s["tier"]]["total_paise"]
    ctx.state.data["shown_total"] = total
    return [Say("ivr.confirm.summary", {"pickup": said_name(s["pickup"]),
                                        "drop": said_name(s["drop"]),
                                        "size": Say(f"ivr.size.{s['size']}"),
                                        "tier": spoken_tier(s["tier"], q)}),
            Say("ivr.confirm.fare", {"amount": amount(total, ctx.lang)}),
            # Nobody near to take it: said before the payment link goes out by SMS.
            *([] if ctx.ports.rider_free(full_slots(s)) else [
                Say("ivr.confirm.no_rider", {"minutes": q["search_minutes"][s["tier"]]})]),
            Choices((Say("ivr.confirm.yes"), Say("ivr.confirm.change"),
                     Say("ivr.confirm.cancel")))]


def _confirm_handle(ctx: Ctx, inp: UserInput) -> Result:
    picked = choice(inp, 3)
    if picked == 1:
        # A trip too far now (a relay's Point closed since the fare was read out): the
        # too_far step, a nearer drop or a person, as _quote goes.
        done = confirm_as_shown(ctx, full_slots(ctx.slots), far="too_far", far_say=())
        if done.get("refused") == "price_changed":  # read out again, at the fare it is now
            return Goto("confirm", [Say("ivr.confirm.new_price")])
        if done.get("refused") == "outside_service_area":
            # A place no longer served (its Point closed since): keyed again, the rest kept.
            ctx.state.data["return_to"] = "confirm"
            return Goto("drop" if done.get("field") == "drop" else "pickup",
                        [Say("ivr.place.none")])
        if done.get("refused") == "too_many_unpaid":
            ctx.state.data["draft_step"] = "confirm"  # kept, as when a call ends mid-way
            return Goto(MENU, [Say("ivr.confirm.too_many_unpaid", {"count": done["count"]})])
        clear_draft(ctx)
        ctx.state.data["last_ref"] = done["ref"]
        ctx.state.data[FINISHED] = f"booked:{done['ref']}"
        return Goto("done", _booked(ctx, done["ref"], done.get("pay_minutes")))
    if picked == 2:
        return Goto("change")
    if picked == 3:
        clear_draft(ctx)
        return Goto(MENU, [Say("ivr.confirm.dropped")])
    return Retry()


def _booked(ctx: Ctx, ref: str, pay_minutes: int | None = None) -> list[Out]:
    """The booking's number, and how its payment link comes: the SMS promised to every
    caller, unless our SMS cannot reach them (they stopped it): then WhatsApp, or the
    truth and what to do. Then the minutes left to pay (``pay_minutes``, the phone's
    ports give them): a caller whose phone cannot open the link must find one that can,
    in that time."""
    digits = spoken.spell_digits(ref)
    reach = ctx.ports.reach()
    said: list[Out] = ([Say("ivr.confirm.done", {"digits": digits})] if reach == "sms" else
                       [Say("ivr.confirm.booked", {"digits": digits}),
                        _link_way(reach, sent=False)])
    if pay_minutes:
        said.append(pay_time(pay_minutes))
    return said


def pay_time(minutes: int) -> Say:
    """"Please pay within N minutes": one minute (payments.minutes_to_pay rounds up, at
    least 1) said as one, not "within 1 minutes" (English, and the plural endings of
    Marathi and Telugu); never more than is left, which would close before they paid."""
    if minutes <= 1:
        return Say("ivr.confirm.pay_time_one")
    return Say("ivr.confirm.pay_time", {"minutes": minutes})


def booked_before(ctx: Ctx, ref: str, pay_minutes: int) -> list[Out]:
    """At the start of a call, a booking the caller's last call made that they may not have
    heard made (the line dropped as they pressed "book"): its number, that it needs no
    booking again, how its payment link comes (as _booked says it) and the minutes left to
    pay. Said by core.services.ivr, before the menu."""
    reach = ctx.ports.reach()
    return [Say("ivr.callback.booked", {"digits": spoken.spell_digits(ref)}),
            Say("ivr.callback.link_sms") if reach == "sms" else _link_way(reach, sent=False),
            pay_time(pay_minutes)]


def _link_way(reach: str, *, sent: bool) -> Say:
    """What a caller hears about a payment link that was just sent (or is being made and
    follows), by how messages reach them now (VoicePorts.reach)."""
    if reach == "sms":
        return Say("ivr.track.link_sent" if sent else "ivr.track.link_coming")
    if reach == "whatsapp":
        return Say("ivr.reach.whatsapp_sent" if sent else "ivr.reach.whatsapp_coming")
    return Say("ivr.reach.stopped_chat" if reach == "chat" else "ivr.reach.stopped")


def _link_again(reach: str, link: dict[str, Any]) -> Say:
    """What a caller who asked where their unpaid booking is hears about its link: sent
    again, or (``again_in_minutes``: VoicePorts.payment_link) not this time, since it went
    a few minutes ago, and when it can go again."""
    if link["url"] and link.get("again_in_minutes"):
        return Say("ivr.track.link_recent", {"minutes": link["again_in_minutes"]})
    return _link_way(reach, sent=bool(link["url"]))


_CHANGE = (("pickup", "pickup"), ("drop", "drop"), ("phone", "recipient_phone"),
           ("parcel", "size"), ("speed", "speed"))


_change_prompt, _change_handle = change_step("ivr", _CHANGE)


def _done_prompt(ctx: Ctx) -> list[Out]:
    ref = ctx.state.data.get("last_ref")
    if ref and ctx.ports.payment_link(ref) is not None:  # still to be paid
        return [Say("ivr.done.other_phone"), Say("ivr.done.prompt")]
    return [Say("ivr.done.prompt")]


def _done_handle(ctx: Ctx, inp: UserInput) -> Result:
    ref = ctx.state.data.get("last_ref")
    picked = choice(inp, 2)
    if picked == 1 and ref:
        return Stay([Say("ivr.done.again", {"digits": spoken.spell_digits(ref)})])
    if picked == 2 and ref and ctx.ports.payment_link(ref) is not None:
        return Goto("link_phone")
    return Retry()


# How many SMS one booking's payment link may go in to other numbers from calls, and one
# caller's in a day over all their bookings (each is an SMS we pay for, to a number the
# caller keyed in: VoicePorts.send_link_to keeps to them; SMS pumping and nuisance).
OTHER_PAYERS = 3
OTHER_PAYERS_A_DAY = 6
# What the caller hears once a link to another phone was asked for (VoicePorts.send_link_to).
_LINK_SENT = {"not_ready": Say("ivr.link_phone.not_ready"),
              "not_payable": Say("ivr.link_phone.closed"),
              "limit": Say("ivr.link_phone.limit", {"count": OTHER_PAYERS}),
              "day_limit": Say("ivr.link_phone.day_limit"),
              "stopped": Say("ivr.link_phone.stopped")}


def _keyed_mobile(inp: UserInput) -> str | None:
    """The Indian mobile the caller keyed in (10 digits), E.164; None if it is not one."""
    try:
        phone = normalize_phone(words.only_digits(inp.text) or "")
    except ValidationError:
        return None
    return phone if is_indian_mobile(phone) else None


def _link_phone_handle(ctx: Ctx, inp: UserInput) -> Result:
    """The mobile that should get the payment link (a feature phone opens no link: a
    relative's smartphone can pay it), read back before anything is sent."""
    if not ctx.state.data.get("last_ref"):
        return Goto(MENU)
    phone = _keyed_mobile(inp)
    if phone is None:
        return Retry([Say("ivr.phone.bad")])
    ctx.state.data["link_pick"] = phone
    return Goto("link_check")


def _link_check_prompt(ctx: Ctx) -> list[Out]:
    phone = ctx.state.data.get("link_pick") or ""
    return [Say("ivr.phone.confirm", {"digits": spoken.spell_digits(phone[-10:])}),
            _right_or_again()]


def _link_check_handle(ctx: Ctx, inp: UserInput) -> Result:
    """1: the link goes to the number read back, and the caller is back at the done step,
    told how it went; 2: key it again."""
    picked = choice(inp, 2)
    ref, phone = ctx.state.data.get("last_ref"), ctx.state.data.get("link_pick")
    if not ref or not phone:
        return Goto(MENU)
    if picked == 2:
        return Goto("link_phone")
    if picked != 1:
        return Retry()
    ctx.state.data.pop("link_pick", None)
    sent = ctx.ports.send_link_to(ref, phone)
    if sent == "own":
        # Their own number: the link again, as tracking sends it, and what that did (sent;
        # sent a few minutes ago, again after N minutes; or why our SMS cannot reach them).
        link = ctx.ports.payment_link(ref, by_sms=True)
        return Goto("done", [_link_again(ctx.ports.reach(), link) if link is not None
                             else _LINK_SENT["not_payable"]])
    if sent == "sent":
        return Goto("done", [Say("ivr.link_phone.sent",
                                 {"digits": spoken.spell_digits(phone[-4:])}, private=True)])
    if sent == "not_ready":  # "press 2 again in a minute": they may wait on the line
        ctx.state.data[TOLD_TO_WAIT] = "done"
    return Goto("done", [_LINK_SENT.get(sent, _LINK_SENT["not_payable"])])


# --- track -----------------------------------------------------------------------------

def _track_prompt(ctx: Ctx) -> list[Out]:
    found = ctx.ports.my_bookings()
    # Parcels others send to the caller's number come after their own, never crowded out
    # by old ones of hers: they are under way, and she may know no other number for them.
    coming = [ref for ref, status in found if status.startswith(TO_YOU)][:RECENT_BOOKINGS]
    own = [ref for ref, status in found
           if not status.startswith(TO_YOU)][:RECENT_BOOKINGS - len(coming)]
    ctx.scratch["refs"] = own + coming
    if not own + coming:
        return [Say("ivr.track.ask")]
    # Named as the cancel list names them: by their place, which a caller knows, and
    # their number's last digits (never sent to gTTS nor kept), not 8 digits apiece; a
    # parcel coming to her by those digits only (its pickup is the sender's).
    return [Say("ivr.track.recent" if own else "ivr.track.coming"),
            Choices(tuple(Say("ivr.track.option",
                              {"place": _said(ctx.ports.drop_place(ref)),
                               "digits": spoken.spell_digits(ref[-SHORT_REF:])}, private=True)
                          for ref in own)
                    + tuple(Say("ivr.track.option_to_you",
                                {"digits": spoken.spell_digits(ref[-SHORT_REF:])}, private=True)
                            for ref in coming)),
            Say("ivr.track.ask_other")]


def _track_handle(ctx: Ctx, inp: UserInput) -> Result:
    refs = ctx.scratch.get("refs") or []
    digits = words.only_digits(inp.text) or ""
    if len(digits) == 1 and 1 <= int(digits) <= len(refs):
        ref: str = refs[int(digits) - 1]
    else:
        typed = normalize_reference(digits) if len(digits) >= 6 else None
        if typed is None or not is_valid_reference(typed):
            return Retry([Say("ivr.track.bad")])
        ref = typed
    status = ctx.ports.booking_status(ref)
    if status is None:
        return Retry([Say("ivr.track.not_found")])
    ctx.state.data[FINISHED] = f"track:{ref}"
    spelled = spoken.spell_digits(ref)
    if ctx.ports.payment_over(ref):
        if ctx.ports.overdue_closed(ref) is None:
            # Its time just ran out: we ask the gateway whether it was paid first.
            return Goto(MENU, [Say("ivr.rebook.checking")])
        # Its time to pay ran out (closed), or its link was stopped in the gateway's
        # dashboard (booking_status: link_stopped), said as the chat says it: the same
        # parcel can be booked again here, with a new link, instead of key by key.
        ctx.state.data[_TRACKED] = ref
        said_closed = status if status in ("expired", "link_stopped") else "expired"
        return Goto("rebook", [Say(f"booking.status.{said_closed}", {"ref": spelled})])
    said = [Say(f"booking.status.{status}", {"ref": spelled})]
    if status == "awaiting_payment":
        # The link goes again (a caller may have lost it), the way messages reach them now:
        # at most once per payments.LINK_AGAIN_EVERY, so maybe not this time.
        link = ctx.ports.payment_link(ref, by_sms=True)
        if link is not None:
            said.append(_link_again(ctx.ports.reach(), link))
    if ctx.ports.pickup_code_left(ref):
        ctx.state.data[_TRACKED] = ref
        return Goto("pickup_code", said)
    return Goto(MENU, said)


# state.data key: the booking just tracked, whose pickup code or new booking is offered.
_TRACKED = "tracked_ref"

# state.data key: the pickup code read out in this call, as said ({"ref", "digits"}), to
# say again as often as asked. Only for the call: core.services.ivr drops it when the
# call ends (or, its end never reported, ivr.CODE_KEPT_FOR_CALL after the read).
HEARD_CODE = "heard_code"


def _pickup_code_prompt(ctx: Ctx) -> list[Out]:
    return [Say("ivr.code.offer")]


def _pickup_code_handle(ctx: Ctx, inp: UserInput) -> Result:
    ref = ctx.state.data.get(_TRACKED)
    if ref is None:
        return Goto(MENU)
    if choice(inp, 1) != 1:
        return Retry()
    ctx.state.data.pop(_TRACKED, None)
    got = ctx.ports.pickup_code(ref)
    if got.get("code"):
        # The code with the booking's number, said twice: a prompt with this many digits
        # is read by <Say>, never rendered by gTTS nor kept (ivr_flows.audio.personal).
        # Kept as said, to say again on 1 in this call (not a new code: reads are few).
        heard = {"ref": spoken.spell_digits(ref), "digits": spoken.spell_digits(got["code"])}
        ctx.state.data[HEARD_CODE] = heard
        return Goto("code_again", [Say("ivr.code.said", heard)])
    return Goto(MENU, [Say("ivr.code.limit" if got.get("refused") == "limit"
                           else "ivr.code.not_now")])


def _code_again_prompt(ctx: Ctx) -> list[Out]:
    return [Say("ivr.code.again_offer")]


def _code_again_handle(ctx: Ctx, inp: UserInput) -> Result:
    heard = ctx.state.data.get(HEARD_CODE)
    if not heard:  # forgotten meanwhile (see HEARD_CODE)
        return Goto(MENU)
    if choice(inp, 1) != 1:
        return Retry()
    return Stay([Say("ivr.code.again", heard)])


def _rebook_prompt(ctx: Ctx) -> list[Out]:
    return [Say("ivr.rebook.offer")]


def _rebook_handle(ctx: Ctx, inp: UserInput) -> Result:
    ref = ctx.state.data.get(_TRACKED)
    if ref is None:
        return Goto(MENU)
    if choice(inp, 1) != 1:
        return Retry()
    ctx.state.data.pop(_TRACKED, None)
    slots = ctx.ports.booking_slots(ref)
    if slots is None:
        return Goto(MENU, [Say("ivr.track.not_found")])
    # Only once the old booking is closed (the sweep asked the gateway, cancelled its
    # link): a link still open could take a payment while the new booking waits for one.
    # Paid meanwhile: no new booking, the caller hears where the paid one stands.
    closed = ctx.ports.overdue_closed(ref)
    if closed is None:
        return Goto(MENU, [Say("ivr.rebook.checking")])
    if not closed:
        status = ctx.ports.booking_status(ref)
        return Goto(MENU, [Say(f"booking.status.{status}", {"ref": spoken.spell_digits(ref)})
                           if status else Say("ivr.track.not_found")])
    clear_draft(ctx)
    ctx.state.data["slots"] = slots
    if not slots.get("recipient_phone"):
        # The receiver asked us to forget her (retention.erase_recipient): her number is
        # gone from the old booking, and a booking with none would send her drop code to
        # the caller. Asked again, then the summary.
        ctx.state.data["return_to"] = "confirm"
        return Goto("recipient_phone")
    # The booking's summary and today's fare, then "book it / change / do not book".
    return Goto("confirm")


# --- cancel: the chat's rules (core.dialog.booking), said for the ear -------------------

# state.data key: the menu's list of cancellable bookings, handed to the list's prompt in
# the same turn (popped there, so never stored with the call's state).
_CANCELLABLE = "cancellable"


def _cancellable(ctx: Ctx) -> list[tuple[str, dict[str, Any]]]:
    """The caller's bookings that can be cancelled now, newest first, each with what
    cancelling it would do: one already picked up is not read out to them."""
    found = []
    for ref, _ in ctx.ports.my_bookings(open_only=True):
        preview = ctx.ports.cancel_preview(ref)
        if preview is not None and preview["allowed"]:
            found.append((ref, preview))
    return found


def _not_allowed(quote: dict[str, Any]) -> Say:
    return Say(f"ivr.cancel.{not_allowed_kind(quote)}")


def _cancel_pick_prompt(ctx: Ctx) -> list[Out]:
    found = ctx.state.data.pop(_CANCELLABLE, None) or _cancellable(ctx)
    ctx.scratch["refs"] = [ref for ref, _ in found]
    if not found:
        return [Say("ivr.cancel.none"), Say("ivr.hint")]
    return [Say("ivr.cancel.ask"), Choices(tuple(
        Say("ivr.cancel.option", {"place": _said(preview.get("drop")),
                                  "digits": spoken.spell_digits(ref[-SHORT_REF:])},
            private=True)  # the end of her booking number: never sent to gTTS nor kept
        for ref, preview in found))]


def _cancel_pick_handle(ctx: Ctx, inp: UserInput) -> Result:
    refs = ctx.scratch.get("refs") or []
    if not refs:
        return Goto(MENU)
    picked = choice(inp, len(refs))
    if picked is None:
        return Retry()
    ref = refs[picked - 1]
    preview = ctx.ports.cancel_preview(ref)
    if preview is None or not preview["allowed"]:  # picked up since the list was read
        return Goto(MENU, [_not_allowed(preview or {})])
    ctx.state.data["cancel_ref"] = ref
    return Goto("cancel_confirm")


def _cancel_confirm_prompt(ctx: Ctx) -> list[Out]:
    ref = ctx.state.data.get("cancel_ref", "")
    preview = ctx.ports.cancel_preview(ref) if ref else None
    if preview is None or not preview["allowed"]:
        # Asked again (star, silence, a key it does not take) once it cannot be cancelled
        # any more (picked up, closed, no longer theirs): say so and the menu, not a
        # question whose amounts are those of no cancel ("our team gave your money back").
        end_cancel(ctx)
        raise Redirect(MENU, [_not_allowed(preview or {})] if ref else [])
    keep_shown(ctx, preview)  # a "1" cancels at these amounts only
    return [Say(f"ivr.cancel.{cancel_kind(preview)}", {
                "place": _said(preview.get("drop")),
                "refund": amount(preview["refund_paise"], ctx.lang),
                "fee": amount(preview["fee_paise"], ctx.lang)}),
            Choices((Say("ivr.cancel.yes"), Say("ivr.cancel.no")))]


def _cancel_confirm_handle(ctx: Ctx, inp: UserInput) -> Result:
    picked = choice(inp, 2)
    ref = ctx.state.data.get("cancel_ref")
    if ref is None:
        return Goto(MENU)
    if picked == 1:
        outcome, result = cancel_as_shown(ctx, ref)
        if outcome == "again":  # nothing cancelled: the amounts changed since they heard them
            ctx.state.data[NOT_CANCELLED] = ref
            return Goto("cancel_confirm", [Say("ivr.cancel.changed")])
        end_cancel(ctx)
        ctx.state.data[FINISHED] = f"cancel:{ref}"
        if outcome == "closed":
            return Goto(MENU, [_not_allowed(result)])
        if result.get("refund_paise"):
            return Goto(MENU, [Say("ivr.cancel.done_refund",
                                   {"refund": amount(result["refund_paise"], ctx.lang)})])
        return Goto(MENU, [Say("ivr.cancel.done")])
    if picked == 2:
        end_cancel(ctx)
        return Goto(MENU, [Say("ivr.cancel.kept")])
    return Retry()


# --- a person --------------------------------------------------------------------------

def _offer_prompt(ctx: Ctx) -> list[Out]:
    return [Say("ivr.offer.ask"), Choices((Say("ivr.offer.yes"), Say("ivr.offer.retry")))]


def _offer_handle(ctx: Ctx, inp: UserInput) -> Result:
    picked = choice(inp, 2)
    if picked == 1:
        ctx.state.data.pop("after_offer", None)
        return _dial(ctx, "not_understood")
    if picked == 2:
        return Goto(ctx.state.data.pop("after_offer", None) or MENU)
    return Retry()


def _steps() -> list[Step]:
    return [
        Step("language", _language_prompt, _language_handle, "ivr.hint"),
        Step(MENU, _menu_prompt, _menu_handle, "ivr.hint"),
        Step("resume", _resume_prompt, _resume_handle, "ivr.hint"),
        *_place_steps("pickup", "drop"),
        *_place_steps("drop", "recipient_phone"),
        Step("recipient_phone", lambda ctx: [Say("ivr.phone.ask")], _phone_handle,
             "ivr.phone.ask", BOOKING),
        Step("recipient_check", _phone_check_prompt, _phone_check_handle, "ivr.hint", BOOKING),
        _choice_step("size", "ivr.size.ask", [f"ivr.size.{s}" for s in SIZES], "size", SIZES,
                     "weight", help_key="ivr.hint"),
        _choice_step("weight", "ivr.weight.ask", [f"ivr.weight.{w}" for w in WEIGHTS],
                     "weight", WEIGHTS, lambda ctx: ctx.after("speed"), help_key="ivr.hint"),
        Step("speed", _speed_prompt, _speed_handle, "ivr.hint", BOOKING),
        Step("confirm", _confirm_prompt, _confirm_handle, "ivr.hint", BOOKING),
        Step("too_far", _too_far_prompt, _too_far_handle, "ivr.hint", BOOKING),
        Step("change", _change_prompt, _change_handle, "ivr.hint", BOOKING),
        Step("done", _done_prompt, _done_handle, "ivr.hint"),
        Step("link_phone", lambda ctx: [Say("ivr.link_phone.ask")], _link_phone_handle,
             "ivr.link_phone.ask"),
        Step("link_check", _link_check_prompt, _link_check_handle, "ivr.hint"),
        Step("track", _track_prompt, _track_handle, "ivr.hint"),
        Step("pickup_code", _pickup_code_prompt, _pickup_code_handle, "ivr.hint"),
        Step("code_again", _code_again_prompt, _code_again_handle, "ivr.hint"),
        Step("rebook", _rebook_prompt, _rebook_handle, "ivr.hint"),
        Step("cancel_pick", _cancel_pick_prompt, _cancel_pick_handle, "ivr.hint"),
        Step("cancel_confirm", _cancel_confirm_prompt, _cancel_confirm_handle, "ivr.hint"),
        Step("offer_person", _offer_prompt, _offer_handle, "ivr.hint"),
    ]


VOICE_DIALOG = Dialog(
    steps={s.name: s for s in _steps()},
    menu=MENU,
    language="language",
    offer_person="offer_person",
    voice_callback="offer_person",  # a voice note cannot arrive on a call
    not_understood="ivr.wrong_key",
)
