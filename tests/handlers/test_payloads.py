"""The body rules every intake channel shares, without servers: forms and JSON objects."""

from __future__ import annotations

import pytest

from handlers.payloads import MAX_FIELDS, BodyRefused, parse_form, parse_json_object


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"name=%ff%fe", "name"),
        (b"email=a%40b.test&name=An%ffn", "name"),
        (b"name=Ann&company=%C3", "company"),  # a multi-byte sequence cut short
        (b"name=%ED%A0%80", "name"),  # a UTF-16 surrogate encoded as UTF-8
        (b"na%ffme=Ann", "na\ufffdme"),  # the key itself
    ],
)
def test_percent_encoded_invalid_utf8_is_refused_naming_the_field(body: bytes, field: str) -> None:
    with pytest.raises(BodyRefused) as refused:
        parse_form(body)
    assert (refused.value.status, refused.value.code) == (400, "invalid_utf8")
    assert refused.value.details == {"field": field}
    assert repr(field) in refused.value.message


def test_raw_invalid_utf8_in_a_form_is_refused() -> None:
    with pytest.raises(BodyRefused) as refused:
        parse_form(b"name=caf\xe9")
    assert (refused.value.status, refused.value.code) == (400, "invalid_utf8")


def test_valid_forms_decode() -> None:
    assert parse_form(b"name=Caf%C3%A9+Ann&tag=a&tag=b&empty=") == {
        "name": "Café Ann",
        "tag": ["a", "b"],
        "empty": "",
    }
    assert parse_form("name=Zoë".encode()) == {"name": "Zoë"}
    assert parse_form(b"") == {}


def test_too_many_form_fields_are_refused() -> None:
    body = "&".join(f"f{i}={i}" for i in range(MAX_FIELDS + 1)).encode()
    with pytest.raises(BodyRefused) as refused:
        parse_form(body)
    assert (refused.value.status, refused.value.code) == (422, "too_many_fields")


def test_json_invalid_utf8_is_refused() -> None:
    with pytest.raises(BodyRefused) as refused:
        parse_json_object(b'{"name": "\xff\xfe"}')
    assert (refused.value.status, refused.value.code) == (400, "invalid_utf8")
