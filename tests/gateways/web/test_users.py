"""Users' roles and passwords in the log, sessions, and what leaves it (issue 13)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from domain.users import InvalidUser, User, UserSession, check_password, new_user
from domain.workspaces import Role
from gateways.nats.relay import event_payload
from gateways.postgres.codec import EventCodec
from gateways.postgres.log_store import Record
from gateways.web.passwords import Argon2Hasher
from gateways.web.signing import Signer


def stored(user: User) -> list[Record]:
    codec = EventCodec()
    records = []
    for position, event in enumerate(user.collect_events(), start=1):
        new = codec.encode(event)
        records.append(
            Record(position, uuid.uuid4(), new.originator_id, new.originator_version, new.topic,
                   new.event_type, user.workspace_id, new.state, datetime.now(UTC))
        )  # fmt: skip
    return records


def test_a_user_created_before_roles_loads_as_a_manager_without_a_password() -> None:
    user = new_user(uuid.uuid4(), "Ann", "ann@example.com", "operator")
    (record,) = stored(user)
    state = orjson.loads(record.state)
    del state["role"]  # as written before users had a role
    event = EventCodec().decode(
        record.topic, record.originator_id, record.originator_version, orjson.dumps(state)
    )
    loaded = event.mutate(None)  # type: ignore[attr-defined]
    assert loaded.role is Role.MANAGER and loaded.password_hash is None


def test_roles_and_passwords_are_checked() -> None:
    with pytest.raises(InvalidUser, match="partner"):
        new_user(uuid.uuid4(), "Ann", "ann@example.com", "operator", Role.PARTNER)
    with pytest.raises(InvalidUser, match="at least 10"):
        check_password("short")
    assert new_user(uuid.uuid4(), "V", "v@example.com", "op", "viewer").role is Role.VIEWER


async def test_the_password_is_kept_only_as_an_argon2id_hash_and_never_published() -> None:
    hasher = Argon2Hasher()
    user = new_user(uuid.uuid4(), "Ann", "ann@example.com", "operator")
    user.set_password_hash(await hasher.hash("a long enough secret"), "operator")
    created, password_set = stored(user)
    assert b"a long enough secret" not in password_set.state
    assert orjson.loads(password_set.state)["password_hash"].startswith("$argon2id$")
    assert await hasher.verify(user.password_hash or "", "a long enough secret")
    assert not await hasher.verify(user.password_hash or "", "a wrong secret!!")
    published = orjson.loads(event_payload(password_set))
    assert published["eventType"] == "user.password_set"
    assert published["data"]["password_hash"] == "[redacted]"
    assert b"argon2" not in event_payload(password_set)
    assert orjson.loads(event_payload(created))["data"]["role"] == "manager"


def test_a_session_ends_when_signed_out_or_expired() -> None:
    now = datetime.now(UTC)
    session = UserSession(workspace_id=uuid.uuid4(), user_id=uuid.uuid4(), expires_at=now)
    assert not session.live_at(now)
    later = UserSession(
        workspace_id=uuid.uuid4(), user_id=uuid.uuid4(), expires_at=now + timedelta(hours=1)
    )
    assert later.live_at(now)
    assert later.end("signed_out") and not later.live_at(now) and not later.end("again")


def test_signed_values_cannot_be_forged_reused_for_another_purpose_or_kept() -> None:
    signer = Signer(b"k" * 32)
    cookie = signer.sign("session", "abc", 60)
    assert signer.unsign("session", cookie) == "abc"
    assert signer.unsign("choice", cookie) is None
    assert signer.unsign("session", cookie.replace("abc", "abd")) is None
    assert Signer(b"x" * 32).unsign("session", cookie) is None
    assert signer.unsign("session", signer.sign("session", "abc", -5)) is None
