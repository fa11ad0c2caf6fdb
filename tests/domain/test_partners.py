"""The partner's side of a referral, pure: what it may see of a lead, its signing secrets,
and its webhook switched off by a 410 and back on."""

from __future__ import annotations

import uuid
from datetime import timedelta

from standardwebhooks import Webhook as ReferenceWebhook

from domain.leads import Lead, LeadDetails, Source, Status
from domain.partners import Partner, PartnerDetails, PartnerLeadView, referral_payload, referred_to
from domain.signing import webhook_headers


def a_lead() -> Lead:
    details = LeadDetails.model_validate(
        {
            "name": "Ada",
            "email": "ada@example.com",
            "description": "a quote please",
            "tags": ["secret-tag"],
            "attribution": {"utm_source": "ads"},
            "customFields": {"budget": 10, "_displayNames": {"budget": "Budget"}},
        }
    )
    return Lead(  # type: ignore[call-arg]  # `id` comes from the library's metaclass
        id=uuid.uuid4(),
        workspace_id=uuid.uuid4(),
        request_id=7,
        source=Source.WEBHOOK,
        channel="Ads",
        actor="test",
        by_user=False,
        name="Ada",
        details=details,
        email_normal="ada@example.com",
        email_valid=True,
        phone_normal=None,
        phone_valid=None,
        is_duplicate=False,
        duplicate_of=None,
        status=Status.BACKLOG,
    )


def test_the_partner_view_shares_only_the_person_and_the_referral() -> None:
    lead = a_lead()
    partner_id = uuid.uuid4()
    lead.assign("user-1", "test", by_user=True)
    lead.refer(partner_id, "test", by_user=True)
    view = PartnerLeadView.of(lead).wire()
    assert view["id"] == str(lead.id) and view["requestId"] == 7
    assert view["description"] == "a quote please" and view["source"] == "webhook"
    assert view["customFields"] == {"budget": 10, "_displayNames": {"budget": "Budget"}}
    assert lead.referred_at is not None and view["referredAt"] == lead.referred_at.isoformat()
    for hidden in ("secret-tag", "user-1", "utm_source", "backlog", "Ads", str(partner_id)):
        assert hidden not in str(view), hidden
    assert referred_to(lead, partner_id) and not referred_to(lead, uuid.uuid4())
    payload = referral_payload(lead, lead.referred_at)
    assert payload["type"] == "lead.referred" and payload["data"] == view
    lead.delete("test", by_user=True)
    assert not referred_to(lead, partner_id)


def test_secrets_rotate_with_an_overlap_and_a_410_switches_the_webhook_off() -> None:
    partner = Partner(
        workspace_id=uuid.uuid4(),
        details=PartnerDetails(name="P", webhook_url="https://p.example.com/h"),
        actor="t",
    )
    first = partner.issue_first_secret("t")
    assert first is not None and partner.issue_first_secret("t") is None
    second = partner.issue_secret(timedelta(hours=1), "t")
    now = partner.secrets[0].issued_at
    assert partner.signing_secrets(now) == [second, first]
    assert partner.signing_secrets(now + timedelta(hours=2)) == [second]
    headers = webhook_headers(
        msg_id="msg_1",
        timestamp=int(now.timestamp()),
        body=b"{}",
        secrets=partner.signing_secrets(now),
        content_type="application/json",
        custom={},
    )
    for secret in (first, second):
        ReferenceWebhook(secret).verify(b"{}", headers)  # raises unless it verifies

    assert partner.sends_referrals
    assert partner.disable_webhook("gone") and not partner.disable_webhook("again")
    assert not partner.sends_referrals and partner.webhook_disabled == "gone"
    assert partner.update({"name": "Q"}, "t") and not partner.sends_referrals  # a rename: off
    assert partner.update({"webhook_url": "https://p.example.com/h"}, "t")
    assert partner.sends_referrals and partner.webhook_disabled is None
    partner.update({"webhook_url": None}, "t")
    assert not partner.sends_referrals
