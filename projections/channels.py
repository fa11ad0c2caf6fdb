"""Channels: one row per messaging channel (never its credentials), to find a workspace's."""

from __future__ import annotations

from collections.abc import Sequence

from domain.base import LoggedEvent
from domain.channels import Channel
from projections.base import Projection, ProjectionDb, Tables
from projections.timeline import event_types_of


class ChannelsView(Projection):
    name = "channels"
    version = 1
    table_names = ("channels",)
    event_types = event_types_of(Channel)

    def create_sql(self, tables: Tables) -> str:
        t = tables["channels"]
        return f"""
            CREATE TABLE IF NOT EXISTS {t} (
                id               uuid        PRIMARY KEY,
                workspace_id     uuid        NOT NULL,
                type             text        NOT NULL,
                name             text        NOT NULL,
                active           boolean     NOT NULL,
                deleted          boolean     NOT NULL DEFAULT false,
                created_at       timestamptz NOT NULL,
                updated_at       timestamptz NOT NULL,
                updated_position bigint      NOT NULL
            );
            CREATE INDEX IF NOT EXISTS {t}_workspace ON {t} (workspace_id, type, created_at);
        """

    async def apply(self, db: ProjectionDb, tables: Tables, events: Sequence[LoggedEvent]) -> None:
        t = tables["channels"]
        for logged in events:
            event = logged.event
            if isinstance(event, Channel.Created):
                await db.execute(
                    f"""INSERT INTO {t} (id, workspace_id, type, name, active, created_at,
                                         updated_at, updated_position)
                        VALUES ($1, $2, $3, $4, $5, $6, $6, $7) ON CONFLICT (id) DO NOTHING""",
                    event.originator_id,
                    event.workspace_id,
                    str(event.config.type),
                    event.config.name,
                    event.config.active,
                    event.timestamp,
                    logged.position,
                )
            elif isinstance(event, Channel.Updated):
                await db.execute(
                    f"""UPDATE {t} SET name = $2, active = $3, updated_at = $4,
                               updated_position = $5 WHERE id = $1""",
                    event.originator_id,
                    event.config.name,
                    event.config.active,
                    event.timestamp,
                    logged.position,
                )
            elif isinstance(event, Channel.Deleted):
                await db.execute(
                    f"""UPDATE {t} SET deleted = true, updated_at = $2, updated_position = $3
                         WHERE id = $1""",
                    event.originator_id,
                    event.timestamp,
                    logged.position,
                )
