"""A rider's payout account changed by ops, and numbers in ops' notes (review rkyc).

- A rider was never told his payout account changed: a change made for a thief (someone
  talks an operator into "my new bank account is acc_...") went unnoticed until his pay
  stopped coming. Cleared while he was off duty, he was not told either. Now he hears it
  by SMS in his language (the new account's last 4, or that it was removed), with the
  number to call if he did not ask for it; each change once.
- A bank account or Aadhaar number an operator typed in a note was kept in clear in the
  audit log for good (only phones were masked), though every note field says "numbers
  kept masked". Now any run of 9 digits or more is kept as its last 4.
"""

from __future__ import annotations

import pytest
from sqlalchemy import select

from core import i18n
from core.adapters.api_models import AuditEntry
from core.adapters.db import transaction
from core.adapters.models import PartnerProfile
from core.config import get_settings
from core.logs import mask_note, mask_phones
from core.services import admin
from tests.test_api import API, sign_in
from tests.test_dispatch import LAXMIPUR, bodies_to, make_partner

pytestmark = pytest.mark.db

OPERATOR = "+919812388861"


def _text(key: str, lang: str, **params: object) -> str:
    return i18n.t(key, lang, ops_phone=get_settings().ops_phone, **params)


def _notes(action: str) -> list[str]:
    with transaction() as s:
        return [d["note"] for d in s.scalars(select(AuditEntry.details).where(
            AuditEntry.action == action).order_by(AuditEntry.id)) if d.get("note")]


@pytest.mark.parametrize("on_duty", [True, False])
def test_rider_is_told_in_his_language_when_his_payout_account_changes(clean_db, on_duty):
    """Was: nothing sent. Now: one SMS, in Hindi, with the new account's last 4 (not the
    whole id) and the ops number to call; the same account again sends nothing more."""
    pid, phone = make_partner("Ramesh", LAXMIPUR, lang="hi", on_duty=on_duty,
                              payout_account="acc_Ramesh0001")
    before = bodies_to(phone)
    with transaction() as s:
        assert admin.set_payout_account(s, pid, "acc_Thief00042", actor="ops:1").changed
    told = bodies_to(phone)[len(before):]
    assert told == [_text("sms.payout_account_changed", "hi", last4="0042")]
    assert "acc_Thief" not in told[0] and "...0042" in told[0]
    with transaction() as s:  # the request run again: nothing changed, nothing told
        assert not admin.set_payout_account(s, pid, "acc_Thief00042", actor="ops:1").changed
    assert bodies_to(phone)[len(before):] == told


def test_each_change_is_told_and_a_rolled_back_one_is_not(clean_db):
    """Changed away and back: each change its own SMS (a dedupe key per change, not per
    account). A change that rolls back sends nothing."""
    pid, phone = make_partner("Ramesh", LAXMIPUR, lang="en", on_duty=False,
                              payout_account="acc_Ramesh0001")
    before = len(bodies_to(phone))
    for account in ("acc_Other00002", "acc_Ramesh0001", "acc_Other00002"):
        with transaction() as s:
            admin.set_payout_account(s, pid, account, actor="ops:1")
    with pytest.raises(RuntimeError), transaction() as s:
        admin.set_payout_account(s, pid, "acc_Never00003", actor="ops:1")
        raise RuntimeError("the request failed after the change")
    assert bodies_to(phone)[before:] == [
        _text("sms.payout_account_changed", "en", last4=last4)
        for last4 in ("0002", "0001", "0002")]


def test_rider_given_his_first_payout_account_is_told_too(clean_db):
    pid, phone = make_partner("Ramesh", LAXMIPUR, lang="en", on_duty=False,
                              payout_account=None)
    with transaction() as s:
        assert admin.set_payout_account(s, pid, "acc_Ramesh0007", actor="ops:1").changed
    assert bodies_to(phone)[-1] == _text("sms.payout_account_changed", "en", last4="0007")


def test_rider_off_duty_is_told_when_his_payout_account_is_removed(clean_db):
    """Was: told only when on duty or offered a job. Now off duty he hears it was
    removed, and whom to call if he did not ask for it; once."""
    pid, phone = make_partner("Ramesh", LAXMIPUR, lang="hi", on_duty=False,
                              payout_account="acc_Ramesh0001")
    before = bodies_to(phone)
    with transaction() as s:
        assert admin.clear_payout_account(s, pid, actor="ops:1").changed
    with transaction() as s:
        assert not admin.clear_payout_account(s, pid, actor="ops:1").changed
    assert bodies_to(phone)[len(before):] == [_text("sms.payout_account_removed", "hi")]


def test_rider_on_duty_gets_one_sms_when_his_payout_account_is_removed(clean_db):
    """On duty he goes OFF and hears why (dispatch.payout_account_cleared, which says it
    was removed and to call ops): not a second SMS about the same removal."""
    pid, phone = make_partner("Ramesh", LAXMIPUR, lang="hi", on_duty=True,
                              payout_account="acc_Ramesh0001")
    before = bodies_to(phone)
    with transaction() as s:
        assert admin.clear_payout_account(s, pid, actor="ops:1").changed
    assert bodies_to(phone)[len(before):] == [
        _text("dispatch.payout_account_cleared", "hi")]


@pytest.mark.parametrize("number, note, last4", [
    ("30123456789012", "his new SBI a/c 30123456789012, IFSC SBIN0001234", "9012"),
    ("234567890123", "Aadhaar 234567890123 matched to the bank account", "0123"),
    ("2345 6789 0123", "Aadhaar 2345 6789 0123 seen", "0123"),
    ("3012-3456-7890-12", "a/c 3012-3456-7890-12 (typed with dashes)", "9012"),
    ("२३४५६७८९०१२३", "आधार २३४५६७८९०१२३ देखा", "0123"),  # Devanagari digits
    ("123456789", "a/c no.123456789", "6789"),  # 9 digits, against the text
])
def test_account_numbers_in_a_note_are_kept_masked(clean_db, number, note, last4):
    """Was: kept in clear in the audit log for good. Now: its last 4 only."""
    pid, _ = make_partner("Ramesh", LAXMIPUR, payout_account="acc_Ramesh0001")
    with transaction() as s:
        admin.set_payout_account(s, pid, "acc_Ramesh0002", actor="ops:1", note=note)
    with transaction() as s:
        admin.clear_payout_account(s, pid, actor="ops:1", note=note)
    kept = _notes("partner.payout_account")
    assert len(kept) == 2
    for one in kept:
        assert number not in one and "*****" + last4 in one, one


def test_other_admin_notes_are_masked_too(clean_db):
    pid, _ = make_partner("Ramesh", LAXMIPUR, payout_account="acc_Ramesh0001")
    other = make_partner("Suresh", (LAXMIPUR[0] + 0.01, LAXMIPUR[1]))[0]
    with transaction() as s:
        point = s.get(PartnerProfile, other).home_point_id
    with transaction() as s:
        admin.set_home_point(s, pid, point, actor="ops:1",
                             note="moved; a/c 30123456789012, call 98123 45678")
    assert _notes("partner.home_point") == ["moved; a/c **********9012, call ******5678"]


def test_phones_in_a_note_are_masked_as_before_and_log_lines_keep_numbers():
    """Phones stay masked as mask_phones masks them; mask_phones itself (log lines) does
    not take long numbers (an id, an amount in a log line stays as it was)."""
    for text in ("call +91 98123 45678 now", "WaId=14155238886", "ring 098123 45678",
                 "+1 415 523 8886 said so"):
        assert mask_note(text) == mask_phones(text) != text
    assert mask_phones("a/c 30123456789012") == "a/c 30123456789012"
    assert mask_note("a/c 30123456789012") == "a/c **********9012"
    # Short numbers stay: a booking's 8 digits, a leg, an amount, a date.
    for text in ("booking 48217730", "leg 1234567 paid 1500", "on 2026-12-06"):
        assert mask_note(text) == text


def test_a_kyc_note_through_the_ops_api_is_kept_masked(client, clean_db):
    """The ops API's audit (KYC notes, reasons) keeps long numbers masked as well."""
    pid, _ = make_partner("Ramesh", LAXMIPUR, kyc_status="pending",
                          payout_account="acc_Ramesh0001")
    ops = sign_in(client, OPERATOR, role="ops")
    r = client.put(f"{API}/ops/partners/{pid}/kyc", headers=ops,
                   json={"status": "verified", "note": "Aadhaar 2345 6789 0123 checked, "
                                                       "phone 98123 45678"})
    assert r.status_code == 200, r.get_json()
    assert _notes("partner.kyc") == ["Aadhaar ********0123 checked, phone ******5678"]


def test_partner_profile_notes_are_masked_too(clean_db):
    """The notes of ops' vehicle, language, app and phone changes (partner_profile) were
    still phone-masked only (lead's follow-up of hadmin's note)."""
    from core.services import partner_profile

    pid, _ = make_partner("Ramesh", LAXMIPUR)
    with transaction() as s:
        partner_profile.set_language(s, pid, "en", actor="ops:1",
                                     note="asked by him; Aadhaar 2345 6789 0123 checked")
    assert _notes("partner.language") == ["asked by him; Aadhaar ********0123 checked"]
