"""The outbound-target guard judges IPv6 addresses that embed an IPv4 one by that address."""

from __future__ import annotations

import ipaddress

import pytest

from domain.lead_types import check_webhook_url, internal_address, private_target
from gateways.outbound.webhook_sender import blocked_address


@pytest.mark.parametrize(
    ("address", "blocked"),
    [
        # IPv4-compatible (deprecated): Python calls ::7f00:1 global
        ("::127.0.0.1", True),
        ("::7f00:1", True),
        ("::10.0.0.1", True),
        ("::169.254.169.254", True),
        ("::8.8.8.8", False),
        # IPv4-mapped and SIIT IPv4-translated
        ("::ffff:127.0.0.1", True),
        ("::ffff:8.8.8.8", False),
        ("::ffff:0:127.0.0.1", True),
        ("::ffff:0:192.168.0.1", True),
        ("::ffff:0:8.8.8.8", False),
        # NAT64 well-known prefix
        ("64:ff9b::127.0.0.1", True),
        ("64:ff9b::10.1.2.3", True),
        ("64:ff9b::a9fe:a9fe", True),  # 169.254.169.254
        ("64:ff9b::8.8.8.8", False),
        # NAT64 local-use prefix: where the IPv4 sits is the operator's choice
        ("64:ff9b:1::7f00:1", True),
        ("64:ff9b:1:808:8:800::", True),
        # 6to4
        ("2002:7f00:1::1", True),
        ("2002:a00:1::", True),
        ("2002:c0a8:101::1", True),  # 192.168.1.1
        ("2002:808:808::1", False),
        # Teredo: always refused (the client address is obfuscated, the path a relay's)
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", True),
        ("2001:0:808:808:0:f7f7:f7f7:f7f7", True),
        # unchanged
        ("::1", True),
        ("::", True),
        ("2606:4700:4700::1111", False),
    ],
)
def test_embedded_ipv4_decides(address: str, blocked: bool) -> None:
    assert blocked_address(address) is blocked
    assert internal_address(ipaddress.ip_address(address)) is blocked
    assert private_target(f"http://[{address}]:8080/x") is blocked


def test_a_literal_internal_target_is_refused_when_configured() -> None:
    assert private_target("http://[::127.0.0.1]:9/")
    assert private_target("http://[fe80::1%25eth0]/")
    assert private_target("http://[::1/")  # not even a URL
    assert not private_target("https://hooks.example.com/x")


@pytest.mark.parametrize(
    "url",
    [
        "http://user:pass@example.com/hook",
        "https://user@example.com/",
        "https://:secret@example.com/",
        "http://a%40b:c@example.com/",
    ],
)
def test_credentials_in_a_url_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match="webhookUrl must not contain credentials"):
        check_webhook_url(url, "webhookUrl")


def test_a_plain_url_passes() -> None:
    assert (
        check_webhook_url(" https://example.com/h?a=b@c ", "url") == "https://example.com/h?a=b@c"
    )
    for bad in ("ftp://example.com/", "example.com/x", "http:///x", "http://[::1/"):
        with pytest.raises(ValueError, match="url"):
            check_webhook_url(bad, "url")
