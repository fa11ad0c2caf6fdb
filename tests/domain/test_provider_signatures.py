"""Twilio's and Meta's callback signatures, against the vectors their own libraries publish."""

from __future__ import annotations

import pytest

from domain.provider_signatures import hub_signature, hub_valid, twilio_signature, twilio_valid

# twilio-python's tests/unit/test_request_validator.py
TOKEN = "12345"
URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
PARAMS = {
    "CallSid": "CA1234567890ABCDE",
    "Digits": "1234",
    "From": "+14158675309",
    "To": "+18005551212",
    "Caller": "+14158675309",
}
EXPECTED = "RSOYDt4T1cUTdK1PDd93/VVr8B8="


def test_twilio_signature_matches_twilios_vector() -> None:
    assert twilio_signature(TOKEN, URL, PARAMS) == EXPECTED
    # the order the parameters come in does not matter: they are sorted by name
    assert twilio_signature(TOKEN, URL, dict(reversed(PARAMS.items()))) == EXPECTED
    assert twilio_valid(TOKEN, URL, PARAMS, EXPECTED)


def test_a_repeated_parameter_signs_each_value_in_order() -> None:
    pairs = [("Sid", "CA123"), ("SidAccount", "AC123"), ("Digits", "5678"), ("Digits", "1234")]
    assert twilio_signature(TOKEN, URL, pairs) == "IK+Dwps556ElfBT0I3Rgjkr1wJU="


@pytest.mark.parametrize(
    ("url", "params", "token"),
    [
        (URL, {**PARAMS, "Digits": "1235"}, TOKEN),  # a tampered value
        (URL, {**PARAMS, "Extra": "x"}, TOKEN),  # an added parameter
        (URL, {k: v for k, v in PARAMS.items() if k != "To"}, TOKEN),  # a removed one
        (URL.replace("foo=1", "foo=2"), PARAMS, TOKEN),  # another URL
        (URL.replace("https", "http"), PARAMS, TOKEN),  # another scheme
        (URL, PARAMS, "12346"),  # another token
        (URL, PARAMS, ""),  # no token
    ],
)
def test_anything_changed_fails_validation(url: str, params: dict[str, str], token: str) -> None:
    assert not twilio_valid(token, url, params, EXPECTED)


@pytest.mark.parametrize("signature", [None, "", "   ", EXPECTED[:-1], EXPECTED.lower(), "é"])
def test_a_missing_or_malformed_signature_fails(signature: str | None) -> None:
    assert not twilio_valid(TOKEN, URL, PARAMS, signature)


def test_validation_accepts_the_url_with_or_without_its_port() -> None:
    # twilio-python's vectors: a proxy may add or drop the port Twilio signed with
    assert twilio_valid(TOKEN, URL.replace(".com", ".com:1234"), PARAMS, EXPECTED)
    assert twilio_valid(TOKEN, URL, PARAMS, "kvajT1Ptam85bY51eRf/AJRuM3w=")  # signed with :443
    http = URL.replace("https", "http")
    assert twilio_valid(TOKEN, http, PARAMS, "0ZXoZLH/DfblKGATFgpif+LLRf4=")  # signed with :80
    assert twilio_valid(
        TOKEN, http.replace(".com", ".com:1234"), PARAMS, "Zmvh+3yNM1Phv2jhDCwEM3q5ebU="
    )
    # but not another port
    assert not twilio_valid(
        TOKEN, URL.replace(".com", ".com:8443"), PARAMS, "kvajT1Ptam85bY51eRf/AJRuM3w="
    )


def test_hub_signature_matches_the_published_vector() -> None:
    # GitHub's documented X-Hub-Signature-256 example; Meta signs the same way
    secret, body = "It's a Secret to Everybody", b"Hello, World!"
    expected = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    assert hub_signature(secret, body) == expected
    assert hub_valid(secret, body, expected)
    assert hub_valid(secret, body, expected.upper().replace("SHA256=", "sha256="))
    assert hub_valid(secret, body, f"  {expected}\n")


@pytest.mark.parametrize(
    ("secret", "body", "header"),
    [
        ("It's a Secret to Everybody", b"Hello, World?", None),  # tampered body
        ("it's a secret to everybody", b"Hello, World!", None),  # another secret
        ("", b"Hello, World!", None),  # no secret
        ("It's a Secret to Everybody", b"Hello, World!", ""),
        ("It's a Secret to Everybody", b"Hello, World!", "sha1=757107ea0eb2509fc211"),
        (
            "It's a Secret to Everybody",
            b"Hello, World!",
            "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",  # no prefix
        ),
        ("It's a Secret to Everybody", b"Hello, World!", "sha256=ü"),
    ],
)
def test_hub_validation_fails_for_anything_else(
    secret: str, body: bytes, header: str | None
) -> None:
    good = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    assert not hub_valid(secret, body, good if header is None else header)


def test_no_header_fails() -> None:
    assert not hub_valid("secret", b"{}", None)
