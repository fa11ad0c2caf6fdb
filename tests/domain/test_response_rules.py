"""Reading buyers' answers: JSON paths, XPath, regex; verdicts, duplicates, prices and bids."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest

from domain.campaigns import ResponseRules
from domain.response_rules import (
    MAX_BODY,
    Verdict,
    parse_price,
    read_answer,
    read_bid,
    value_at,
)


def rules(**fields: Any) -> ResponseRules:
    return ResponseRules.model_validate(fields)


# value_at: JSON

DOC = json.dumps(
    {
        "status": "accepted",
        "ok": True,
        "no": False,
        "count": 3,
        "price": 12.50,
        "nothing": None,
        "result": {"code": "A1", "lead": {"id": "L-9"}},
        "errors": [{"message": "first"}, {"message": "second"}],
        "matrix": [[1, 2], [3, 4]],
        "dotted.key": "d",
    }
)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("status", "accepted"),
        ("$.status", "accepted"),
        ("ok", "true"),
        ("no", "false"),
        ("count", "3"),
        ("price", "12.5"),
        ("nothing", None),
        ("result.code", "A1"),
        ("$.result.lead.id", "L-9"),
        ("errors[0].message", "first"),
        ("$.errors[1].message", "second"),
        ("errors[-1].message", "second"),
        ("errors.1.message", "second"),
        ("matrix[1][0]", "3"),
        ("errors[2].message", None),
        ("errors[0].nope", None),
        ("status.deeper", None),
        ("missing", None),
        ("result", '{"code":"A1","lead":{"id":"L-9"}}'),
        ("matrix[0]", "[1,2]"),
        ("$['dotted.key']", "d"),
        ("a..b", None),
        ("errors[x]", None),
    ],
)
def test_json_paths(path: str, expected: str | None) -> None:
    assert value_at(DOC, path, "application/json") == expected


def test_json_top_level_array_and_scalars() -> None:
    assert value_at('[{"bid": 4}, {"bid": 5}]', "$[1].bid", None) == "5"
    assert value_at('[{"bid": 4}]', "[0].bid", None) == "4"
    assert value_at("true", "$", None) == "true"
    assert value_at('"OK"', "$", None) == "OK"
    # Numbers come back as written: no float rounding of money.
    assert value_at('{"p": 12.50, "q": 0.1, "r": 1e2}', "p", None) == "12.50"
    assert value_at('{"p": 12.50, "q": 0.1, "r": 1e2}', "q", None) == "0.1"
    assert parse_price(value_at('{"r": 1e2}', "r", None)) == Decimal("100")


# value_at: XML

XML = """<?xml version="1.0" encoding="UTF-8"?>
<response version="2">
  <status>Accepted</status>
  <lead id="L-9" price="7.25"><reason>  fine  </reason></lead>
  <bids>
    <bid buyer="a">3.10</bid>
    <bid buyer="b">4.20</bid>
  </bids>
</response>"""


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/response/status", "Accepted"),
        ("/response/status/text()", "Accepted"),
        ("//status", "Accepted"),
        ("status", "Accepted"),
        ("response/status", "Accepted"),
        ("/response/@version", "2"),
        ("/response/lead/@id", "L-9"),
        ("//lead/@price", "7.25"),
        ("/response/lead/reason", "fine"),
        ("/response/bids/bid[2]", "4.20"),
        ("//bid[@buyer='b']", "4.20"),
        ("//bid[@buyer='b']/@buyer", "b"),
        ("/response/lead/@missing", None),
        ("/other/status", None),
        ("/response/nope", None),
        ("//nope", None),
        ("/response/bids/bid[", None),
    ],
)
def test_xpaths(path: str, expected: str | None) -> None:
    assert value_at(XML, path, "application/xml") == expected


def test_xml_namespaces_are_ignored_and_bytes_order_mark_allowed() -> None:
    body = '\ufeff  <r:result xmlns:r="urn:x" xmlns="urn:y"><code r:kind="k">OK</code></r:result>'
    assert value_at(body, "/result/code", "text/xml") == "OK"
    assert value_at(body, "/result/code/@kind", "text/xml") == "k"


def test_xml_with_doctype_or_entities_is_refused() -> None:
    bomb = (
        '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
        '<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;">]><r><s>&lol2;</s></r>'
    )
    assert value_at(bomb, "/r/s", "application/xml") is None
    external = (
        '<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
        "<r><s>&x;</s></r>"
    )
    assert value_at(external, "/r/s", None) is None
    assert value_at("<!doctype html><html><body>x</body></html>", "//body", None) is None


def test_garbage_never_raises() -> None:
    for body in ("", "not json", "<unclosed", "<a><b></a>", "{", "\x00\x01", "<<<>>>"):
        for path in ("status", "/a/b", "//b", "regex:(", "$[", "@x"):
            assert value_at(body, path, None) is None


# value_at: regex


def test_regex_paths() -> None:
    body = "RESULT=ACCEPTED;PRICE=$4.50;ID=77"
    assert value_at(body, "regex:RESULT=(\\w+)", None) == "ACCEPTED"
    assert value_at(body, "regex:PRICE=\\$([\\d.]+)", None) == "4.50"
    assert value_at(body, "regex:ID=\\d+", None) == "ID=77"
    assert value_at(body, "regex:MISSING=(\\w+)", None) is None
    assert value_at(body, "regex:(X)?RESULT", None) is None
    # A regex reads a JSON or XML body as plain text.
    assert value_at('{"status": "ok"}', 'regex:"status":\\s*"(\\w+)"', None) == "ok"
    assert value_at(XML, "regex:<status>(\\w+)</status>", None) == "Accepted"


def test_huge_bodies_are_cut() -> None:
    body = "x" * MAX_BODY + "MARK=1"
    assert value_at(body, "regex:MARK=(\\d)", None) is None
    assert value_at("MARK=1" + "x" * MAX_BODY, "regex:MARK=(\\d)", None) == "1"
    huge_json = json.dumps({"status": "ok", "pad": "x" * MAX_BODY})
    assert value_at(huge_json, "status", None) is None


# prices


@pytest.mark.parametrize(
    ("text", "price"),
    [
        ("12.5", Decimal("12.5")),
        ("$1,234.50", Decimal("1234.50")),
        (" $ 1,234.50 ", Decimal("1234.50")),
        ("1,234,567", Decimal("1234567")),
        ("USD 99", Decimal("99")),
        ("99.00 USD", Decimal("99.00")),
        ("€7", Decimal("7")),
        ("7 €", Decimal("7")),
        ("£0.99", Decimal("0.99")),
        ("-$5", Decimal("-5")),
        ("1.5e2", Decimal("150")),
        ("0", Decimal("0")),
        (".5", Decimal("0.5")),
        ("1.234,50", None),
        ("12,34", None),
        ("1,2345", None),
        ("abc", None),
        ("", None),
        ("NaN", None),
        ("Infinity", None),
        ("$", None),
        ("1 2", None),
        ("--5", None),
        (None, None),
    ],
)
def test_parse_price(text: str | None, price: Decimal | None) -> None:
    assert parse_price(text) == price


# read_answer


def test_transport_errors_and_retryable_statuses_are_errors() -> None:
    plain = rules()
    assert read_answer(plain, None, "", error="timed out after 10s") == Verdict(
        "error", "transport error: timed out after 10s", None
    )
    assert read_answer(plain, None, "") == Verdict("error", "no response", None)
    for status in (500, 502, 503, 408, 429):
        verdict = read_answer(plain, status, "{}")
        assert verdict == Verdict("error", f"HTTP {status}", None)
    named = read_answer(rules(reason_path="message"), 503, '{"message": "maintenance"}')
    assert named == Verdict("error", "HTTP 503: maintenance", None)
    assert read_answer(plain, 101, "").outcome == "error"
    assert read_answer(plain, 200, "", error="reset").outcome == "error"


def test_other_4xx_is_rejected_with_the_buyers_reason() -> None:
    with_reason = rules(success_path="status", reason_path="error.message")
    body = '{"status": "rejected", "error": {"message": "Invalid zip code"}}'
    assert read_answer(with_reason, 400, body) == Verdict("rejected", "Invalid zip code", None)
    assert read_answer(with_reason, 422, "<html>oops</html>") == Verdict(
        "rejected", "HTTP 422", None
    )
    assert read_answer(rules(), 403, "") == Verdict("rejected", "HTTP 403", None)


def test_4xx_duplicate() -> None:
    dup = rules(reason_path="message", duplicate_match="duplicate|already exists")
    answer = read_answer(dup, 409, '{"message": "Lead already exists"}')
    assert answer == Verdict("duplicate", "Lead already exists", None)


def test_2xx_without_success_path_is_accepted() -> None:
    assert read_answer(rules(), 200, "") == Verdict("accepted", None, None)
    assert read_answer(rules(), 201, "garbage") == Verdict("accepted", None, None)
    assert read_answer(rules(), 302, "") == Verdict("accepted", None, None)
    priced = rules(price_path="price", reason_path="note")
    assert read_answer(priced, 200, '{"price": "$1,234.50", "note": "thanks"}') == Verdict(
        "accepted", "thanks", Decimal("1234.50")
    )


def test_2xx_without_success_path_but_duplicate_reason() -> None:
    dup = rules(reason_path="message", duplicate_match="duplicate")
    assert read_answer(dup, 200, '{"message": "DUPLICATE lead"}') == Verdict(
        "duplicate", "DUPLICATE lead", None
    )
    assert read_answer(dup, 200, '{"message": "welcome"}').outcome == "accepted"


def test_success_match_is_whole_value_and_case_insensitive() -> None:
    success = rules(success_path="$.result.status", success_match="accepted|sold")
    for value in ("accepted", "ACCEPTED", "Sold", " sold "):
        body = json.dumps({"result": {"status": value}})
        assert read_answer(success, 200, body).outcome == "accepted", value
    for value in ("not accepted", "accepted!", "unsold"):
        body = json.dumps({"result": {"status": value}})
        answer = read_answer(success, 200, body)
        assert answer == Verdict("rejected", f'success value was "{value}"', None), value


def test_default_success_values() -> None:
    truthy = rules(success_path="success")
    for value in (True, "true", 1, "1", "yes", "OK", "Success", "accepted"):
        assert read_answer(truthy, 200, json.dumps({"success": value})).outcome == "accepted"
    for value in (False, "false", 0, "no", "rejected", "pending"):
        assert read_answer(truthy, 200, json.dumps({"success": value})).outcome == "rejected"
    missing = read_answer(truthy, 200, '{"other": 1}')
    assert missing == Verdict("rejected", "no value at success", None)


def test_rejection_reason_from_reason_path_and_price_only_on_acceptance() -> None:
    full = rules(
        success_path="status", success_match="ok", reason_path="reason", price_path="payout"
    )
    rejected = read_answer(full, 200, '{"status": "no", "reason": "Out of area", "payout": 5}')
    assert rejected == Verdict("rejected", "Out of area", None)
    accepted = read_answer(full, 200, '{"status": "ok", "payout": 5.75}')
    assert accepted == Verdict("accepted", None, Decimal("5.75"))
    unpriced = read_answer(full, 200, '{"status": "ok", "payout": "n/a"}')
    assert unpriced == Verdict("accepted", None, None)


def test_duplicate_from_the_success_value_or_the_reason() -> None:
    dup = rules(
        success_path="status",
        success_match="accepted",
        duplicate_match="dup(licate)?",
        reason_path="reason",
    )
    by_value = read_answer(dup, 200, '{"status": "duplicate"}')
    assert by_value == Verdict("duplicate", 'success value was "duplicate"', None)
    by_reason = read_answer(dup, 200, '{"status": "rejected", "reason": "Duplicate lead"}')
    assert by_reason == Verdict("duplicate", "Duplicate lead", None)
    plain = read_answer(dup, 200, '{"status": "rejected", "reason": "Too old"}')
    assert plain == Verdict("rejected", "Too old", None)
    # Acceptance wins when both match.
    both = rules(success_path="status", success_match=".*", duplicate_match="dup")
    assert read_answer(both, 200, '{"status": "dup"}').outcome == "accepted"


def test_xml_answers() -> None:
    xml_rules = rules(
        success_path="/response/status",
        success_match="accepted",
        reason_path="/response/lead/reason",
        price_path="/response/lead/@price",
    )
    assert read_answer(xml_rules, 200, XML, "application/xml") == Verdict(
        "accepted", "fine", Decimal("7.25")
    )
    rejected = XML.replace("Accepted", "Rejected")
    assert read_answer(xml_rules, 200, rejected) == Verdict("rejected", "fine", None)


def test_regex_answers() -> None:
    text_rules = rules(
        success_path="regex:^(\\w+)",
        success_match="SUCCESS",
        price_path="regex:price=([^;]+)",
        reason_path="regex:reason=([^;]+)",
        duplicate_match="DUP",
    )
    assert read_answer(text_rules, 200, "SUCCESS;price=$10.00") == Verdict(
        "accepted", None, Decimal("10.00")
    )
    assert read_answer(text_rules, 200, "FAILURE;reason=bad phone") == Verdict(
        "rejected", "bad phone", None
    )
    assert read_answer(text_rules, 200, "DUP;reason=seen before").outcome == "duplicate"


def test_reason_is_cut_and_collapsed() -> None:
    long = rules(success_path="s", reason_path="r")
    answer = read_answer(long, 200, json.dumps({"s": "no", "r": "x\n  y " + "z" * 1000}))
    assert answer.reason is not None
    assert answer.reason.startswith("x y z")
    assert len(answer.reason) == 500
    value = read_answer(rules(success_path="s"), 200, json.dumps({"s": "q" * 1000}))
    assert value.reason is not None
    assert len(value.reason) == 500


def test_garbage_answers_are_rejections_not_crashes() -> None:
    strict = rules(success_path="status", reason_path="reason", price_path="price")
    for body in ("", "<html>Bad gateway</html>", "{", "null", "[]", "\x00"):
        assert read_answer(strict, 200, body) == Verdict("rejected", "no value at status", None), (
            body
        )


# read_bid


BIDS = rules(success_path="status", success_match="ok|bid", price_path="bid", reason_path="why")


def test_bid_parsing() -> None:
    assert read_bid(BIDS, 200, '{"status": "ok", "bid": "$1,234.50"}') == (
        Decimal("1234.50"),
        None,
    )
    assert read_bid(BIDS, 200, '{"status": "bid", "bid": 3.25, "why": "x"}') == (
        Decimal("3.25"),
        "x",
    )
    no_success_path = rules(price_path="$.offer.amount")
    assert read_bid(no_success_path, 200, '{"offer": {"amount": 7}}') == (Decimal("7"), None)
    xml_bid = rules(price_path="//bid[@buyer='b']")
    assert read_bid(xml_bid, 200, XML) == (Decimal("4.20"), None)


@pytest.mark.parametrize(
    ("status", "body", "error", "why"),
    [
        (None, "", "timed out", "transport error: timed out"),
        (None, "", None, "no response"),
        (500, "{}", None, "HTTP 500"),
        (404, '{"why": "unknown campaign"}', None, "HTTP 404: unknown campaign"),
        (302, '{"status": "ok", "bid": 5}', None, "HTTP 302"),
        (200, '{"status": "no", "why": "not buying"}', None, "not buying"),
        (200, '{"status": "no"}', None, 'success value was "no"'),
        (200, '{"bid": 5}', None, "no value at status"),
        (200, '{"status": "ok"}', None, "no bid at bid"),
        (200, '{"status": "ok", "bid": "lots"}', None, 'the bid "lots" is not a number'),
        (200, '{"status": "ok", "bid": 0}', None, "no bid (price 0)"),
        (200, '{"status": "ok", "bid": "-$2"}', None, "no bid (price -2)"),
        (200, "garbage", None, "no value at status"),
    ],
)
def test_no_bid(status: int | None, body: str, error: str | None, why: str) -> None:
    assert read_bid(BIDS, status, body, None, error) == (None, why)


def test_no_price_path_no_bid() -> None:
    assert read_bid(rules(), 200, '{"bid": 5}') == (None, "no pricePath to read a bid from")
