"""Buyer requests: JSON, form and XML bodies from a field mapping; headers; required fields."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs, parse_qsl
from xml.etree import ElementTree

import pytest

from domain.buyer_payloads import (
    XML_DECLARATION,
    BuyerRequest,
    PayloadError,
    build_request,
    check_targets,
    endpoint_request,
    missing_required,
    ping_request,
    redact_url,
)
from domain.campaigns import Endpoint, Ping
from domain.lead_context import lead_context

LEAD: dict[str, Any] = {
    "email": "ada@example.com",
    "phone": "+12015550123",
    "name": "Ada Lovelace",
    "tags": ["vip", "web"],
    "customFields": {"zip": "10001", "state": "NY", "consent": True, "income": 85000},
    "answers": {"q1": "yes"},
}
KEYS: dict[str, Any] = {
    "age": 36,
    "price": Decimal("12.50"),
    "whole": Decimal("40"),
    "born": date(1989, 12, 10),
    "seen": datetime(2025, 6, 1, 12, 30, tzinfo=UTC),
    "empty": "",
}


def context(lead: dict[str, Any] | None = None, **keys: Any) -> dict[str, Any]:
    return lead_context(lead if lead is not None else LEAD, keys={**KEYS, **keys}, source="web")


def build(content_type: str, fields: dict[str, str], **options: Any) -> BuyerRequest:
    arguments: dict[str, Any] = {
        "url": "https://buyer.example/leads",
        "method": "post",
        "content_type": content_type,
        "headers": {},
        "fields": fields,
        "context": context(),
    }
    arguments.update(options)
    return build_request(**arguments)


# JSON


def test_json_nests_dotted_targets_and_keeps_types() -> None:
    request = build(
        "json",
        {
            "applicant.email": "{{lead.email}}",
            "applicant.name.first": "{{lead.firstName}}",
            "applicant.name.last": "{{ lead.lastName }}",
            "applicant.age": "{{key.age}}",
            "consent": "{{lead.consent}}",
            "income": "{{income}}",
            "price": "{{key.price}}",
            "whole": "{{key.whole}}",
            "born": "{{key.born}}",
            "seen": "{{key.seen}}",
            "tags": "{{lead.tags}}",
            "vendor": "acme",
            "label": "{{lead.firstName}} from {{lead.state}}",
        },
    )
    assert request.method == "POST"
    assert request.content_type == "application/json"
    assert request.headers == {"Content-Type": "application/json"}
    body = json.loads(request.body)
    assert body == {
        "applicant": {
            "email": "ada@example.com",
            "name": {"first": "Ada", "last": "Lovelace"},
            "age": 36,
        },
        "consent": True,
        "income": 85000,
        "price": 12.5,
        "whole": 40,
        "born": "1989-12-10",
        "seen": "2025-06-01T12:30:00+00:00",
        "tags": ["vip", "web"],
        "vendor": "acme",
        "label": "Ada from NY",
    }
    assert isinstance(body["whole"], int)
    # The journey sees the flat targets with what was sent.
    assert request.fields["applicant.name.first"] == "Ada"
    assert request.fields["price"] == 12.5
    assert json.dumps(request.fields)


def test_blank_values_are_left_out() -> None:
    request = build(
        "json",
        {
            "email": "{{lead.email}}",
            "missing": "{{lead.nothing}}",
            "empty": "{{key.empty}}",
            "nested.missing": "{{key.nope}}",
            "spaces": "   ",
        },
    )
    assert json.loads(request.body) == {"email": "ada@example.com"}
    assert request.fields == {"email": "ada@example.com"}


def test_json_keeps_unicode_and_escapes_quotes() -> None:
    lead = {**LEAD, "name": 'Zoë "Z" Ærø'}
    request = build("json", {"name": "{{lead.name}}"}, context=context(lead))
    assert json.loads(request.body) == {"name": 'Zoë "Z" Ærø'}
    assert "Zoë".encode() in request.body


# form


def test_form_encoding() -> None:
    request = build(
        "form",
        {
            "applicant.email": "{{lead.email}}",
            "age": "{{key.age}}",
            "consent": "{{lead.consent}}",
            "price": "{{key.price}}",
            "seen": "{{key.seen}}",
            "note": "a&b=c d+e",
            "tags": "{{lead.tags}}",
            "gone": "{{lead.nothing}}",
        },
    )
    assert request.content_type == "application/x-www-form-urlencoded"
    assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    text = request.body.decode("ascii")
    assert parse_qsl(text) == [
        ("applicant.email", "ada@example.com"),
        ("age", "36"),
        ("consent", "true"),
        ("price", "12.50"),
        ("seen", "2025-06-01T12:30:00+00:00"),
        ("note", "a&b=c d+e"),
        ("tags", "vip"),
        ("tags", "web"),
    ]
    assert "applicant.email=ada%40example.com" in text
    assert "note=a%26b%3Dc+d%2Be" in text
    assert request.fields["consent"] == "true"
    assert request.fields["tags"] == ["vip", "web"]
    assert "gone" not in request.fields


def test_form_false_and_objects() -> None:
    lead = {**LEAD, "customFields": {"consent": False, "extra": {"a": 1}}}
    request = build("form", {"c": "{{lead.consent}}", "x": "{{lead.extra}}"}, context=context(lead))
    assert parse_qs(request.body.decode()) == {"c": ["false"], "x": ['{"a":1}']}


# XML


def test_xml_nested_elements_escaped_under_the_root() -> None:
    lead = {
        **LEAD,
        "name": "Ada <Lovelace> & Co",
        "customFields": {"consent": True, "note": "x\x00y\x07z"},
    }
    request = build(
        "xml",
        {
            "contact.email": "{{lead.email}}",
            "contact.name": "{{lead.name}}",
            "contact.age": "{{key.age}}",
            "consent": "{{lead.consent}}",
            "note": "{{lead.note}}",
            "tags.tag": "{{lead.tags}}",
            "gone": "{{lead.nothing}}",
        },
        context=context(lead),
        xml_root="application",
    )
    assert request.content_type == "application/xml"
    text = request.body.decode()
    assert text.startswith(XML_DECLARATION + "<application>")
    assert "Ada &lt;Lovelace&gt; &amp; Co" in text
    root = ElementTree.fromstring(request.body)
    assert root.tag == "application"
    assert root.findtext("contact/email") == "ada@example.com"
    assert root.findtext("contact/name") == "Ada <Lovelace> & Co"
    assert root.findtext("contact/age") == "36"
    assert root.findtext("consent") == "true"
    assert root.findtext("note") == "xyz"
    assert [tag.text for tag in root.findall("tags/tag")] == ["vip", "web"]
    assert root.find("gone") is None
    assert [child.tag for child in root] == ["contact", "consent", "note", "tags"]


@pytest.mark.parametrize("target", ["1abc", "a b", "a.-b", "x:y", "a..b", "contact.", "<x>"])
def test_xml_bad_element_names_are_named(target: str) -> None:
    with pytest.raises(PayloadError) as raised:
        build("xml", {"ok": "1", target: "{{lead.email}}"})
    assert repr(target) in str(raised.value)


def test_xml_bad_root() -> None:
    with pytest.raises(PayloadError, match="root"):
        build("xml", {"a": "1"}, xml_root="1lead")


def test_unicode_element_names_are_fine() -> None:
    request = build("xml", {"données.courriel": "{{lead.email}}"})
    assert ElementTree.fromstring(request.body).findtext("données/courriel") == "ada@example.com"


# target layout


def test_a_target_that_is_both_value_and_parent_is_refused() -> None:
    for content_type in ("json", "xml"):
        with pytest.raises(PayloadError, match="both a value and the parent"):
            build(content_type, {"applicant": "{{lead.name}}", "applicant.email": "{{email}}"})
        # ...even when the value would be blank for this lead: the mapping is wrong.
        with pytest.raises(PayloadError, match=r"'a\.b'"):
            build(content_type, {"a.b.c": "1", "a.b": "{{lead.nothing}}"})
    # A form field name is just a name.
    request = build("form", {"applicant": "{{lead.name}}", "applicant.email": "{{email}}"})
    assert parse_qsl(request.body.decode()) == [
        ("applicant", "Ada Lovelace"),
        ("applicant.email", "ada@example.com"),
    ]


def test_empty_targets_and_unknown_content_type() -> None:
    with pytest.raises(PayloadError, match="empty"):
        build("json", {".a": "1"})
    with pytest.raises(PayloadError, match="empty"):
        build("form", {" ": "1"})
    with pytest.raises(PayloadError, match="content type"):
        build("yaml", {"a": "1"})
    check_targets({"a.b": "x", "a.c": "y", "d": "z"}, "xml")


# headers


def test_headers_are_templates_and_content_type_can_be_overridden() -> None:
    request = build(
        "xml",
        {"a": "1"},
        headers={
            "X-Api-Key": "secret-123",
            "X-Lead-Email": "{{lead.email}}",
            "X-Age": "{{key.age}}",
            "X-Gone": "{{lead.nothing}}",
            "content-type": "text/xml; charset=utf-8",
        },
        extra_headers={"Idempotency-Key": "sub-1:e1:1", "x-api-key": "engine-wins"},
    )
    assert request.headers == {
        "X-Lead-Email": "ada@example.com",
        "X-Age": "36",
        "content-type": "text/xml; charset=utf-8",
        "Idempotency-Key": "sub-1:e1:1",
        "x-api-key": "engine-wins",
    }
    assert request.content_type == "text/xml; charset=utf-8"


def test_header_rendering_to_a_line_break_is_refused() -> None:
    lead = {**LEAD, "customFields": {"evil": "x\r\nX-Injected: 1"}}
    with pytest.raises(PayloadError, match="X-Note"):
        build("json", {"a": "1"}, headers={"X-Note": "{{lead.evil}}"}, context=context(lead))
    zoe = {**LEAD, "name": "Zoë"}
    with pytest.raises(PayloadError, match=r"X-Name.*non-ASCII"):
        build("json", {"a": "1"}, headers={"X-Name": "{{lead.name}}"}, context=context(zoe))
    with pytest.raises(PayloadError, match="header name"):
        build("json", {"a": "1"}, extra_headers={"Bad Name": "x"})


def test_summary_never_has_headers_and_hides_url_credentials() -> None:
    request = build(
        "json",
        {"email": "{{lead.email}}"},
        url="https://buyer.example/leads?campaign=7&api_key=s3cret&Token=abc",
        headers={"Authorization": "Bearer s3cret"},
    )
    summary = request.summary()
    assert set(summary) == {"method", "url", "contentType", "fields"}
    assert summary["url"] == "https://buyer.example/leads?campaign=7&api_key=***&Token=***"
    assert summary["contentType"] == "application/json"
    assert summary["fields"] == {"email": "ada@example.com"}
    assert "s3cret" not in json.dumps(summary)
    # The request itself goes to the real URL.
    assert request.url.endswith("api_key=s3cret&Token=abc")
    assert redact_url("https://buyer.example/leads?id=1") == "https://buyer.example/leads?id=1"


# endpoints and pings


def test_endpoint_request_uses_the_endpoint() -> None:
    endpoint = Endpoint.model_validate(
        {
            "url": "https://buyer.example/post",
            "method": "PUT",
            "contentType": "xml",
            "xmlRoot": "Lead",
            "headers": {"X-Key": "k"},
            "fields": {"Contact.Email": "{{lead.email}}", "Age": "{{key.age}}"},
        }
    )
    request = endpoint_request(endpoint, context(), extra_headers={"X-Trace": "t1"})
    assert (request.method, request.url) == ("PUT", "https://buyer.example/post")
    assert request.headers == {"Content-Type": "application/xml", "X-Key": "k", "X-Trace": "t1"}
    root = ElementTree.fromstring(request.body)
    assert root.tag == "Lead"
    assert root.findtext("Contact/Email") == "ada@example.com"
    assert request.fields == {"Contact.Email": "ada@example.com", "Age": "36"}


def test_ping_request_sends_only_the_ping_fields() -> None:
    ping = Ping.model_validate(
        {
            "url": "https://buyer.example/ping",
            "contentType": "xml",
            "fields": {"zip": "{{lead.zip}}", "state": "{{lead.state}}"},
        }
    )
    request = ping_request(ping, context())
    root = ElementTree.fromstring(request.body)
    assert root.tag == "ping"
    assert {child.tag: child.text for child in root} == {"zip": "10001", "state": "NY"}
    assert b"ada@example.com" not in request.body
    json_ping = Ping.model_validate(
        {"url": "https://buyer.example/ping", "fields": {"zip": "{{lead.zip}}"}}
    )
    assert json.loads(ping_request(json_ping, context()).body) == {"zip": "10001"}


# required fields


def test_missing_required_in_order_as_written() -> None:
    required = [
        "email",
        "lead.phone",
        "lead.customFields.zip",
        "lead.zip",
        "key.age",
        "key.empty",
        "key.nope",
        "lead.address",
        "{{lead.email}}",
        "{{lead.city}}",
        "{{lead.firstName}} {{lead.lastName}}",
        "{{lead.firstName}} {{lead.middleName}}",
        "lead.tags",
        "answers.q1",
        "lead.answers.q2",
    ]
    assert missing_required(required, context()) == [
        "key.empty",
        "key.nope",
        "lead.address",
        "{{lead.city}}",
        "{{lead.firstName}} {{lead.middleName}}",
        "lead.answers.q2",
    ]


def test_missing_required_sees_blank_values_and_empty_lists() -> None:
    lead = {"email": "  ", "tags": [], "customFields": {"zip": ""}}
    assert missing_required(["email", "tags", "zip", "lead.name"], context(lead)) == [
        "email",
        "tags",
        "zip",
        "lead.name",
    ]
    assert missing_required([], context(lead)) == []
