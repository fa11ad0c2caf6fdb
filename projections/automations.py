"""Automations: one row per lead automation with its current configuration, for the list."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import astuple, dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from domain.automations import Automation, AutomationConfig
from domain.base import LoggedEvent
from projections.base import Projection, ProjectionDb, Tables
from projections.timeline import event_types_of

COLUMNS = (
    "id",
    "workspace_id",
    "name",
    "active",
    "deleted",
    "config",
    "created_at",
    "updated_at",
    "updated_position",
)


@dataclass
class _Row:
    id: UUID
    workspace_id: UUID
    name: str
    active: bool
    deleted: bool
    config: str  # JSON text, cast to jsonb on write
    created_at: datetime
    updated_at: datetime
    updated_position: int

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> _Row:
        values = {name: row[name] for name in COLUMNS}
        config = values["config"]
        values["config"] = config if isinstance(config, str) else json.dumps(config)
        return cls(**values)

    def configure(self, config: AutomationConfig) -> None:
        self.name = config.name
        self.active = config.active
        self.config = json.dumps(config.model_dump(mode="json", by_alias=True))


class AutomationsView(Projection):
    """`config` is the automation's configuration as the API shows it (camelCase); a deleted
    automation keeps its row with `deleted` set (its runs' timeline still names it)."""

    name = "automations"
    version = 1
    table_names = ("automations",)
    event_types = event_types_of(Automation)

    def create_sql(self, tables: Tables) -> str:
        t = tables["automations"]
        return f"""
            CREATE TABLE IF NOT EXISTS {t} (
                id               uuid        PRIMARY KEY,
                workspace_id     uuid        NOT NULL,
                name             text        NOT NULL,
                active           boolean     NOT NULL,
                deleted          boolean     NOT NULL DEFAULT false,
                config           jsonb       NOT NULL,
                created_at       timestamptz NOT NULL,
                updated_at       timestamptz NOT NULL,
                updated_position bigint      NOT NULL
            );
            CREATE INDEX IF NOT EXISTS {t}_name ON {t} (workspace_id, name);
        """

    async def apply(self, db: ProjectionDb, tables: Tables, events: Sequence[LoggedEvent]) -> None:
        t = tables["automations"]
        # Folded in memory from the stored rows, then one upsert for the batch.
        later = {
            e.event.originator_id for e in events if not isinstance(e.event, Automation.Created)
        }
        rows: dict[UUID, _Row] = {}
        if later:
            for stored in await db.fetch(
                f"SELECT {', '.join(COLUMNS)} FROM {t} WHERE id = ANY($1::uuid[])", list(later)
            ):
                rows[stored["id"]] = _Row.of(stored)
        changed: set[UUID] = set()
        for logged in events:
            event = logged.event
            automation_id = event.originator_id
            row = rows.get(automation_id)
            if row is not None and row.updated_position >= logged.position:
                continue  # applied before
            if isinstance(event, Automation.Created):
                row = rows[automation_id] = _Row(
                    id=automation_id,
                    workspace_id=event.workspace_id,
                    name="",
                    active=False,
                    deleted=False,
                    config="{}",
                    created_at=event.timestamp,
                    updated_at=event.timestamp,
                    updated_position=logged.position,
                )
                row.configure(event.config)
            elif row is None:
                raise ValueError(f"{logged.event_type} of automation {automation_id} before it")
            elif isinstance(event, Automation.Updated):
                row.configure(event.config)
            elif isinstance(event, Automation.Deleted):
                row.deleted = True
            else:
                continue
            row.updated_at = event.timestamp
            row.updated_position = logged.position
            changed.add(automation_id)
        if not changed:
            return
        values = [astuple(rows[i]) for i in sorted(changed)]
        updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in COLUMNS if c != "id")
        await db.execute(
            f"""
            INSERT INTO {t} AS a ({", ".join(COLUMNS)})
            SELECT i, w, n, ac, d, cf::jsonb, ct, ut, p
              FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::boolean[], $5::boolean[],
                          $6::text[], $7::timestamptz[], $8::timestamptz[], $9::bigint[])
                   AS r(i, w, n, ac, d, cf, ct, ut, p)
            ON CONFLICT (id) DO UPDATE SET {updates}
             WHERE a.updated_position < EXCLUDED.updated_position
            """,
            *(list(column) for column in zip(*values, strict=True)),
        )
