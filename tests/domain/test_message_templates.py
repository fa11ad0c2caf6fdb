"""Message templates: problems found when saving, content and missing values when sending."""

from __future__ import annotations

from typing import Any

import pytest

from domain.automations import Template
from domain.channels import ChannelType
from domain.lead_context import lead_context
from domain.leads import LeadDetails
from domain.message_templates import KNOWN_ROOTS, as_text, render_message, template_problems

SMS, EMAIL, WHATSAPP = ChannelType.SMS, ChannelType.EMAIL, ChannelType.WHATSAPP


def wire_lead(**overrides: Any) -> dict[str, Any]:
    details = LeadDetails.model_validate(
        {
            "name": "Ada King Lovelace",
            "email": "ada@example.com",
            "phone": "+12015550123",
            "customFields": {"City": "London", "visits": 3, "interests": ["maths", "poetry"]},
            **overrides,
        }
    )
    return details.model_dump(mode="json", by_alias=True)


def context(user: dict[str, Any] | None = None, **overrides: Any) -> dict[str, Any]:
    return lead_context(
        wire_lead(**overrides),
        keys={"offer": "10% off"},
        extra={"user": user if user is not None else {"name": "Mia", "email": "mia@acme.test"}},
    )


# ---- saving ---------------------------------------------------------------------------------


def test_known_roots() -> None:
    assert KNOWN_ROOTS == ("lead", "user", "key")


@pytest.mark.parametrize(
    ("template", "channel"),
    [
        (Template(body="Hi {{lead.firstName}}, {{user.name}} here."), SMS),
        (Template(body="{{ lead.customFields.City }} {{key.offer}} {{lead.answers.q1[0]}}"), SMS),
        (Template(subject="For {{lead.name}}", body="Call {{user.phone}}"), EMAIL),
        (
            Template(name="welcome", language="en", parameters=["{{lead.firstName}}", "hi"]),
            WHATSAPP,
        ),
        (Template(body="No placeholders at all, even with {single} braces."), SMS),
    ],
)
def test_good_templates_have_no_problems(template: Template, channel: ChannelType) -> None:
    assert template_problems(template, channel) == []


def test_a_template_that_does_not_fit_its_channel_is_named() -> None:
    assert template_problems(Template(body="Hi"), EMAIL) == ["an email template needs `subject`"]
    assert template_problems(Template(body="Hi"), WHATSAPP) == [
        "a WhatsApp template needs `name` and `language`"
    ]
    assert template_problems(Template(name="welcome", language="en"), SMS) == [
        "a sms template needs `body`"
    ]


def test_unknown_roots_are_named_with_the_way_to_write_them() -> None:
    [problem] = template_problems(Template(body="Hi {{firstName}}"), SMS)
    assert problem.startswith("body: placeholder `{{firstName}}` starts with `firstName`")
    assert "`lead.firstName`" in problem
    [problem] = template_problems(Template(body="Hi {{ agent.name }}"), SMS)
    assert "`{{agent.name}}`" in problem and "`lead`, `user`, `key`" in problem


def test_a_root_alone_or_a_broken_path_is_a_problem() -> None:
    problems = template_problems(Template(body="{{lead}} {{user}} {{lead..name}} {{lead.}}"), SMS)
    assert problems == [
        "body: placeholder `{{lead}}` names no field of `lead` (e.g. `lead.name`)",
        "body: placeholder `{{user}}` names no field of `user` (e.g. `user.name`)",
        "body: placeholder `{{lead..name}}` is not a path (`lead.name`, `lead.customFields.city`,"
        " `user.email`)",
        "body: placeholder `{{lead.}}` is not a path (`lead.name`, `lead.customFields.city`,"
        " `user.email`)",
    ]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("Hi {{ }}", "body: `{{ }}` is an empty placeholder"),
        ("Hi {{}}", "body: `{{}}` is an empty placeholder"),
        ("Hi {{lead.name", "body: unbalanced braces near `Hi {{lead.name`"),
        ("Hi lead.name}} now", "body: unbalanced braces near `Hi lead.name}} now`"),
        ("Hi {{lead.{{name}}}}", "body: unbalanced braces near `Hi {{lead.{{name}}}}`"),
        (
            "{{lead.name}} and {{lead.email}",
            "body: unbalanced braces near `{{lead.name}} and {{lead.email}`",
        ),
    ],
)
def test_malformed_placeholders_are_named(body: str, expected: str) -> None:
    problems = template_problems(Template(body=body), SMS)
    assert any(p.startswith(expected) for p in problems), problems


def test_every_text_of_the_channel_is_checked_and_where_is_said() -> None:
    problems = template_problems(Template(subject="{{nope.x}}", body="{{lead.name}} {{ }}"), EMAIL)
    assert [p.split(":")[0] for p in problems] == ["subject", "body"]
    problems = template_problems(
        Template(name="welcome", language="en", parameters=["{{lead.name}}", "{{who}}"]), WHATSAPP
    )
    assert [p.split(":")[0] for p in problems] == ["parameters[1]"]
    # an SMS template's subject is not sent, so not checked
    assert template_problems(Template(subject="{{nope}}", body="Hi"), SMS) == []


def test_a_whatsapp_template_name_is_not_filled_in() -> None:
    problems = template_problems(Template(name="{{lead.name}}", language="en"), WHATSAPP)
    assert problems == ["name: a WhatsApp template's name cannot hold placeholders"]


# ---- sending --------------------------------------------------------------------------------


def test_sms_content_is_the_filled_body() -> None:
    template = Template(body="Hi {{lead.firstName}}, {{user.name}} from Acme: {{key.offer}}.")
    content, missing = render_message(template, SMS, context())
    assert content == {"body": "Hi Ada, Mia from Acme: 10% off."}
    assert missing == []


def test_email_content_has_subject_and_body() -> None:
    template = Template(
        subject="{{lead.firstName}}, your quote",
        body="Dear {{lead.name}},\nCity: {{lead.City}}\nVisits: {{lead.customFields.visits}}\n"
        "Interests: {{lead.interests}}\n{{user.email}}",
    )
    content, missing = render_message(template, EMAIL, context())
    assert content == {
        "subject": "Ada, your quote",
        "body": "Dear Ada King Lovelace,\nCity: London\nVisits: 3\nInterests: maths, poetry\n"
        "mia@acme.test",
    }
    assert missing == []


def test_whatsapp_content_is_the_template_with_filled_parameters() -> None:
    template = Template(
        name="welcome_v2", language="en_US", parameters=["{{lead.firstName}}", "{{user.name}}", "x"]
    )
    content, missing = render_message(template, WHATSAPP, context())
    assert content == {
        "template": {"name": "welcome_v2", "language": "en_US", "parameters": ["Ada", "Mia", "x"]}
    }
    assert missing == []


def test_missing_values_are_reported_not_raised() -> None:
    template = Template(
        subject="For {{lead.firstName}} {{lead.customFields.nickname}}",
        body="{{user.name}} {{lead.customFields.nickname}} {{lead.email}}",
    )
    # no assigned user, no nickname, a blank email
    content, missing = render_message(template, EMAIL, context(user={}, email=None))
    assert content == {"subject": "For Ada ", "body": "  "}
    assert missing == ["lead.customFields.nickname", "user.name", "lead.email"]


def test_a_user_that_is_none_is_missing_too() -> None:
    ctx = lead_context(wire_lead(), extra={"user": None})
    content, missing = render_message(Template(body="{{user.name}}!"), SMS, ctx)
    assert content == {"body": "!"} and missing == ["user.name"]


def test_a_missing_whatsapp_parameter_is_reported() -> None:
    template = Template(name="welcome", language="en", parameters=["{{lead.customFields.none}}"])
    content, missing = render_message(template, WHATSAPP, context())
    assert content["template"]["parameters"] == [""]
    assert missing == ["lead.customFields.none"]


def test_a_template_that_does_not_fit_is_refused_at_send_time() -> None:
    with pytest.raises(ValueError, match="needs `subject`"):
        render_message(Template(body="Hi"), EMAIL, context())


def test_a_placeholder_value_is_text_as_a_person_reads_it() -> None:
    assert as_text(None) == ""
    assert as_text(True) == "yes" and as_text(False) == "no"
    assert as_text(3.0) == "3" and as_text(2.5) == "2.5" and as_text(7) == "7"
    assert as_text(["a", "", None, 2]) == "a, 2"
    # the value is inserted as text, never re-read as a template
    ctx = context(customFields={"trap": "{{user.email}}"})
    content, _ = render_message(Template(body="{{lead.trap}}"), SMS, ctx)
    assert content == {"body": "{{user.email}}"}
