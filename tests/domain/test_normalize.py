"""Normalising contact points: the email fast path must agree with email-validator."""

from __future__ import annotations

import random
import string

from email_validator import EmailNotValidError, validate_email

from domain.normalize import email_search, normalise_email, normalise_phone, plainly_valid


def library_says_valid(email: str) -> bool:
    try:
        validate_email(email, check_deliverability=False)
    except EmailNotValidError:
        return False
    return True


def test_fast_path_never_disagrees_with_email_validator() -> None:
    rng = random.Random(7)
    local_chars = string.ascii_lowercase + string.digits + ".-_+!#$%&'*/=?^`{|}~"
    label_chars = string.ascii_lowercase + string.digits + "-"
    corpus = [
        "a@ab--cd.com",
        "a@xn--abc.com",
        "a@test.test",
        "a@x.localhost",
        "a@x.arpa",
        "john.smith+tag@example.com",
        "a@a.aa",
        "a..b@x.com",
        ".a@x.com",
        "a@-x.com",
    ]
    for _ in range(30_000):
        local = "".join(rng.choice(local_chars) for _ in range(rng.randint(1, 12)))
        labels = [
            "".join(rng.choice(label_chars) for _ in range(rng.randint(1, 8)))
            for _ in range(rng.randint(1, 3))
        ]
        tld = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(1, 6)))
        corpus.append(f"{local}@{'.'.join(labels)}.{tld}")
    accepted = [email for email in corpus if plainly_valid(email)]
    assert len(accepted) > 10_000  # the fast path does real work
    assert [e for e in accepted if not library_says_valid(e)] == []


def test_plain_addresses_on_special_use_domains_are_refused_as_the_library_does() -> None:
    rng = random.Random(11)
    domains = ["test", "bench.test", "x.localhost", "a.b.local", "invalid", "y.onion", "z.arpa"]
    corpus = [
        f"{''.join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(1, 10)))}"
        f"{rng.randint(0, 99_999)}@{rng.choice(domains)}"
        for _ in range(3_000)
    ]
    answered = {email: normalise_email(email).valid for email in corpus}
    assert not any(answered.values())
    assert [e for e in corpus if library_says_valid(e)] == []


def test_email_is_trimmed_lowered_and_flagged() -> None:
    assert normalise_email(" Ann@Example.COM ").normal == "ann@example.com"
    assert normalise_email("ann@example.com").valid is True
    assert normalise_email("ann@example.test").valid is False  # special-use domain
    assert normalise_email("not an email").valid is False
    assert normalise_email("   ").present is False


def test_phone_is_e164_in_the_workspace_region() -> None:
    assert normalise_phone("(415) 555-2671", "US").normal == "+14155552671"
    assert normalise_phone("020 7946 0958", "GB").normal == "+442079460958"
    unreadable = normalise_phone("12", "US")
    assert (unreadable.normal, unreadable.valid) == (None, False)


def test_a_search_for_a_whole_address_is_an_exact_lookup() -> None:
    assert email_search("  Ann.Lee+x@Example.CO.uk ") == "ann.lee+x@example.co.uk"
    for part in ("ann@", "@example.com", "ann@example", "ann lee@example.com", "a@b@c.com", ""):
        assert email_search(part) is None, part
