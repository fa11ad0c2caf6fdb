"""Which users, in any workspace, have an email: sign-in asks by email alone."""

from __future__ import annotations

import asyncio
from uuid import UUID

from domain.users import User
from handlers.ports import EventStore

USER_EVENTS = ["user.created", "user.updated"]


class SignInDirectory:
    """email → user ids across workspaces (an email is unique per workspace only), kept in
    memory and brought up to date from the log before every lookup (one indexed read of
    the user events past the last one seen; usually empty). Users are people, so this
    stays small. The user aggregates remain the authority: a lookup only names
    candidates, which sign-in loads and checks."""

    def __init__(self, store: EventStore) -> None:
        self.store = store
        self._seen = 0
        self._email_of: dict[UUID, str] = {}
        self._users_of: dict[str, set[UUID]] = {}
        self._lock = asyncio.Lock()

    async def candidates(self, email: str) -> list[UUID]:
        async with self._lock:
            await self._catch_up()
            return sorted(self._users_of.get(email, ()))

    async def _catch_up(self) -> None:
        while True:
            page = await self.store.read(self._seen, 500, USER_EVENTS)
            if not page:
                return
            for logged in page:
                event = logged.event
                if isinstance(event, User.Created | User.Updated):
                    self._index(event.originator_id, event.email)
            self._seen = page[-1].position

    def _index(self, user_id: UUID, email: str) -> None:
        old = self._email_of.get(user_id)
        if old is not None and old != email:
            self._users_of.get(old, set()).discard(user_id)
        self._email_of[user_id] = email
        self._users_of.setdefault(email, set()).add(user_id)
