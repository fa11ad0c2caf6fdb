"""Per inbound webhook: how many leads it has received and when it last received one."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from uuid import UUID

from domain.base import LoggedEvent
from domain.leads import Lead
from projections.base import Projection, ProjectionDb, Tables

CHANNEL_PREFIX = "webhook:"


class WebhookStats(Projection):
    name = "webhook_stats"
    version = 1
    table_names = ("webhook_stats",)
    event_types = frozenset({"lead.received"})

    def create_sql(self, tables: Tables) -> str:
        t = tables["webhook_stats"]
        return f"""
            CREATE TABLE IF NOT EXISTS {t} (
                webhook_id       uuid        PRIMARY KEY,
                workspace_id     uuid        NOT NULL,
                total_received   bigint      NOT NULL,
                duplicates       bigint      NOT NULL,
                last_received_at timestamptz NOT NULL,
                last_lead_id     uuid        NOT NULL
            );
        """

    async def apply(self, db: ProjectionDb, tables: Tables, events: Sequence[LoggedEvent]) -> None:
        # Folded per webhook first: one upsert per webhook per batch.
        folded: dict[UUID, tuple[UUID, int, int, datetime, UUID]] = {}
        for logged in events:
            event = logged.event
            if not isinstance(event, Lead.Received) or not event.channel:
                continue
            if not event.channel.startswith(CHANNEL_PREFIX):
                continue
            try:
                webhook_id = UUID(event.channel.removeprefix(CHANNEL_PREFIX))
            except ValueError:
                continue
            _, total, dupes, _, _ = folded.get(
                webhook_id, (event.workspace_id, 0, 0, event.timestamp, event.originator_id)
            )
            folded[webhook_id] = (
                event.workspace_id,
                total + 1,
                dupes + int(event.is_duplicate),
                event.timestamp,
                event.originator_id,
            )
        if not folded:
            return
        await db.executemany(
            f"""
            INSERT INTO {tables["webhook_stats"]} AS s VALUES ($1, $2, $3, $4, $5, $6)
            ON CONFLICT (webhook_id) DO UPDATE
               SET total_received = s.total_received + EXCLUDED.total_received,
                   duplicates = s.duplicates + EXCLUDED.duplicates,
                   last_received_at = EXCLUDED.last_received_at,
                   last_lead_id = EXCLUDED.last_lead_id
            """,
            [(w, *row) for w, row in folded.items()],
        )
