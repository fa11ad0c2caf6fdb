"""Leads and receipts as JSON, in the wire names in docs/architecture.md."""

from __future__ import annotations

from typing import Any

from domain.leads import Lead, LeadDetails
from domain.partners import PartnerLeadView
from handlers.intake import Receipt


def details_json(details: LeadDetails) -> dict[str, Any]:
    data = details.model_dump(mode="json", by_alias=True, exclude={"display_names"})
    data["customFields"] = {**details.custom_fields, "_displayNames": dict(details.display_names)}
    return data


def lead_json(lead: Lead) -> dict[str, Any]:
    details = details_json(lead.details)
    return {
        **details,
        "id": str(lead.id),
        "requestId": lead.request_id,
        "name": lead.name,
        "source": lead.source,
        "status": lead.status,
        "pipelineId": str(lead.pipeline_id) if lead.pipeline_id else None,
        "stageId": str(lead.stage_id) if lead.stage_id else None,
        "assignedTo": lead.assigned_to,
        "isDuplicate": lead.is_duplicate,
        "duplicateOf": str(lead.duplicate_of) if lead.duplicate_of else None,
        "emailValid": lead.email_valid,
        "phoneValid": lead.phone_valid,
        "notes": [
            {
                "id": str(note.id),
                "value": note.value,
                "author": note.author,
                "createdAt": note.created_at.isoformat(),
            }
            for note in lead.notes
        ],
        "milestones": [str(m) for m in lead.milestones],
        "deleted": lead.deleted,
        "leadTypeId": str(lead.lead_type_id) if lead.lead_type_id else None,
        "referredTo": str(lead.referred_to) if lead.referred_to else None,
        "referredAt": lead.referred_at.isoformat() if lead.referred_at else None,
        "referrals": lead.referrals,
        "returnStatus": str(lead.return_status) if lead.return_status else None,
        "contactId": str(lead.contact_id) if lead.contact_id else None,
        "convertedAt": lead.converted_at.isoformat() if lead.converted_at else None,
        "createdAt": lead.created_on.isoformat(),
        "updatedAt": lead.modified_on.isoformat(),
    }


def partner_lead_json(lead: Lead) -> dict[str, Any]:
    """The lead as the partner it is referred to sees it (`domain.partners.PartnerLeadView`,
    which the referral webhook carries too)."""
    return PartnerLeadView.of(lead).wire()


def receipt_json(receipt: Receipt) -> dict[str, Any]:
    return {
        "id": str(receipt.lead_id),
        "requestId": receipt.request_id,
        "isDuplicate": receipt.is_duplicate,
        "duplicateOf": str(receipt.duplicate_of) if receipt.duplicate_of else None,
        "status": receipt.status,
        "position": receipt.position,
        "submissionId": str(receipt.submission_id) if receipt.submission_id else None,
        "replayed": receipt.replayed,
    }
