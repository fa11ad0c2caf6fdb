"""Submissions: one row per submission of a lead to a campaign, with its snapshot and status.

Reads every event declared on the `Submission` aggregate (found from the class, so events
added there later reach this projection without touching the set here). `submission.created`
makes the row; any later submission event that carries a `status` (e.g. delivered,
rejected, returned) moves it there. An event that needs more than a status change gets its
own branch in `apply`, and a new `version` if it changes what existing rows mean.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from domain.base import LoggedEvent
from domain.submissions import Submission
from projections.base import Projection, ProjectionDb, Tables
from projections.timeline import event_types_of


class SubmissionsView(Projection):
    name = "submissions"
    version = 1
    table_names = ("submissions",)
    event_types = event_types_of(Submission)

    def create_sql(self, tables: Tables) -> str:
        t = tables["submissions"]
        return f"""
            CREATE TABLE IF NOT EXISTS {t} (
                id               uuid        PRIMARY KEY,
                workspace_id     uuid        NOT NULL,
                lead_id          uuid        NOT NULL,
                campaign_id      uuid        NOT NULL,
                source           text        NOT NULL,
                status           text        NOT NULL,
                snapshot         jsonb       NOT NULL DEFAULT '{{}}',
                created_at       timestamptz NOT NULL,
                updated_at       timestamptz NOT NULL,
                updated_position bigint      NOT NULL
            );
            CREATE INDEX IF NOT EXISTS {t}_lead ON {t} (lead_id, created_at DESC, id);
            CREATE INDEX IF NOT EXISTS {t}_workspace
                ON {t} (workspace_id, created_at DESC, id);
            CREATE INDEX IF NOT EXISTS {t}_campaign
                ON {t} (workspace_id, campaign_id, status, created_at DESC);
        """

    async def apply(self, db: ProjectionDb, tables: Tables, events: Sequence[LoggedEvent]) -> None:
        t = tables["submissions"]
        created: list[tuple[Any, ...]] = []
        for logged in events:
            event = logged.event
            if isinstance(event, Submission.Created):
                created.append(
                    (
                        event.originator_id,
                        event.workspace_id,
                        event.lead_id,
                        event.campaign_id,
                        str(event.source),
                        event.status,
                        json.dumps(event.snapshot),
                        event.timestamp,
                        logged.position,
                    )
                )
                continue
            # Later events act on rows made before them: write the pending ones first.
            if created:
                await self._insert(db, t, created)
                created = []
            status = getattr(event, "status", None)
            if isinstance(status, str) and status:
                await db.execute(
                    f"""UPDATE {t} SET status = $2, updated_at = $3, updated_position = $4
                         WHERE id = $1 AND updated_position < $4""",
                    event.originator_id,
                    status,
                    event.timestamp,
                    logged.position,
                )
        if created:
            await self._insert(db, t, created)

    async def _insert(self, db: ProjectionDb, table: str, rows: list[tuple[Any, ...]]) -> None:
        await db.execute(
            f"""
            INSERT INTO {table} (id, workspace_id, lead_id, campaign_id, source, status,
                                 snapshot, created_at, updated_at, updated_position)
            SELECT i, w, l, c, s, st, sn::jsonb, t, t, p
              FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[], $5::text[],
                          $6::text[], $7::text[], $8::timestamptz[], $9::bigint[])
                   AS r(i, w, l, c, s, st, sn, t, p)
            ON CONFLICT (id) DO NOTHING
            """,
            *(list(column) for column in zip(*rows, strict=True)),
        )
