"""The board's data: the columns of a pipeline with their counts and first cards, filtered,
read from the leads view (the same read model as `GET /v1/lead-pipelines/{id}/board`)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace
from typing import Any
from uuid import UUID

from domain.leads import Status, tag_key
from domain.normalize import PhoneSearch, phone_search
from domain.pipelines import Pipeline
from domain.users import User
from domain.workspaces import Permission, Workspace
from gateways.bootstrap import Engine
from gateways.consumers.consumer_state import live_consumer
from gateways.consumers.read_models import LEAD_COLUMNS, Cursor, LeadFilter, lead_row_json
from gateways.web.pages import environment
from handlers import pipelines as pipeline_commands
from handlers import users as user_commands

PAGE = 20
UNASSIGNED = "none"
STATUSES = [s.value for s in Status]


@dataclass(frozen=True)
class BoardQuery:
    """The board's filters as the GET form sends them (empty fields mean "any")."""

    pipeline: str = ""
    search: str = ""
    source: str = ""
    tag: str = ""
    assignee: str = ""
    status: str = ""

    @classmethod
    def of(cls, params: Any) -> BoardQuery:
        def one(name: str, limit: int = 200) -> str:
            value = params.get(name) or ""
            return "".join(c for c in str(value) if c.isprintable()).strip()[:limit]

        return cls(
            pipeline=one("pipeline", 36),
            search=one("q"),
            source=one("source"),
            tag=one("tag"),
            assignee=one("assignee", 36),
            status=one("status", 50),
        )

    def params(self, **extra: str) -> dict[str, str]:
        """The query string that repeats these filters (for "load more" and links)."""
        values = {
            "pipeline": self.pipeline,
            "q": self.search,
            "source": self.source,
            "tag": self.tag,
            "assignee": self.assignee,
            "status": self.status,
            **extra,
        }
        return {k: v for k, v in values.items() if v}

    @property
    def filtered(self) -> bool:
        return any((self.search, self.source, self.tag, self.assignee, self.status))


@dataclass
class Column:
    stage_id: UUID
    name: str
    color: str
    type: str
    count: int
    cards: list[dict[str, Any]]
    next_cursor: str | None


@dataclass
class Board:
    pipeline: Pipeline
    pipelines: list[Pipeline]
    columns: list[Column]
    users: dict[str, str] = field(default_factory=dict)
    """user id → name, for the assignee of each card and the filter."""
    position: int = 0
    """A log position the columns reflect: the live updates start after it."""


async def choose_pipeline(
    engine: Engine, workspace_id: UUID, wanted: str
) -> tuple[Pipeline, list[Pipeline]]:
    """The pipeline asked for, else the workspace's active one, else its first."""
    pipelines = await pipeline_commands.list_pipelines(engine.store, workspace_id)
    by_id = {str(p.id): p for p in pipelines}
    if wanted in by_id:
        return by_id[wanted], pipelines
    workspace = await engine.store.load(Workspace, workspace_id)
    active = str(workspace.active_pipeline_id) if workspace is not None else ""
    if active in by_id:
        return by_id[active], pipelines
    if not pipelines:
        raise LookupError("this workspace has no pipeline")
    return pipelines[0], pipelines


async def lead_filter(
    engine: Engine, workspace_id: UUID, pipeline: Pipeline, query: BoardQuery
) -> LeadFilter:
    phone = PhoneSearch()
    if query.search:
        phone = phone_search(query.search, await engine.intake.region_of(workspace_id))
    return LeadFilter(
        search=query.search or None,
        phone_keys=phone.keys,
        phone_whole=phone.whole,
        pipeline_id=(pipeline.id,),
        source=(query.source.casefold(),) if query.source else (),
        tag=(tag_key(query.tag),) if query.tag else (),
        assigned_to=(query.assignee,) if query.assignee and query.assignee != UNASSIGNED else (),
        unassigned=query.assignee == UNASSIGNED,
        status=(query.status,) if query.status else (),
    )


async def user_names(engine: Engine, workspace_id: UUID) -> dict[str, str]:
    users: list[User] = await user_commands.list_users(engine.store, workspace_id)
    return {str(u.id): u.name for u in users}


async def load_board(engine: Engine, workspace_id: UUID, query: BoardQuery) -> Board:
    position = await view_position(engine)
    pipeline, pipelines = await choose_pipeline(engine, workspace_id, query.pipeline)
    base = await lead_filter(engine, workspace_id, pipeline, query)
    # The columns are independent reads: on a large pipeline their counts dominate the
    # page, so they run side by side on the pool's connections.
    pages, names = await asyncio.gather(
        asyncio.gather(
            *(
                engine.lead_views.column(
                    workspace_id, replace(base, stage_id=(stage.id,)), limit=PAGE, cursor=None
                )
                for stage in pipeline.stages
            )
        ),
        user_names(engine, workspace_id),
    )
    columns = [
        Column(
            stage.id,
            stage.name,
            stage.color,
            stage.type,
            count,
            cards,
            cursor.encode() if cursor else None,
        )
        for stage, (cards, count, cursor) in zip(pipeline.stages, pages, strict=True)
    ]
    return Board(pipeline, pipelines, columns, names, position)


async def more_cards(
    engine: Engine, workspace_id: UUID, query: BoardQuery, stage_id: UUID, cursor: str
) -> tuple[Column, dict[str, str]] | None:
    """The next page of one column; None when the stage is not in the pipeline or the
    cursor is not one this app gave out."""
    pipeline, _ = await choose_pipeline(engine, workspace_id, query.pipeline)
    stage = next((s for s in pipeline.stages if s.id == stage_id), None)
    after = Cursor.of_column(cursor)
    if stage is None or after is None:
        return None
    base = await lead_filter(engine, workspace_id, pipeline, query)
    cards, count, next_cursor = await engine.lead_views.column(
        workspace_id, replace(base, stage_id=(stage.id,)), limit=PAGE, cursor=after
    )
    column = Column(
        stage.id,
        stage.name,
        stage.color,
        stage.type,
        count,
        cards,
        next_cursor.encode() if next_cursor else None,
    )
    return column, await user_names(engine, workspace_id)


# ---- live updates and moves ------------------------------------------------------------------


def can_move_cards(signed: Any) -> bool:
    """Whether the signed-in person may move cards (a viewer may not)."""
    principal: Any = getattr(signed, "principal", None)
    return bool(principal is not None and principal.can(Permission.LEADS_MANAGE))


environment.globals["can_move_cards"] = can_move_cards


async def view_position(engine: Engine) -> int:
    """A log position the leads view has certainly applied (its committed checkpoint): the
    live stream of a page rendered from the view resumes after it, so no change is lost
    (one the page already shows may come again, which the page handles)."""
    recorded = await engine.log.max_tracking_id(live_consumer("leads"))
    return int(recorded or 0)


async def column_counts(
    engine: Engine, workspace_id: UUID, pipeline: Pipeline, query: BoardQuery
) -> dict[str, int]:
    """Every column's count under the board's filters, in one query."""
    base = await lead_filter(engine, workspace_id, pipeline, query)
    counted = await engine.lead_views.stage_counts(workspace_id, base)
    return {str(stage.id): counted.get(stage.id, 0) for stage in pipeline.stages}


async def cards_by_id(
    engine: Engine, workspace_id: UUID, pipeline: Pipeline, query: BoardQuery, ids: list[UUID]
) -> dict[UUID, dict[str, Any]]:
    """The cards of `ids` that belong on this board (its pipeline and filters), by id."""
    if not ids:
        return {}
    base = await lead_filter(engine, workspace_id, pipeline, query)
    args: list[Any] = []
    condition = base.where(workspace_id, args)
    args.append(ids)
    async with engine.pool.acquire() as conn:
        rows = await conn.fetch(
            f"SELECT {LEAD_COLUMNS} FROM {engine.lead_views.table} "
            f"WHERE {condition} AND id = ANY(${len(args)}::uuid[])",
            *args,
        )
    return {row["id"]: lead_row_json(row) for row in rows}
