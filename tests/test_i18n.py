"""Tests for the message catalogs: complete in every language, and t()'s fallback rules."""

from __future__ import annotations

import logging
import re
import string
from collections.abc import Iterator
from pathlib import Path

import pytest

from core import i18n

OTHER_LANGUAGES = [lang for lang in i18n.LANGUAGES if lang != i18n.FALLBACK_LANGUAGE]

BOOKING_STATES = (
    "draft quoted awaiting_payment paid dispatching assigned picked_up in_transit delivered"
    " cancelled expired refunded failed"
).split()

# Keys other code relies on; spelled out here so deleting one from en.toml fails a test.
REQUIRED_KEYS = (
    {
        "lang.menu",
        "lang.saved",
        "bot.welcome",  # booking._menu_handle: an ok or a thanks
        "menu.main",
        "menu.help",
        "common.not_understood",
        "common.coming_soon",
        "common.too_many_messages",
        "common.too_many_cancelled",
        "common.error_try_later",
        "common.unsupported_media",
        "booking.created",
        "pay.link",
        "quote.summary",
        "address.unknown_pincode",
        "address.bad_pincode",
        "sms.not_partner",
        "sms.help", "sms.help_more", "sms.offer_not_that", "sms.earnings",
        "auth.otp",
    }
    | {f"booking.status.{s}" for s in BOOKING_STATES}
    | {f"vehicle.{v}" for v in "bicycle motorcycle e_rickshaw auto pickup cart".split()}
    | {f"size.{s}" for s in "bag box sack vehicle".split()}
    | {f"tier.{s}" for s in "express standard economy".split()}
    | {f"fare.{s}" for s in "base distance size weight fragile tier surge minimum total".split()}
    | {f"dispatch.unfit_{r}" for r in ("vehicle", "trust_tier")}  # dispatch.accept
    | {"dispatch.job_cancelled", "dispatch.duty_blocked"}  # booking_cancelled, set_duty
    | {"dispatch.duty_pending_kyc"}  # set_duty, accept: KYC pending
    | {"dispatch.duty_no_payout_account"}  # set_duty, accept: verified, no payout account
    | {"dispatch.which_job", "dispatch.which_job_cancel"}  # _choose_leg
    | {"dispatch.otp_wrong_jobs"}  # confirm: a code without its job, right for none
    | {"dispatch.already_delivered"}  # confirm: a PICK/DROP sent again after the drop
    | {"dispatch.pick_first_handed", "dispatch.duty_off_handed",  # a relay parcel handed
       "dispatch.state.handed_over"}  # over, PICK not sent: confirm, set_duty, STATUS
    | {"dispatch.given_back", "dispatch.taken_from_you"}  # accept: a job theirs before
    | {"dispatch.unknown_offer"}  # not_understood: one offer open
    | {"dispatch.offer_open_no_code",  # partner_sms._code_while_offered: a code
       "dispatch.offer_open_code"}  # asked for, one offer open
    | {"sms.phone_moved_new", "sms.phone_moved_old"}  # partner_profile.set_phone
    | {"sms.payout_account_changed",  # admin.set_payout_account
       "sms.payout_account_removed"}  # admin.clear_payout_account
    | {f"dispatch.app.{k}" for k in ("accepted", "picked", "pick_first",  # the app's
                                     "pick_first_handed", "already_picked",
                                     "no_such_job", "cancel_hint", "duty_off",
                                     "duty_off_assigned", "duty_off_carrying",
                                     "duty_off_handed", "duty_on")}  # words
    | {"bot.parcel.no_vehicle"}  # quote_or_resize
    | {"bot.read_first"}  # conversation.dialog_turn: an answer sent before its question
    | {f"bot.help.speed_{k}" for k in ("normal_cheap", "fast_normal", "one")}  # _speed_help
    | {"payment.ops_refund_retry", "payment.ops_refund_stuck"}  # payments._attempt_failed
    | {"dispatch.ops_more_like",  # dispatch.send_alert_summary
       "payment.ops_link_timeout", "payment.ops_refund_unanswered",
       "payment.ops_reconcile_mismatch"}  # payments, reconciliation alerts
    | {"payment.after_cancel"}  # payments.record_capture: a link paid after cancelling
    | {"payment.link_cancelled"}  # payments._close_link_cancelled: cancelled in the dashboard
    | {"payment.ops_owed_long", "payment.ops_owed_long_error",  # payments._tell_owed_long
       "payment.ops_owed_long_no_account",  # ... when the rider has no payout account
       "payment.ops_refund_no_balance"}  # payments.refund_booking: refused for balance
    | {f"payment.{k}" for k in ("after_expiry", "extra", "wrong_amount",
                                "wrong_amount_no_link")}  # record_capture: given back
    | {"bot.handoff.closed", "bot.handoff.expired"}  # handoff.close, handoff.expire_idle
    | {"bot.handoff.kept"}  # conversation._kept_for_the_team: a call's request waits
    | {"handoff.ops_waiting"}  # handoff.alert_unanswered: nobody answered in time
    | {"handoff.ops_given_back"}  # handoff._give_back: to the operator who had her
    | {"bot.handoff.zero_kept"}  # conversation._zero_note: a "0" went to the operator
    | {"address.same_place", "ivr.place.same"}  # the dialogs, when drop == pickup
    | {"bot.confirm.new_price", "ivr.confirm.new_price"}  # booking.confirm_as_shown
    | {"bot.confirm.with_landmark"}  # booking._place_told: the landmark the rider is told
    | {"ivr.amount", "ivr.amount_paise"}  # voice.amount: a fee with its paise
    | {"ivr.more_again"}  # voice office_prompt: the last page of names, 9 starts again
    | {"ivr.too_long_kept"}  # ivr._too_long: the call's limit, a draft kept
    | {"bot.parcel.weight_too_heavy"}  # booking.weight_typed: a weight above them all
    | {"ivr.done.other_phone", "pay.link_other"}  # the link to another mobile (voice)
    | {"payment.refunded_payer",  # payments._tell_refunded: that mobile hears a refund
       "payment.failed_other"}  # _on_payment_failed: either phone may try the link again
    | {f"ivr.link_phone.{k}" for k in ("ask", "sent", "not_ready", "closed", "limit",
                                         "day_limit", "stopped")}  # voice._link_check_handle
    | {"ivr.person.busy", "ivr.not_mobile"}  # ivr.dial_ended, the voice webhook
    | {"ivr.ops.screen"}  # twiml.screen: the operators' phone takes a caller
    | {"payment.link_failed", "payment.ops_link_refused",  # payments._link_refused
       "payment.ops_transfer_refused"}  # payments._transfer_refused
    | {"payment.ops_transfer_reversed"}  # payments.record_transfer_reversal
    | {"payment.ops_escrow_short"}  # payments._post_release: a shortfall unexplained
    | {"payment.ops_transfer_overpaid"}  # payments._settle_leg_transfer: paid > earned
    | {"dispatch.holder_cancelled_no_fee",  # payments._end_stuck_relay: no fee, no
       "dispatch.customer_stuck_no_refund"}  # refund left (a dashboard refund took it)
    | {"bot.cancel.picked_up", "bot.cancel.not_allowed"}  # booking._not_allowed
    | {"bot.place.landmark_bad"}  # booking's landmark step
    | {"bot.pickup.pin_needed", "bot.drop.pin_needed"}  # two villages at one spot
    | {"ivr.place.one_spot", "ivr.place.spot_person",  # the IVR's two villages at one
       "ivr.place.spot_other"}  # spot (voice._place_steps)
    | {"bot.recipient.saved", "bot.help.office_one_page"}  # a name with its number; help
    | {f"dispatch.{k}" for k in ("pickup_late", "customer_rider_late", "ops_pickup_late",
                                 "taken_back", "customer_rider_replaced")}  # pickup_late
    | {"dispatch.ops_delivery_late", "dispatch.carrier_wait"}  # delivery_late, relay pause
    | {"dispatch.customer_delivery_late"}  # delivery_late: the customer told once
    | {"dispatch.ops_sent_code_lost"}  # a code ops sent did not arrive
    | {"dispatch.ops_handover_code_lost",  # a rider's handover code lost
       "dispatch.ops_handover_code_unsent"}  # (handover_code_lost)
    | {"dispatch.recipient_delivery_late",  # delivery_late: a recipient told of it
       "dispatch.recipient_delivery_late_no_code"}  # ... by SMS, before any code
    | {"dispatch.point_pickup_late"}  # point_pickup_late: a relay rider not at the Point
    | {"dispatch.handed_pick_late", "dispatch.ops_handed_pick_late"}  # handed_pickup_late
    | {"dispatch.pod_too_large", "dispatch.pod_not_photo"}  # fetch_pod_photo: not kept
    | {"dispatch.unlocked_handed"}  # unlock_leg: a relay parcel handed over already
    | {"dispatch.handed_pick_code"}  # new_leg_code: to the rider holding a handed parcel
    | {"dispatch.duty_sms_stopped"}  # set_duty: ON from an SMS-only partner who sent STOP
    | {"dispatch.pod_before_pick"}  # conversation: a WhatsApp photo before the PICK
    | {"dispatch.duty_no_point"}  # set_duty: ON from an SMS-only partner placed nowhere
    | {"dispatch.point_closed"}  # admin.close_point: an on-duty rider placed nowhere
    | {"dispatch.payout_account_cleared"}  # admin.clear_payout_account: an on-duty rider
    | {"dispatch.auto_off", "dispatch.auto_off_job"}  # put OFF after missed offers
    | {"dispatch.auto_off_jobs"}  # put OFF after missed offers, several jobs in hand
    | {"bot.confirm.too_many_unpaid", "ivr.confirm.too_many_unpaid"}  # the unpaid cap
    | {f"{c}.{s}.no_rider" for c in ("bot", "ivr") for s in ("speed", "confirm")}  # nobody near
    | {f"dispatch.{k}_new" for k in ("pickup_otp", "drop_otp", "drop_otp_sender")}  # resent
    | {"dispatch.duty_off_assigned", "dispatch.duty_off_carrying"}  # set_duty, OFF
    | {"dispatch.duty_off_locked", "dispatch.duty_off_jobs",  # set_duty, OFF: a job
       "dispatch.app.duty_off_jobs"}  # locked; several jobs (the app: api.partner)
    | {"dispatch.customer_next_rider", "dispatch.recipient_no_rider"}  # accept, no rider
    | {"dispatch.recipient_no_rider_no_code",  # a recipient told by SMS before any code
       "dispatch.recipient_cancelled_no_code"}
    | {f"ivr.cancel.{k}" for k in ("none", "free", "refund", "fee", "changed",  # voice cancel
                                   "picked_up", "not_allowed")}
    | {f"{c}.cancel.{k}" for c in ("bot", "ivr")  # nothing left to give back (a refund
       for k in ("fee_only", "paid_back")}  # from the dashboard): booking.cancel_kind
    | {f"bot.rate.{k}" for k in ("ask", "help", "thanks", "already")}  # rating after delivery
    | {f"bot.rate.words.{n}" for n in range(1, 6)}  # stars_given: a rating said in words
    | {"bot.track.pay", "bot.track.link_coming",  # tracking an unpaid booking
       "ivr.track.link_sent", "ivr.track.link_coming"}
    | {f"ivr.reach.{k}" for k in ("whatsapp_coming", "whatsapp_sent", "stopped_chat",
                                  "stopped")} | {"ivr.confirm.booked"}  # SMS stopped
    | {f"ivr.code.{k}" for k in ("offer", "said", "not_now", "limit",
                                   "again_offer", "again")}  # a pickup code
    | {"ivr.sms.ops_code_read",  # read on a call; time to pay over, or being checked
       "ivr.rebook.offer", "ivr.rebook.checking"}
    | {"ivr.sms.details_whatsapp"}  # a phone booking's details to a caller who stopped SMS
    | {"bot.cancel.done_fee", "dispatch.job_cancelled_fee"}  # cancel_booking after assignment
    | {f"dispatch.{k}" for k in ("holder_cancelled", "customer_stuck_cancelled",
                                 "recipient_cancelled")}  # ops end a stuck relay
    | {f"booking.status.stuck_{k}" for k in ("ended", "refunded")}  # tracking that one
    | {"booking.status.stuck_no_refund"}  # ... ended with nothing to give back
    | {"booking.status.no_rider_no_refund"}  # no rider, support gave the money back already
    | {"booking.status.fee_refunded"}  # tracking a booking cancelled with a rider's fee
    | {"booking.status.pay_time_over",  # conversation.SessionPorts._told: unpaid past its
       "booking.status.no_link"}  # time; closed for want of a payment link
    | {"booking.status.pay_checking"}  # ... past its time with a link: paid late? asked
    | {"booking.status.link_stopped"}  # ... closed: its link cancelled in the dashboard
    | {"bot.more_again"}  # booking office_prompt: the last page of names, 9 starts again
    | {"bot.cancel.changed"}  # booking._cancel_confirm_handle: a yes to old amounts
    | {f"dispatch.handover_{k}_new" for k in ("give", "take")}  # relay codes resent
    | {"sms.customer_help"}  # partner_sms: a customer texting our SMS number
    | {"sms.recipient_coming", "sms.recipient_on_the_way",  # partner_sms: a recipient too
       "sms.recipient_on_the_way_no_code"}
    | {"sms.recipient_coming_code_sent"}  # before pickup, her drop code sent already
    | {"sms.recipient_code_with_sender",  # partner_sms: her code lost, the sender has it
       "sms.recipient_wrong_number", "dispatch.customer_recipient_wrong_number",  # "not
       "dispatch.ops_recipient_wrong_number"}  # mine": she, the sender and ops told
    | {"dispatch.drop_contact", "dispatch.drop_contact_phone"}  # PICK: whom it is for
    | {"dispatch.drop_contact_sender"}  # ... after "wrong number": the sender to call
    | {"sms.recipient_code_sent_at"}  # her new code asked again while on its way
    | {"dispatch.drop_otp_pass_on", "dispatch.ops_drop_code_lost"}  # a drop code lost
    | {"dispatch.drop_otp_void"}  # dispatch._give_back: the code she holds is void
    | {f"dispatch.{k}" for k in ("ops_drop_code_unsent", "pickup_code_lost_rider",  # codes lost
                                 "ops_pickup_code_lost", "ops_pickup_code_unsent")}
    | {"dispatch.ops_drop_code_old_number"}  # a recipient's move kept no new drop code
    | {"dispatch.customer_handed_on"}  # a relay's later handover
    | {"bot.handoff.after_hours", "bot.media.callback_after_hours",  # outside OPS_HOURS
       "ivr.person.after_hours"}
    | {"bot.media.voice_chat"}  # a voice note from a chat with no phone number
    | {f"time_of_day.{p}" for p in ("late_night", "morning", "noon", "afternoon", "evening",
                                    "night")}  # booking.said_time
    | {"ivr.track.link_recent"}  # the link asked again within payments.LINK_AGAIN_EVERY
    | {"ivr.sms.cancelled"}  # a phone booking cancelled in its own call, details sent
    | {f"ivr.tier.{s}" for s in ("express", "standard", "economy")}  # speeds said in words
    | {"bot.speed.gone", "ivr.speed.gone", "bot.trip.too_far",  # a tier or trip we cannot
       "ivr.trip.too_far", "ivr.trip.other_drop", "ivr.trip.person"}  # keep (quote_trip)
    | {"ivr.within.hours", "ivr.within.one_hour"}  # voice.spoken_tier
    | {f"office.{k}" for k in ("branch", "sub", "head", "district", "near",  # offices of
                               "number")}  # one name told apart: booking.said_name
    | {f"office.{k}" for k in ("first", "second", "third", "fourth",  # alike in all else:
                               "fifth")}  # office_names.ORDINALS, never a number
    | {"ivr.other_language"}  # ivr._start: the key to the list, in each other language
    | {"ivr.confirm.pay_time", "ivr.confirm.pay_time_one"}  # voice.pay_time: minutes left
    | {"ivr.taken_over"}  # ivr.voice_turn: keys of a call another call took over
    | {"ivr.callback.booked", "ivr.callback.link_sms"}  # ivr._start: a booking not heard
    | {f"booking.status.to_you_{k}" for k in ("coming", "coming_code_sent",  # a parcel
                                               "on_the_way", "on_the_way_no_code",  # to
                                               "code_with_sender")}  # her: tracked
    | {"ivr.track.option_to_you", "ivr.track.coming"}  # voice._track_prompt: hers
)

LANGUAGE_LIST = "1. हिंदी\n2. English\n3. বাংলা\n4. मराठी\n5. தமிழ்\n6. తెలుగు\n7. ગુજરાતી\n8. ಕನ್ನಡ"


@pytest.fixture
def tmp_catalogs(tmp_path: Path) -> Iterator[Path]:
    """Point i18n at a scratch catalog dir holding a tiny en.toml and hi.toml; restore after."""
    (tmp_path / "en.toml").write_text(
        '[greet]\nhello = "Hello {name}"\nbye = "Bye"\n[pay]\ntotal = "Pay {total}"\n',
        encoding="utf-8",
    )
    (tmp_path / "hi.toml").write_text('[greet]\nhello = "नमस्ते {name}"\n', encoding="utf-8")
    i18n.set_catalog_dir(tmp_path)
    try:
        yield tmp_path
    finally:
        i18n.set_catalog_dir(None)


# --- the real catalogs -----------------------------------------------------------------


def test_english_has_required_keys() -> None:
    missing = REQUIRED_KEYS - i18n.keys("en")
    assert not missing, f"en.toml lacks {sorted(missing)}"


@pytest.mark.parametrize("lang", OTHER_LANGUAGES)
def test_catalog_has_exactly_english_keys(lang: str) -> None:
    english, other = i18n.keys("en"), i18n.keys(lang)
    missing, extra = sorted(english - other), sorted(other - english)
    assert not missing and not extra, f"{lang}.toml missing {missing}, extra {extra}"


@pytest.mark.parametrize("lang", OTHER_LANGUAGES)
def test_placeholders_match_english(lang: str) -> None:
    wrong = {
        key: (i18n.placeholders(i18n.raw(key, lang)), i18n.placeholders(i18n.raw(key, "en")))
        for key in i18n.keys(lang) & i18n.keys("en")
        if i18n.placeholders(i18n.raw(key, lang)) != i18n.placeholders(i18n.raw(key, "en"))
    }
    assert not wrong, f"{lang}: (this language, English) placeholders differ: {wrong}"


@pytest.mark.parametrize("lang", i18n.LANGUAGES)
def test_values_are_not_blank(lang: str) -> None:
    blank = sorted(k for k in i18n.keys(lang) if not i18n.raw(k, lang).strip())
    assert not blank, f"{lang}: empty texts for {blank}"


@pytest.mark.parametrize("lang", i18n.LANGUAGES)
def test_language_menu_lists_every_language(lang: str) -> None:
    menu = i18n.t("lang.menu", lang)
    for code, name in i18n.LANGUAGE_NAMES.items():
        assert name in menu, f"{lang}: lang.menu does not offer {code} ({name})"
    greeting, _, choices = menu.partition("\n")
    assert greeting.strip(), f"{lang}: lang.menu has no greeting line"
    assert choices == LANGUAGE_LIST, f"{lang}: language list differs from the shared one"


def test_language_tables_cover_every_language() -> None:
    assert i18n.LANGUAGES[0] == i18n.DEFAULT_LANGUAGE == "hi"
    assert set(i18n.LANGUAGE_NAMES) == set(i18n.LANGUAGES)
    assert set(i18n.SAY_LOCALES) == set(i18n.LANGUAGES)
    assert all(i18n.SAY_LOCALES[lang] == f"{lang}-IN" for lang in i18n.LANGUAGES)


@pytest.mark.parametrize("lang", i18n.LANGUAGES)
def test_language_saved_names_the_language(lang: str) -> None:
    name = i18n.LANGUAGE_NAMES[lang]
    assert name in i18n.t("lang.saved", lang, language=name)


@pytest.mark.parametrize("lang", i18n.LANGUAGES)
def test_not_partner_sms_fits_two_unicode_sms(lang: str) -> None:
    # The answer to anyone who texts the riders' number, customers too (they answer our
    # SMS): how to book and how to become a rider. An SMS in an Indic script (UCS-2) holds
    # 70 characters, two of them 134; in English (GSM-7) one holds 160.
    text = i18n.t("sms.not_partner", lang, ops_phone="+919876543210",
                  ivr_phone="+918069451234")
    assert len(text) <= (160 if text.isascii() else 134), f"{lang}: {len(text)} characters"


@pytest.mark.parametrize("lang", i18n.LANGUAGES)
def test_customer_sms_help_fits_two_unicode_sms(lang: str) -> None:
    # The answer to a customer with a booking under way who texts our SMS number.
    text = i18n.t("sms.customer_help", lang, ref="48217730", ivr_phone="+918069451234")
    assert len(text) <= (160 if text.isascii() else 134), f"{lang}: {len(text)} characters"


# One word for a thing in a language's customer texts: the one most texts use (a rural
# reader who sees three words for "booking" wonders if they are three things).
OTHER_WORDS = {"ta": ("பதிவு", "ஓட்டுநர"),  # புக்கிங் (booking), ரைடர் (rider)
               "hi": ("सवारी", "भुगतान", "रद्द"),  # राइडर (rider), पेमेंट, कैंसिल
               "te": ("పార్శిల్", "చెల్లింపు", "క్యాన్సిల్"),  # పార్సెల్, పేమెంట్, రద్దు (cancel)
               "gu": ("કેન્સલ", "ચુકવણી"),  # રદ (cancel), પેમેન્ટ (payment)
               "kn": ("ಕ್ಯಾನ್ಸಲ್", "ಪೇಮೆಂಟ್"),  # ರದ್ದು (cancel), ಪಾವತಿ (payment)
               "mr": ("कॅन्सल",),  # रद्द (cancel)
               "bn": ("ক্যানসেল", "ক্যান্সেল")}  # বাতিল (cancel)


@pytest.mark.parametrize("lang", sorted(OTHER_WORDS))
def test_one_word_for_each_thing(lang: str) -> None:
    found = sorted(k for k in i18n.keys(lang) for w in OTHER_WORDS[lang]
                   if w in i18n.raw(k, lang))
    assert not found, f"{lang}: {found}"


@pytest.mark.parametrize("lang", i18n.LANGUAGES)
def test_partner_sms_help_keeps_latin_command_words(lang: str) -> None:
    # The commands used most on HELP; the rest on "HELP 2", which HELP names.
    first = set(re.findall(r"[A-Z]+", i18n.t("sms.help", lang)))
    more = set(re.findall(r"[A-Z]+", i18n.t("sms.help_more", lang)))
    assert {"ON", "OFF", "YES", "NO", "PICK", "DROP", "OTP"} <= first
    assert "HELP 2" in i18n.t("sms.help", lang)
    assert {"CANCEL", "STATUS", "EARN"} <= more


@pytest.mark.parametrize("lang", i18n.LANGUAGES)
def test_main_menu_is_numbered_one_to_five(lang: str) -> None:
    lines = i18n.t("menu.main", lang).splitlines()
    numbers = [line.split(".", 1)[0] for line in lines if re.match(r"\d\. ", line)]
    assert numbers == ["1", "2", "3", "4", "5"]
    assert "0" in lines[-1]


def test_total_paise_is_shown_in_rupees_in_hindi() -> None:
    text = i18n.t("booking.created", "hi", ref="4821", total_paise=125000)
    expected = i18n.raw("booking.created", "hi").format(ref="4821", total="₹1,250")
    assert text == expected
    assert "₹1,250" in text and "बुकिंग" in text


def test_quote_summary_renders_in_every_language() -> None:
    for lang in i18n.LANGUAGES:
        text = i18n.t(
            "quote.summary",
            lang,
            km="12.5",
            vehicle=i18n.t("vehicle.auto", lang),
            total_paise=12_345_678_950,
        )
        assert "12.5" in text and "₹12,34,56,789.50" in text, lang


def test_english_counts_read_right_when_the_count_is_one() -> None:
    # "1 tries left": English texts put a count in a label ("Tries left: 1") instead.
    assert "1 tries" not in i18n.t("dispatch.otp_wrong", "en", job="12", left=1)
    assert "1 jobs" not in i18n.t("dispatch.at_capacity", "en", n=1)
    # A speed tier set to 1 hour (DISPATCH_DELIVERY_HOURS): not "within 1 hours".
    for tier in ("express", "standard", "economy"):
        assert "1 hours" not in i18n.t(f"tier.{tier}", "en", hours=1)
        # Marathi and Telugu have a plural ending after a count too ("तासांत", "గంటల్లో").
        assert "1 तासांत" not in i18n.t(f"tier.{tier}", "mr", hours=1)
        assert "1 గంటల్లో" not in i18n.t(f"tier.{tier}", "te", hours=1)
    plural_after_count = re.compile(r"\{(?:n|left|hours)\} [a-z]+s\b")
    wrong = sorted(k for k in i18n.keys("en") if plural_after_count.search(i18n.raw(k, "en")))
    assert not wrong, wrong


# --- t() behaviour, on scratch catalogs ------------------------------------------------


def test_missing_key_falls_back_to_english_with_warning(
    tmp_catalogs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="core.i18n"):
        assert i18n.t("greet.bye", "hi", otp="918273") == "Bye"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert "greet.bye" in message and "'hi'" in message
    assert "918273" not in caplog.text  # params may be OTPs or phone numbers


def test_present_key_does_not_warn(tmp_catalogs: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="core.i18n"):
        assert i18n.t("greet.hello", "hi", name="Sita") == "नमस्ते Sita"
    assert not caplog.records


def test_unknown_language_falls_back_to_english(
    tmp_catalogs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="core.i18n"):
        assert i18n.t("greet.hello", "xx", name="Sita") == "Hello Sita"
    assert "'xx'" in caplog.text


def test_unknown_language_falls_back_on_real_catalogs() -> None:
    assert i18n.t("common.coming_soon", "fr") == i18n.t("common.coming_soon", "en")


def test_key_missing_from_english_raises(tmp_catalogs: Path) -> None:
    with pytest.raises(KeyError, match="greet.nope"):
        i18n.t("greet.nope", "hi")


def test_missing_param_raises_naming_it(tmp_catalogs: Path) -> None:
    with pytest.raises(KeyError, match="'name'"):
        i18n.t("greet.hello", "hi")


def test_paise_param_offers_formatted_amount(tmp_catalogs: Path) -> None:
    assert i18n.t("pay.total", "en", total_paise=5) == "Pay ₹0.05"
    # An explicit value wins over the derived one.
    assert i18n.t("pay.total", "en", total_paise=5, total="free") == "Pay free"


def test_bool_paise_param_is_not_treated_as_money(tmp_catalogs: Path) -> None:
    with pytest.raises(KeyError, match="'total'"):
        i18n.t("pay.total", "en", total_paise=True)


def test_keys_are_flattened_and_dotted(tmp_catalogs: Path) -> None:
    assert i18n.keys("en") == {"greet.hello", "greet.bye", "pay.total"}
    assert i18n.keys("hi") == {"greet.hello"}


def test_catalogs_are_cached_until_reload(tmp_catalogs: Path) -> None:
    assert i18n.t("greet.bye", "en") == "Bye"
    (tmp_catalogs / "en.toml").write_text('[greet]\nbye = "Later"\n', encoding="utf-8")
    assert i18n.t("greet.bye", "en") == "Bye"
    i18n.reload()
    assert i18n.t("greet.bye", "en") == "Later"


def test_non_text_value_is_rejected(tmp_catalogs: Path) -> None:
    (tmp_catalogs / "en.toml").write_text("[greet]\ncount = 3\n", encoding="utf-8")
    i18n.reload()
    with pytest.raises(ValueError, match="greet.count"):
        i18n.keys("en")


def test_i18n_dir_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "en.toml").write_text('only = "from env dir"\n', encoding="utf-8")
    monkeypatch.setenv("I18N_DIR", str(tmp_path))
    i18n.reload()
    try:
        assert i18n.catalog_dir() == tmp_path
        assert i18n.t("only", "en") == "from env dir"
    finally:
        monkeypatch.delenv("I18N_DIR")
        i18n.reload()
    assert "menu.main" in i18n.keys("en")


def test_placeholders_helper() -> None:
    assert i18n.placeholders("Pay {total} for {ref}, {{not}} {ref}") == {"total", "ref"}
    assert i18n.placeholders("no fields") == set()


# Values as long as real ones, for the texts that go out by SMS.
# At their longest: a job code is the leg's id (dispatch.job_code), 7 digits from the
# millionth leg on; amounts with paise: a fee over ₹1,000, a total and its refund over
# ₹10,000 (a relay of a vehicle's load).
SMS_VALUES = {"ref": "48217730", "job": "1234567", "jobs": "1234567, 1234568", "otp": "4821",
              "typed": "1234569",  # a job code a partner typed (sms.offer_not_that)
              "offered": "1234568",  # a new offer's job (dispatch.*_then_offer)
              "asker": "3210",  # the last digits of who asked (pay.link_other)
              "last4": "3210",  # a partner's new number's last digits (sms.phone_moved_old)
              "time": "11:45 pm",  # a time of day (time_of_day.*): sms.recipient_code_sent_at
              "ops_phone": "+919876543210", "ivr_phone": "+918069451234",
              "phone": "+919876543210", "name": "Ramesh", "vehicle": "auto",
              # Places as dispatch.place() names them, as long as it keeps them
              # (PLACE_NAME_MAX), in Devanagari for every language: ops name Points in any
              # script (admin.create_point), customers type landmarks in theirs, and one
              # such letter makes even an English SMS UCS-2 (67 characters a part, not 153).
              # A Point's name, and an office with the customer's landmark cut at a word.
              "pickup": "बेतिया रेलवे स्टेशन पूर्वी गेट", "drop": "मझौलिया ब्लॉक, हनुमान मंदिर...",
              "point": "बेतिया रेलवे स्टेशन पूर्वी गेट",
              "state": "picked up", "left": 2, "n": 2, "minutes": 25, "hours": 3,
              # A job offer's leg at its longest (a pickup's range, 150 km), with the
              # largest load and the heaviest weight bucket.
              "km": "150.0", "size": "big load", "kg": 750,
              "tier": "",  # filled per language: the tier's own words (ivr.sms.details)
              "total_paise": 1_234_560, "payout_paise": 148_420, "fee_paise": 148_420,
              "refund_paise": 1_234_560, "url": "https://rzp.io/i/AbCdEf1234",
              # A rider's earnings (sms.earnings) at their longest likely
              "today_paise": 1_250_000, "week_paise": 8_750_000,
              "legs": 12_345}
# Texts for ops are not counted. A job offer names two places as the customer typed them:
# checked as dispatch.offer_fields cuts them to fit. The partners' list of commands fits
# too, in two pages (HELP, "HELP 2"): a feature phone pays for and pieces every part.
# A phone booking's details name the offices as the call did (ivr.booked_place), each
# cut as ivr.details_params cuts it to fit: checked as that builds them, with real
# offices' names, one of 28 characters and the directory's longest (50).
SMS_OFFICES = {"pickup": "Jagdishpur SO West Champaran",
               "drop": "Shakuntala Mishra National Rehabitation University"}
SMS_OFFICE_KEYS = ("ivr.sms.details", "ivr.sms.details_whatsapp")


def sms_parts(text: str) -> int:
    """How many parts an SMS of ``text`` is sent in: GSM-7 holds 160 characters alone and
    153 a part; UCS-2 (any Indic script) 70 alone and 67 a part (in UTF-16 units)."""
    if text.isascii():
        return 1 if len(text) <= 160 else -(-len(text) // 153)
    units = len(text.encode("utf-16-le")) // 2
    return 1 if units <= 70 else -(-units // 67)


def test_sms_place_values_are_as_long_as_place_keeps_them() -> None:
    from core.services.dispatch import PLACE_NAME_MAX
    assert {len(SMS_VALUES[k]) for k in ("pickup", "drop", "point")} == {PLACE_NAME_MAX}


def test_sms_parts_are_counted_as_carriers_count_them() -> None:
    assert [sms_parts("a" * n) for n in (160, 161, 306, 307)] == [1, 2, 2, 3]
    assert [sms_parts("क" * n) for n in (70, 71, 134, 135)] == [1, 2, 2, 3]


# A phone caller's booking news and their request for a person go by SMS too.
SMS_KEYS = sorted(k for k in i18n.keys("en")
                  if k.startswith(("dispatch.", "payment.", "pay.", "auth.", "sms.", "ivr.sms.",
                                   "booking.", "bot.handoff.", "bot.cancel.done"))
                  and ".ops_" not in k and not k.startswith("dispatch.size."))


@pytest.mark.parametrize("lang", i18n.LANGUAGES)
def test_texts_sent_by_sms_fit_two_parts(lang: str) -> None:
    fields = string.Formatter()
    over = {}
    for key in SMS_KEYS:
        raw = i18n.raw(key, lang)
        names = {f.split(".")[0] for _, f, _, _ in fields.parse(raw) if f}
        values = SMS_VALUES | (SMS_OFFICES if key in SMS_OFFICE_KEYS else {})
        params = {k: v for k, v in values.items()
                  if k in names or k.removesuffix("_paise") in names}
        if "tier" in params:
            params["tier"] = i18n.t("tier.standard", lang, hours=8)
        if "state" in params:  # a job's state (STATUS), the longest in the language
            params["state"] = max((i18n.t(f"dispatch.state.{s}", lang) for s in
                                   ("assigned", "picked_up", "locked", "handed_over")), key=len)
        if "size" in params:  # a parcel's size (the offer), the longest in the language
            params["size"] = max((i18n.t(k, lang) for k in i18n.keys(lang)
                                  if k.startswith("dispatch.size.")), key=len)
        if names & {"open", "close"}:  # the team's hours, as the dialog says them
            params["open"] = i18n.t("time_of_day.morning", lang, time="10:30")
            params["close"] = i18n.t("time_of_day.evening", lang, time="9:30")
        assert names <= {k.removesuffix("_paise") for k in params}, (key, names)
        if key in SMS_OFFICE_KEYS:
            from core.services import ivr
            params = ivr.details_params(key, lang, **params)
        if key == "dispatch.offer":
            from core.services import dispatch
            places = [(params.pop("pickup"), params.pop("drop"))]
            params = dispatch.offer_fields(lang, places, **params)
        text = i18n.t(key, lang, **params)
        if sms_parts(text) > 2:
            over[key] = len(text)
    assert not over, f"{lang}: over two SMS parts: {over}"
