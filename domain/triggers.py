"""Lead-action triggers: which fire for a lead event, in the Lead Actions guide's order.

A trigger is derived from one committed lead event. A receipt fires four, in this order:
`Received & Duplicate` | `Received & Not Duplicate`, then `Received & Referred` |
`Received & Not Referred`, then `Received`, then `Received (User)` | `Received (Other)`.
An update fires `Updated` then `Updated (User)` | `Updated (Other)`. The rest fire one each.

"(User)" and "(Other)" tell who made the change: a signed-in person (`by_user`) or a
system (a channel, an import, an action). The guide's webhook codes `deliveryass` /
`deliveryna` and `updatedass` / `updatedna` are those two halves.

Return triggers have no code in the guide; ours are `returnstarted`, `returndeclined` and
`returnaccepted`.
"""

from __future__ import annotations

from enum import StrEnum

from domain.base import DomainEvent
from domain.leads import Lead
from domain.milestones import Milestone


class Trigger(StrEnum):
    RECEIVED_DUPLICATE = "received_duplicate"
    RECEIVED_NOT_DUPLICATE = "received_not_duplicate"
    RECEIVED_REFERRED = "received_referred"
    RECEIVED_NOT_REFERRED = "received_not_referred"
    RECEIVED = "received"
    RECEIVED_USER = "received_user"
    RECEIVED_OTHER = "received_other"
    UPDATED = "updated"
    UPDATED_USER = "updated_user"
    UPDATED_OTHER = "updated_other"
    STATUS_CHANGED = "status_changed"
    USER_CHANGED = "user_changed"
    VALIDATED = "validated"
    INVALIDATED = "invalidated"
    CONTACTED = "contacted"
    QUALIFIED = "qualified"
    CONVERTED = "converted"
    CLOSED = "closed"
    REFERRED = "referred"
    RETURN_STARTED = "return_started"
    RETURN_DECLINED = "return_declined"
    RETURN_ACCEPTED = "return_accepted"
    EMAIL_FAILED = "email_failed"
    EMAIL_OPENED = "email_opened"
    EMAIL_CLICKED = "email_clicked"
    EMAIL_REPLIED = "email_replied"
    EMAIL_UNSUBSCRIBED = "email_unsubscribed"
    EMAIL_SPAM = "email_spam"
    SMS_FAILED = "sms_failed"
    SMS_REPLIED = "sms_replied"


# The `eventtype` an outbound webhook carries for each trigger.
EVENT_TYPE_CODES: dict[Trigger, str] = {
    Trigger.RECEIVED_DUPLICATE: "deliverydupe",
    Trigger.RECEIVED_NOT_DUPLICATE: "deliveryndupe",
    Trigger.RECEIVED_REFERRED: "deliveryref",
    Trigger.RECEIVED_NOT_REFERRED: "delivery",
    Trigger.RECEIVED: "deliveryall",
    Trigger.RECEIVED_USER: "deliveryass",
    Trigger.RECEIVED_OTHER: "deliveryna",
    Trigger.UPDATED: "updatedall",
    Trigger.UPDATED_USER: "updatedass",
    Trigger.UPDATED_OTHER: "updatedna",
    Trigger.STATUS_CHANGED: "status",
    Trigger.USER_CHANGED: "user",
    Trigger.VALIDATED: "progvalidated",
    Trigger.INVALIDATED: "proginvalidate",
    Trigger.CONTACTED: "progcontacted",
    Trigger.QUALIFIED: "progqualified",
    Trigger.CONVERTED: "progconverted",
    Trigger.CLOSED: "progclosed",
    Trigger.REFERRED: "referral",
    Trigger.RETURN_STARTED: "returnstarted",
    Trigger.RETURN_DECLINED: "returndeclined",
    Trigger.RETURN_ACCEPTED: "returnaccepted",
    Trigger.EMAIL_FAILED: "emailfailed",
    Trigger.EMAIL_OPENED: "emailopened",
    Trigger.EMAIL_CLICKED: "emailclicked",
    Trigger.EMAIL_REPLIED: "emailreplied",
    Trigger.EMAIL_UNSUBSCRIBED: "emailunsub",
    Trigger.EMAIL_SPAM: "emailspam",
    Trigger.SMS_FAILED: "smsfailed",
    Trigger.SMS_REPLIED: "smsreplied",
}

# `Lead.MessageActivity.kind` → the trigger it fires. Replied and clicked fire every time;
# the others once per message (the message records that it fired them).
MESSAGE_TRIGGERS: dict[str, Trigger] = {
    "email_failed": Trigger.EMAIL_FAILED,
    "email_opened": Trigger.EMAIL_OPENED,
    "email_clicked": Trigger.EMAIL_CLICKED,
    "email_replied": Trigger.EMAIL_REPLIED,
    "email_unsubscribed": Trigger.EMAIL_UNSUBSCRIBED,
    "email_spam": Trigger.EMAIL_SPAM,
    "sms_failed": Trigger.SMS_FAILED,
    "sms_replied": Trigger.SMS_REPLIED,
    # WhatsApp has no trigger of its own in the guide: its replies and failures are text's.
    "whatsapp_failed": Trigger.SMS_FAILED,
    "whatsapp_replied": Trigger.SMS_REPLIED,
}

_MILESTONE_TRIGGERS: dict[Milestone, Trigger] = {
    Milestone.VALIDATED: Trigger.VALIDATED,
    Milestone.INVALIDATED: Trigger.INVALIDATED,
    Milestone.CONTACTED: Trigger.CONTACTED,
    Milestone.QUALIFIED: Trigger.QUALIFIED,
    Milestone.CONVERTED: Trigger.CONVERTED,
    Milestone.CLOSED: Trigger.CLOSED,
}

# The lead events that can fire a trigger (what the action runner subscribes to).
TRIGGERING_EVENT_TYPES = frozenset(
    {
        "lead.received",
        "lead.updated",
        "lead.status_changed",
        "lead.assigned",
        "lead.milestone_reached",
        "lead.referred",
        "lead.return_started",
        "lead.return_declined",
        "lead.return_accepted",
        "lead.message_activity",
    }
)


def triggers_of(event: DomainEvent, *, referred_on_receipt: bool = False) -> list[Trigger]:
    """The triggers `event` fires, in firing order; [] for an event that fires none.
    `referred_on_receipt` says whether the lead type referred the lead as it came in."""
    if isinstance(event, Lead.Received):
        return [
            Trigger.RECEIVED_DUPLICATE if event.is_duplicate else Trigger.RECEIVED_NOT_DUPLICATE,
            Trigger.RECEIVED_REFERRED if referred_on_receipt else Trigger.RECEIVED_NOT_REFERRED,
            Trigger.RECEIVED,
            Trigger.RECEIVED_USER if event.by_user else Trigger.RECEIVED_OTHER,
        ]
    if isinstance(event, Lead.Updated):
        return [Trigger.UPDATED, Trigger.UPDATED_USER if event.by_user else Trigger.UPDATED_OTHER]
    if isinstance(event, Lead.StatusChanged):
        return [Trigger.STATUS_CHANGED]
    if isinstance(event, Lead.Assigned):
        return [Trigger.USER_CHANGED]
    if isinstance(event, Lead.MilestoneReached):
        return [_MILESTONE_TRIGGERS[event.milestone]]
    if isinstance(event, Lead.Referred):
        return [Trigger.REFERRED]
    if isinstance(event, Lead.ReturnStarted):
        return [Trigger.RETURN_STARTED]
    if isinstance(event, Lead.ReturnDeclined):
        return [Trigger.RETURN_DECLINED]
    if isinstance(event, Lead.ReturnAccepted):
        return [Trigger.RETURN_ACCEPTED]
    if isinstance(event, Lead.MessageActivity) and event.kind in MESSAGE_TRIGGERS:
        return [MESSAGE_TRIGGERS[event.kind]]
    return []
