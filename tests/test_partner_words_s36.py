"""Session 36 (review rnew): three misreadings added to core.domain.dispatch.parse_command
earlier this session, each costing a rider his job or his record.

1. "naa", made a no, declined Tamil riders' yes: in Latin-letter Tamil it is "I" ("naa
   varen": I will come, "naa ok", "naa pick pannuren"). It is a no only when the whole
   message is no words ("naa", "naa naa", "naa ji"); else it neither declines nor turns
   a command around, and with a yes the rider is asked again (the offer named).
2. "skip" turned around by a Hindi no ("skip nahi karunga": I will not skip it, "skip
   nahi, le lunga": not skipping, I will take it) declined: any no after "skip" makes the
   message not understood; a no before it ("nahi, skip") is a no twice.
3. A refusal with its reason ("decline, got another job", "nahi, dusra kaam mil gaya",
   "na kaam mil gaya") was read as "no work came" (STATUS): the offer stayed open and
   timed out as a miss. A refusal word, a lone "2" or a word for another job makes it a
   refusal, and the no must be said of the "came" word ("kaam nahi mila", "no job
   received", "কাজ পাইনি") for a complaint.

Set-ups are those of tests/test_dispatch.py (real PostgreSQL, Redis, RQ, the signed SMS
webhook; time frozen through core.clock)."""

from __future__ import annotations

import pytest

from core import i18n
from core.domain.dispatch import Kind, parse_command
from tests.test_admin import _keep_root_handlers  # noqa: F401  (autouse fixture)
from tests.test_dispatch import frozen, offers, sms  # noqa: F401  (fixture)
from tests.test_partner_sms_s36 import _offered

# --- 1. "naa": a no alone, Tamil's "I" in a sentence -------------------------------------


@pytest.mark.db
@pytest.mark.parametrize(("lang", "body"), [
    ("ta", "naa varen"), ("ta", "naa ok"), ("ta", "naa haan"), ("ta", "naa ready {job}"),
    ("hi", "1 naa"),
])
def test_naa_in_a_sentence_keeps_the_offer_and_asks_again(client, live, frozen, lang,  # noqa: F811
                                                          body):
    _, me, job = _offered(lang)
    replies = sms(client, me, body.format(job=job))
    assert [o.status for o in offers(job)] == ["open"], "a yes in Tamil declined the offer"
    assert replies == [i18n.t("dispatch.unknown_offer", lang, job=job)]


@pytest.mark.db
@pytest.mark.parametrize("body", ["naa", "naa naa", "naa ji", "Naa sir"])
def test_naa_alone_still_declines(client, live, frozen, body):  # noqa: F811
    _, me, job = _offered()
    replies = sms(client, me, body)
    assert [o.status for o in offers(job)] == ["declined"]
    assert replies == [i18n.t("dispatch.declined", "hi", job=job)]


@pytest.mark.parametrize(("body", "kind"), [
    # a yes or a number with "naa": asked again (Hindi's "naa" would turn it around)
    ("naa varen", Kind.UNKNOWN), ("naa ok", Kind.UNKNOWN), ("naa haan", Kind.UNKNOWN),
    ("naa ready 57", Kind.UNKNOWN), ("1 naa", Kind.UNKNOWN), ("naa 57", Kind.UNKNOWN),
    ("ok naa", Kind.UNKNOWN),
    # other commands read without it, as before "naa" was a no
    ("naa pick pannuren", Kind.PICK), ("naa on duty", Kind.ON), ("naa PICK 4821", Kind.PICK),
    ("naa kaam nahi mila", Kind.STATUS),
    # a no with it is a no in either language ("I don't want it", "no, don't want it")
    ("naa, nahi chahiye", Kind.DECLINE), ("naa nahi", Kind.DECLINE),
    # alone, or with other no words or a "ji": a no
    ("naa", Kind.DECLINE), ("naa naa", Kind.DECLINE), ("naa ji", Kind.DECLINE),
    ("nahi naa", Kind.DECLINE),
])
def test_naa_is_a_no_only_alone(body, kind):
    assert parse_command(body).kind is kind


# --- 2. "skip" turned around by a Hindi no ------------------------------------------------


@pytest.mark.parametrize(("body", "kind"), [
    ("skip nahi karunga", Kind.UNKNOWN), ("skip nahi karna", Kind.UNKNOWN),
    ("skip nahi, le lunga", Kind.UNKNOWN), ("skip na karo", Kind.UNKNOWN),
    ("skip 57 nahi", Kind.UNKNOWN), ("skip naa", Kind.UNKNOWN), ("skip mat karo", Kind.UNKNOWN),
    ("don't skip", Kind.UNKNOWN),
    # a no before "skip" is a no twice; "skip" alone a no
    ("nahi, skip", Kind.DECLINE), ("no skip", Kind.DECLINE), ("skip", Kind.DECLINE),
    ("skip it", Kind.DECLINE), ("please skip", Kind.DECLINE),
])
def test_a_no_after_skip_turns_it_around(body, kind):
    assert parse_command(body).kind is kind


@pytest.mark.db
@pytest.mark.parametrize("body", ["skip nahi, le lunga", "skip nahi karunga"])
def test_wont_skip_keeps_the_offer_and_asks_again(client, live, frozen, body):  # noqa: F811
    _, me, job = _offered()
    replies = sms(client, me, body)
    assert [o.status for o in offers(job)] == ["open"], "'I will not skip it' declined"
    assert replies == [i18n.t("dispatch.unknown_offer", "hi", job=job)]


@pytest.mark.db
def test_no_then_skip_declines(client, live, frozen):  # noqa: F811
    _, me, job = _offered()
    replies = sms(client, me, "nahi, skip")
    assert [o.status for o in offers(job)] == ["declined"]
    assert replies == [i18n.t("dispatch.declined", "hi", job=job)]


# --- 3. a refusal with its reason is no "no work came" ------------------------------------


@pytest.mark.parametrize("body", [
    "decline got another job", "reject, got other offer", "no, I got another job",
    "nahi, dusra kaam mil gaya", "na kaam mil gaya", "no already got work",
    "job nahi chahiye mil gaya dusra", "नहीं, दूसरा काम मिल गया", "no, job mil gaya",
    "2 kaam nahi mila", "refuse, kaam mil gaya",
])
def test_a_refusal_with_its_reason_declines(body):
    assert parse_command(body).kind is Kind.DECLINE


@pytest.mark.parametrize("body", ["sorry got another job"])
def test_another_job_without_a_no_is_asked_again(body):
    """No STATUS (which leaves the offer to time out as a miss): not understood, so the
    rider hears the offer's two choices."""
    assert parse_command(body).kind is Kind.UNKNOWN


@pytest.mark.parametrize("body", [
    "kaam nahi mila", "kaam milta nahi", "no job received", "no work came", "no offer received",
    "koi offer nahi aaya", "कोई काम नहीं आया", "काम मिळालं नाही", "কাজ পাইনি", "வேலை வரவில்லை",
    "పని రాలేదు", "કામ મળ્યું નથી", "ಕೆಲಸ ಬಂದಿಲ್ಲ", "2 din se kaam nahi mila",
    "kaam nahi mila 2 ghante se",
])
def test_no_work_came_is_still_a_complaint(body):
    assert parse_command(body).kind is Kind.STATUS


@pytest.mark.db
@pytest.mark.parametrize("body", ["nahi, dusra kaam mil gaya", "decline got another job",
                                  "na kaam mil gaya"])
def test_a_refusal_with_its_reason_declines_the_open_offer(client, live, frozen,  # noqa: F811
                                                           body):
    _, me, job = _offered()
    replies = sms(client, me, body)
    assert [o.status for o in offers(job)] == ["declined"], "the refusal left the offer open"
    assert replies == [i18n.t("dispatch.declined", "hi", job=job)]
