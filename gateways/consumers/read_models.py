"""Queries over the projections' live tables, for handlers that need a read model."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg
import orjson

from domain.normalize import email_search
from domain.pipelines import Pipeline
from gateways.consumers.projector import Projector
from handlers.ports import EventStore
from projections.timeline import Names


class ViewBehind(RuntimeError):
    """A view did not reach the position a caller needed in time."""


class PendingLeadsTable:
    """`handlers.customers.PendingLeadsQuery` over the `pending_leads` projection."""

    def __init__(self, projector: Projector, timeout: float = 30.0) -> None:
        self.projector = projector
        self.timeout = timeout

    async def of_customer(self, customer_id: UUID, as_of: int) -> Sequence[UUID]:
        if not await self.projector.wait_for("pending_leads", as_of, self.timeout):
            raise ViewBehind(f"pending_leads has not reached position {as_of}")
        table = "pending_leads"  # the view the projector keeps on the live copy
        async with self.projector.pool.acquire() as conn:
            rows = await conn.fetch(
                f"SELECT lead_id FROM {table} WHERE customer_id = $1 ORDER BY lead_id", customer_id
            )
        return [row[0] for row in rows]


SORTABLE = {
    "createdAt": "created_at",
    "updatedAt": "updated_at",
    "name": "lower(name)",
    "requestId": "request_id",
    "status": "status",
    "deletedAt": "deleted_at",
}


class ViewNeedsRebuild(ViewBehind):
    """The live tables predate the projection's code version (`leadlog rebuild <name>`)."""


@dataclass(frozen=True)
class LeadFilter:
    """What lists and boards filter on; every field optional. Several values of one field
    match any of them (OR); different fields must all match (AND)."""

    search: str | None = None
    phone_keys: tuple[str, ...] = ()
    """Digit strings a phone-like `search` also matches in the lead's phone (any of them)."""
    phone_whole: bool = False
    """The search is a whole number: a phone matches when one of its forms is a key (by
    index), not when it merely contains one."""
    pipeline_id: tuple[UUID, ...] = ()
    stage_id: tuple[UUID, ...] = ()
    source: tuple[str, ...] = ()
    assigned_to: tuple[str, ...] = ()
    unassigned: bool = False
    """With `assigned_to`, also leads assigned to nobody; alone, only those."""
    tag: tuple[str, ...] = ()
    """Tag keys (case-folded)."""
    status: tuple[str, ...] = ()
    is_duplicate: bool | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    referred: bool | None = None
    partner_id: tuple[UUID, ...] = ()
    return_status: tuple[str, ...] = ()
    return_open: bool | None = None
    lead_type_id: tuple[UUID, ...] = ()
    converted: bool | None = None
    deleted: bool = False
    """True: the trash (soft-deleted leads only); False: live leads only."""

    def where(self, workspace_id: UUID, args: list[Any]) -> str:
        def arg(value: Any) -> str:
            args.append(value)
            return f"${len(args)}"

        conditions = [
            f"workspace_id = {arg(workspace_id)}",
            "deleted" if self.deleted else "NOT deleted",
        ]
        for column, values, kind in (
            ("pipeline_id", self.pipeline_id, "uuid"),
            ("stage_id", self.stage_id, "uuid"),
            ("source", self.source, "text"),
            ("status", self.status, "text"),
            ("referred_to", self.partner_id, "uuid"),
            ("return_status", self.return_status, "text"),
            ("lead_type_id", self.lead_type_id, "uuid"),
        ):
            # One value is an equality, not `= ANY`: only then can an index on the column
            # also give the rows in the page's order (a board column, newest first).
            if len(values) == 1:
                conditions.append(f"{column} = {arg(values[0])}::{kind}")
            elif values:
                conditions.append(f"{column} = ANY({arg(list(values))}::{kind}[])")
        if self.assigned_to or self.unassigned:
            either = []
            if self.assigned_to:
                either.append(f"assigned_to = ANY({arg(list(self.assigned_to))}::text[])")
            if self.unassigned:
                either.append("assigned_to IS NULL")
            conditions.append(f"({' OR '.join(either)})")
        if self.tag:
            conditions.append(f"tag_keys && {arg(list(self.tag))}::text[]")
        if self.is_duplicate is not None:
            conditions.append(f"is_duplicate = {arg(self.is_duplicate)}")
        if self.created_after is not None:
            conditions.append(f"created_at >= {arg(self.created_after)}")
        if self.created_before is not None:
            conditions.append(f"created_at < {arg(self.created_before)}")
        for column, flag in (("referred_to", self.referred), ("contact_id", self.converted)):
            if flag is not None:
                conditions.append(f"{column} IS {'NOT ' if flag else ''}NULL")
        if self.return_open is not None:
            conditions.append(
                "return_status = 'open'"
                if self.return_open
                else "return_status IS DISTINCT FROM 'open'"
            )
        address = email_search(self.search) if self.search else None
        if address is not None:
            conditions.append(f"lower(email) = {arg(address)}")
        elif self.search:
            # Partial, case-insensitive, over name, email, phone and company; LIKE wildcards
            # typed by the user are matched literally. A phone-like search also matches the
            # phone's digits, however the number was formatted.
            escaped = (
                self.search.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            )
            matches = [f"search LIKE {arg(f'%{escaped}%')}"]
            if self.phone_whole and self.phone_keys:
                keys = arg(list(self.phone_keys))
                matches.append(f"string_to_array(phone_digits, ' ') && {keys}::text[]")
            else:
                matches += [f"phone_digits LIKE {arg(f'%{key}%')}" for key in self.phone_keys]
            conditions.append(f"({' OR '.join(matches)})")
        return " AND ".join(conditions)

    @property
    def counted(self) -> bool:
        """Whether the `lead_counts` the projection keeps answer this filter's total: it
        filters on nothing but pipeline, stage and the trash."""
        return replace(self, pipeline_id=(), stage_id=(), deleted=False) == LeadFilter()

    def count_where(self, workspace_id: UUID, args: list[Any]) -> str:
        """The condition on `lead_counts` rows that sum to the total of a `counted` filter."""
        args.extend((workspace_id, self.deleted))
        conditions = ["workspace_id = $1", "deleted = $2"]
        for column, values in (("pipeline_id", self.pipeline_id), ("stage_id", self.stage_id)):
            if values:
                args.append(list(values))
                conditions.append(f"{column} = ANY(${len(args)}::uuid[])")
        return " AND ".join(conditions)


@dataclass(frozen=True)
class Cursor:
    """Where a keyset-paged list goes on: the last row's sort key and id."""

    sort_by: str
    descending: bool
    key: Any
    lead_id: UUID

    def encode(self) -> str:
        key = self.key.isoformat() if isinstance(self.key, datetime) else self.key
        raw = orjson.dumps([self.sort_by, self.descending, key, str(self.lead_id)])
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> Cursor | None:
        """The cursor a list handed out; None for anything else (a client's own, a cursor
        of another sort)."""
        try:
            raw = base64.urlsafe_b64decode(text.encode("ascii") + b"=" * (-len(text) % 4))
            sort_by, descending, key, lead_id = orjson.loads(raw)
            if sort_by not in SORTABLE or not isinstance(descending, bool):
                return None
            if sort_by in DATED:
                key = datetime.fromisoformat(key)
                if key.tzinfo is None:
                    return None
            elif sort_by == "requestId":
                if not isinstance(key, int) or isinstance(key, bool):
                    return None
            elif not isinstance(key, str):
                return None
            return cls(sort_by, descending, key, UUID(lead_id))
        except (ValueError, TypeError, UnicodeError, orjson.JSONDecodeError):
            return None

    @classmethod
    def of_column(cls, text: str) -> Cursor | None:
        """A board column's cursor (newest first); None for anything else."""
        cursor = cls.decode(text)
        return cursor if cursor is not None and cursor.order == COLUMN_ORDER else None

    @property
    def order(self) -> tuple[str, bool]:
        return self.sort_by, self.descending


DATED = frozenset({"createdAt", "updatedAt", "deletedAt"})
COLUMN_ORDER = ("createdAt", True)
"""How a board column is sorted: newest first."""


LEAD_COLUMNS = (
    "id, request_id, name, email, phone, company, title, tags, source, status, pipeline_id, "
    "stage_id, assigned_to, is_duplicate, duplicate_of, customer_id, campaign_id, custom_fields, "
    "display_names, created_at, updated_at, lead_type_id, referred_to, referred_at, "
    "return_status, contact_id, converted_at, deleted, deleted_at"
)


def _uuid(value: Any) -> str | None:
    return str(value) if value else None


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def lead_row_json(row: asyncpg.Record) -> dict[str, Any]:
    custom = (
        orjson.loads(row["custom_fields"])
        if isinstance(row["custom_fields"], str)
        else row["custom_fields"]
    )
    names = (
        orjson.loads(row["display_names"])
        if isinstance(row["display_names"], str)
        else row["display_names"]
    )
    return {
        "id": str(row["id"]),
        "requestId": row["request_id"],
        "name": row["name"],
        "email": row["email"],
        "phone": row["phone"],
        "company": row["company"],
        "title": row["title"],
        "tags": list(row["tags"]),
        "source": row["source"],
        "status": row["status"],
        "pipelineId": _uuid(row["pipeline_id"]),
        "stageId": _uuid(row["stage_id"]),
        "assignedTo": row["assigned_to"],
        "isDuplicate": row["is_duplicate"],
        "duplicateOf": _uuid(row["duplicate_of"]),
        "customerId": _uuid(row["customer_id"]),
        "campaignId": _uuid(row["campaign_id"]),
        "leadTypeId": _uuid(row["lead_type_id"]),
        "referredTo": _uuid(row["referred_to"]),
        "referredAt": _iso(row["referred_at"]),
        "returnStatus": row["return_status"],
        "contactId": _uuid(row["contact_id"]),
        "convertedAt": _iso(row["converted_at"]),
        "deleted": row["deleted"],
        "deletedAt": _iso(row["deleted_at"]),
        "customFields": {**custom, "_displayNames": names},
        "createdAt": row["created_at"].isoformat(),
        "updatedAt": row["updated_at"].isoformat(),
    }


@dataclass(frozen=True)
class _Page:
    """Which rows of a filtered list a page holds: sorted by `key` (then id, the same way),
    after the row `after` (keyset) or `offset` rows in."""

    key: str
    descending: bool
    limit: int
    offset: int
    after: tuple[Any, UUID] | None

    def keyset(self, key: str, args: list[Any]) -> str:
        if self.after is None:
            return ""
        args.extend(self.after)
        compare = "<" if self.descending else ">"
        return f" AND ({key}, id) {compare} (${len(args) - 1}, ${len(args)})"

    def tail(self, args: list[Any]) -> str:
        # The id breaks ties in the sort's own direction, so one index scan (forwards or
        # backwards) gives the order and the keyset's row comparison matches it.
        direction = "DESC" if self.descending else "ASC"
        args.extend((self.limit + 1, 0 if self.after is not None else self.offset))
        return (
            f"ORDER BY sort_key {direction}, id {direction} "
            f"LIMIT ${len(args) - 1} OFFSET ${len(args)}"
        )


class LeadViews:
    """Queries over the `leads` projection's live table."""

    def __init__(self, projector: Projector) -> None:
        self.projector = projector

    @property
    def table(self) -> str:
        # The view the projector points at the live copy: a rebuild swapped in by another
        # process is read from at once. Postgres inlines the view, so indexes still apply.
        return "leads"

    async def wait_for(self, position: int, timeout: float) -> bool:
        return await self.projector.wait_for("leads", position, timeout)

    @asynccontextmanager
    async def _reading(
        self, where: LeadFilter | None = None
    ) -> AsyncIterator[asyncpg.pool.PoolConnectionProxy]:
        """A connection to query the view; tables built by an older version of the
        projection (an upgrade not yet followed by `leadlog rebuild leads`) lack columns:
        that is `ViewNeedsRebuild`, not an error of the query.

        A search is planned for its text: the generic plan PostgreSQL may switch a prepared
        statement to cannot know that `LIKE '%ann.lee@%'` is rare, and walks the whole
        workspace rather than the trigram index."""
        async with self.projector.pool.acquire() as conn:
            try:
                if where is not None and where.search:
                    async with conn.transaction():
                        await conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")
                        yield conn
                else:
                    yield conn
            except (asyncpg.UndefinedColumnError, asyncpg.UndefinedTableError) as error:
                raise ViewNeedsRebuild(
                    f"the leads view predates this version ({error}); run `leadlog rebuild leads`"
                ) from None

    async def contacts(
        self, workspace_id: UUID, *, page: int, limit: int
    ) -> tuple[list[UUID], int]:
        """A page of the workspace's contacts (the ones its leads were converted into),
        the most recently converted into first."""
        async with self._reading() as conn:
            total = await conn.fetchval(
                f"""SELECT count(DISTINCT contact_id) FROM {self.table}
                     WHERE workspace_id = $1 AND contact_id IS NOT NULL""",
                workspace_id,
            )
            rows = await conn.fetch(
                f"""SELECT contact_id, max(converted_at) AS last_converted FROM {self.table}
                     WHERE workspace_id = $1 AND contact_id IS NOT NULL
                     GROUP BY contact_id ORDER BY last_converted DESC, contact_id
                     LIMIT $2 OFFSET $3""",
                workspace_id,
                limit,
                (page - 1) * limit,
            )
        return [row["contact_id"] for row in rows], int(total)

    async def total(self, conn: Any, workspace_id: UUID, where: LeadFilter) -> int:
        """How many leads match: summed from `lead_counts` when the filter is one they are
        kept by (a handful of rows, however large the workspace), else counted."""
        args: list[Any] = []
        if where.counted:
            condition = where.count_where(workspace_id, args)
            total = await conn.fetchval(
                f"SELECT coalesce(sum(leads), 0) FROM lead_counts WHERE {condition}", *args
            )
        else:
            condition = where.where(workspace_id, args)
            total = await conn.fetchval(
                f"SELECT count(*) FROM {self.table} WHERE {condition}", *args
            )
        return int(total)

    async def _cut(
        self, workspace_id: UUID, where: LeadFilter, page: _Page
    ) -> tuple[int, list[asyncpg.Record]]:
        """The total of `where` and the page's rows (one more than asked, to tell whether
        another page follows).

        A search reads its matches once, by the trigram indexes, and both counts them and
        sorts them for the page: its cost follows the number of matches. Left to itself the
        planner may instead walk the workspace in page order, filtering, on an estimate of
        how many leads match (it cannot know that a phone number is one lead's: 54 ms for one
        lead among 100,000 that way, 0.5 ms by the index)."""
        args: list[Any] = []
        condition = where.where(workspace_id, args)
        columns = f"{LEAD_COLUMNS}, {page.key} AS sort_key"
        async with self._reading(where) as conn:
            if not where.search:
                total = await self.total(conn, workspace_id, where)
                keyset = page.keyset(page.key, args)
                tail = page.tail(args)
                rows = await conn.fetch(
                    f"SELECT {columns} FROM {self.table} WHERE {condition}{keyset} {tail}",
                    *args,
                )
                return total, rows
            keyset = page.keyset("sort_key", args)
            tail = page.tail(args)
            rows = await conn.fetch(
                f"""WITH matching AS MATERIALIZED (
                        SELECT {columns} FROM {self.table} WHERE {condition})
                    SELECT counted.total, cut.* FROM (SELECT count(*) AS total FROM matching)
                        AS counted
                    LEFT JOIN LATERAL (SELECT * FROM matching WHERE true{keyset} {tail}) AS cut
                        ON true""",
                *args,
            )
            return int(rows[0]["total"]), [row for row in rows if row["id"] is not None]

    async def page(
        self,
        workspace_id: UUID,
        where: LeadFilter,
        *,
        page: int,
        limit: int,
        sort_by: str,
        descending: bool,
        cursor: Cursor | None = None,
    ) -> tuple[list[dict[str, Any]], int, Cursor | None]:
        """A page of leads and their total; with `cursor`, the page after it (keyset: as
        fast on the thousandth page as on the first), and the cursor of the next page."""
        after = (cursor.key, cursor.lead_id) if cursor is not None else None
        total, rows = await self._cut(
            workspace_id,
            where,
            _Page(SORTABLE[sort_by], descending, limit, (page - 1) * limit, after),
        )
        more = len(rows) > limit
        rows = rows[:limit]
        last = rows[-1] if more else None
        # A null key (live leads by `deletedAt`) has no place in a keyset: no cursor then.
        following = (
            Cursor(sort_by, descending, last["sort_key"], last["id"])
            if last is not None and last["sort_key"] is not None
            else None
        )
        return [lead_row_json(r) for r in rows], total, following

    async def column(
        self,
        workspace_id: UUID,
        where: LeadFilter,
        *,
        limit: int,
        cursor: Cursor | None,
    ) -> tuple[list[dict[str, Any]], int, Cursor | None]:
        """One board column: its count and a page of cards, newest first, keyset-paged
        (`cursor`: one `Cursor.of_column` accepted)."""
        after = (cursor.key, cursor.lead_id) if cursor is not None else None
        count, rows = await self._cut(
            workspace_id, where, _Page("created_at", True, limit, 0, after)
        )
        more = len(rows) > limit
        rows = rows[:limit]
        following = Cursor(*COLUMN_ORDER, rows[-1]["created_at"], rows[-1]["id"]) if more else None
        return [lead_row_json(r) for r in rows], count, following

    async def stage_counts(self, workspace_id: UUID, where: LeadFilter) -> dict[UUID, int]:
        """Every stage's count under `where`, in one query (from `lead_counts` when they
        answer it)."""
        args: list[Any] = []
        async with self._reading(where) as conn:
            if where.counted:
                condition = where.count_where(workspace_id, args)
                rows = await conn.fetch(
                    f"SELECT stage_id, sum(leads) FROM lead_counts WHERE {condition} "
                    "GROUP BY stage_id",
                    *args,
                )
            else:
                condition = where.where(workspace_id, args)
                rows = await conn.fetch(
                    f"SELECT stage_id, count(*) FROM {self.table} WHERE {condition} "
                    "GROUP BY stage_id",
                    *args,
                )
        return {row[0]: int(row[1]) for row in rows if row[0] is not None}


class LeadsInStagesView:
    """`handlers.pipelines.LeadsInStages` over the `leads` view, caught up to the log head."""

    def __init__(self, views: LeadViews, timeout: float = 30.0) -> None:
        self.views = views
        self.timeout = timeout

    async def in_stages(self, workspace_id: UUID, stage_ids: Sequence[UUID]) -> Sequence[UUID]:
        if not stage_ids:
            return []
        head = await self.views.projector.log.max_position()
        if not await self.views.wait_for(head, self.timeout):
            raise ViewBehind(f"leads has not reached position {head}")
        async with self.views.projector.pool.acquire() as conn:
            rows = await conn.fetch(
                f"SELECT id FROM {self.views.table} WHERE workspace_id = $1 "
                "AND stage_id = ANY($2::uuid[]) AND NOT deleted",
                workspace_id,
                list(stage_ids),
            )
        return [row[0] for row in rows]


async def pipeline_names(store: EventStore, pipeline_ids: set[UUID], workspace_id: UUID) -> Names:
    """Current pipeline and stage names, and the last name of each stage since removed,
    folded from each pipeline's history (one read per pipeline), for the timeline's
    placeholders; a pipeline of another workspace names nothing."""
    names = Names()
    for pipeline_id in sorted(pipeline_ids):
        stages: dict[UUID, str] = {}
        name: str | None = None
        for logged in await store.history(pipeline_id):
            event = logged.event
            if isinstance(event, Pipeline.Created) and event.workspace_id == workspace_id:
                name = event.name
                stages.update((s.id, s.name) for s in event.stages)
            elif name is None:
                break  # not a pipeline of this workspace
            elif isinstance(event, Pipeline.Renamed):
                name = event.name
            elif isinstance(event, Pipeline.StagesChanged):
                stages.update((s.id, s.name) for s in event.stages)
        if name is not None:
            names.pipelines[pipeline_id] = name
            names.stages.update(stages)
    return names
