"""The workspace directory: one row per workspace with its current name and region."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from uuid import UUID

from domain.base import LoggedEvent
from domain.workspaces import Workspace
from projections.base import Projection, ProjectionDb, Tables


class WorkspaceDirectory(Projection):
    name = "workspaces"
    version = 1
    table_names = ("workspaces",)
    event_types = frozenset({"workspace.created", "workspace.renamed"})

    def create_sql(self, tables: Tables) -> str:
        table = tables["workspaces"]
        return f"""
            CREATE TABLE IF NOT EXISTS {table} (
                id               uuid        PRIMARY KEY,
                name             text        NOT NULL,
                default_region   text        NOT NULL,
                created_at       timestamptz NOT NULL,
                updated_position bigint      NOT NULL
            );
            CREATE INDEX IF NOT EXISTS {table}_name ON {table} (lower(name));
        """

    async def apply(self, db: ProjectionDb, tables: Tables, events: Sequence[LoggedEvent]) -> None:
        table = tables["workspaces"]
        # Folded in memory first: one statement per kind of change, whatever the batch size.
        created: dict[UUID, tuple[str, str, datetime, int]] = {}
        renamed: dict[UUID, tuple[str, int]] = {}
        for logged in events:
            event = logged.event
            if isinstance(event, Workspace.Created):
                created[event.originator_id] = (
                    event.name,
                    event.default_region,
                    event.timestamp,
                    logged.position,
                )
            elif isinstance(event, Workspace.Renamed):
                known = created.get(event.originator_id)
                if known is not None:
                    created[event.originator_id] = (event.name, known[1], known[2], logged.position)
                else:
                    renamed[event.originator_id] = (event.name, logged.position)
        # The position guards make a replayed batch a no-op rather than a step back in time.
        if created:
            await db.execute(
                f"""
                INSERT INTO {table} AS t (id, name, default_region, created_at, updated_position)
                SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::timestamptz[],
                                     $5::bigint[])
                ON CONFLICT (id) DO UPDATE
                   SET name = EXCLUDED.name, default_region = EXCLUDED.default_region,
                       created_at = EXCLUDED.created_at,
                       updated_position = EXCLUDED.updated_position
                 WHERE t.updated_position < EXCLUDED.updated_position
                """,
                list(created),
                [row[0] for row in created.values()],
                [row[1] for row in created.values()],
                [row[2] for row in created.values()],
                [row[3] for row in created.values()],
            )
        if renamed:
            await db.execute(
                f"""
                UPDATE {table} AS t SET name = r.name, updated_position = r.position
                  FROM unnest($1::uuid[], $2::text[], $3::bigint[]) AS r(id, name, position)
                 WHERE t.id = r.id AND t.updated_position < r.position
                """,
                list(renamed),
                [row[0] for row in renamed.values()],
                [row[1] for row in renamed.values()],
            )
