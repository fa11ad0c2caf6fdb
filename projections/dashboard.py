"""The dashboard's figures, pre-aggregated: leads and duplicates per day and source, delivery
outcomes per day, and a histogram of the time leads spent in each stage."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import date, datetime
from uuid import UUID

from domain.base import LoggedEvent
from domain.deliveries import Delivery, Outcome
from domain.leads import Lead
from projections.base import Projection, ProjectionDb, Tables

BUCKETS_PER_DOUBLING = 4
"""Time in stage is kept as a log-scale histogram (each bucket ~19% wide), so the median and
p90 of a stage are read from a few dozen rows however many leads passed through it."""


def duration_bucket(seconds: float) -> int:
    """The histogram bucket of a stay: 0 for under a second, then 4 buckets per doubling."""
    if seconds < 1:
        return 0
    return 1 + math.floor(BUCKETS_PER_DOUBLING * math.log2(seconds))


def bucket_seconds(bucket: int) -> float:
    """A representative duration of a bucket (its geometric middle)."""
    if bucket <= 0:
        return 0.5
    return float(2 ** ((bucket - 1 + 0.5) / BUCKETS_PER_DOUBLING))


_FINAL = {
    Outcome.SUCCEEDED: "succeeded",
    Outcome.FAILED: "failed",
    Outcome.DISABLED: "disabled",
}


class DashboardStats(Projection):
    """`dash_leads_daily`: leads received per UTC day and source, with how many were
    duplicates. `dash_deliveries_daily`: finished delivery attempts per day (a retry that
    will be tried again is not counted). `dash_lead_stage`: the stage each lead is in and
    since when (by lead id only, to close a stay). `dash_stage_time`: per stage, how many
    finished stays fell in each duration bucket."""

    name = "dashboard"
    version = 1
    table_names = (
        "dash_leads_daily",
        "dash_deliveries_daily",
        "dash_lead_stage",
        "dash_stage_time",
    )
    event_types = frozenset({"lead.received", "lead.stage_changed", "delivery.attempted"})

    def create_sql(self, tables: Tables) -> str:
        daily = tables["dash_leads_daily"]
        deliveries = tables["dash_deliveries_daily"]
        lead_stage = tables["dash_lead_stage"]
        stage_time = tables["dash_stage_time"]
        return f"""
            CREATE TABLE IF NOT EXISTS {daily} (
                workspace_id uuid   NOT NULL,
                day          date   NOT NULL,
                source       text   NOT NULL,
                leads        bigint NOT NULL,
                duplicates   bigint NOT NULL,
                PRIMARY KEY (workspace_id, day, source)
            );
            CREATE TABLE IF NOT EXISTS {deliveries} (
                workspace_id uuid   NOT NULL,
                day          date   NOT NULL,
                succeeded    bigint NOT NULL,
                failed       bigint NOT NULL,
                disabled     bigint NOT NULL,
                PRIMARY KEY (workspace_id, day)
            );
            CREATE TABLE IF NOT EXISTS {lead_stage} (
                lead_id      uuid        PRIMARY KEY,
                workspace_id uuid        NOT NULL,
                stage_id     uuid,
                entered_at   timestamptz NOT NULL
            );
            CREATE TABLE IF NOT EXISTS {stage_time} (
                workspace_id uuid     NOT NULL,
                stage_id     uuid     NOT NULL,
                bucket       smallint NOT NULL,
                stays        bigint   NOT NULL,
                PRIMARY KEY (workspace_id, stage_id, bucket)
            );
        """

    async def apply(self, db: ProjectionDb, tables: Tables, events: Sequence[LoggedEvent]) -> None:
        # Counters are folded per batch (one upsert per key); the runtime rolls a failed batch
        # back before re-applying it, so plain increments stay exactly once.
        daily: dict[tuple[UUID, date, str], list[int]] = {}
        deliveries: dict[tuple[UUID, date], dict[str, int]] = {}
        stays: dict[tuple[UUID, UUID, int], int] = {}
        lead_stage = tables["dash_lead_stage"]
        entered: list[tuple[UUID, UUID, UUID | None, datetime]] = []
        for logged in events:
            event = logged.event
            if isinstance(event, Lead.Received):
                key = (event.workspace_id, event.timestamp.date(), str(event.source).casefold())
                counts = daily.setdefault(key, [0, 0])
                counts[0] += 1
                counts[1] += int(event.is_duplicate)
                entered.append(
                    (event.originator_id, event.workspace_id, event.stage_id, event.timestamp)
                )
            elif isinstance(event, Lead.StageChanged):
                await self._enter(db, lead_stage, entered)  # the stay it closes may be one
                await self._stage_changed(db, lead_stage, event, stays)
            elif isinstance(event, Delivery.Attempted) and event.outcome in _FINAL:
                if logged.workspace_id is None:
                    continue
                per_day = deliveries.setdefault((logged.workspace_id, event.timestamp.date()), {})
                outcome = _FINAL[event.outcome]
                per_day[outcome] = per_day.get(outcome, 0) + 1
        await self._enter(db, lead_stage, entered)
        if daily:
            await db.executemany(
                f"""
                INSERT INTO {tables["dash_leads_daily"]} AS d VALUES ($1, $2, $3, $4, $5)
                ON CONFLICT (workspace_id, day, source) DO UPDATE
                   SET leads = d.leads + EXCLUDED.leads,
                       duplicates = d.duplicates + EXCLUDED.duplicates
                """,
                [(*key, leads, dupes) for key, (leads, dupes) in daily.items()],
            )
        if deliveries:
            await db.executemany(
                f"""
                INSERT INTO {tables["dash_deliveries_daily"]} AS d VALUES ($1, $2, $3, $4, $5)
                ON CONFLICT (workspace_id, day) DO UPDATE
                   SET succeeded = d.succeeded + EXCLUDED.succeeded,
                       failed = d.failed + EXCLUDED.failed,
                       disabled = d.disabled + EXCLUDED.disabled
                """,
                [
                    (ws, day, c.get("succeeded", 0), c.get("failed", 0), c.get("disabled", 0))
                    for (ws, day), c in deliveries.items()
                ],
            )
        if stays:
            await db.executemany(
                f"""
                INSERT INTO {tables["dash_stage_time"]} AS s VALUES ($1, $2, $3, $4)
                ON CONFLICT (workspace_id, stage_id, bucket) DO UPDATE
                   SET stays = s.stays + EXCLUDED.stays
                """,
                [(*key, n) for key, n in stays.items()],
            )

    async def _enter(
        self,
        db: ProjectionDb,
        lead_stage: str,
        entered: list[tuple[UUID, UUID, UUID | None, datetime]],
    ) -> None:
        """The received leads' first stays, in one statement; `entered` is emptied."""
        if not entered:
            return
        columns = [list(column) for column in zip(*entered, strict=True)]
        await db.execute(
            f"""INSERT INTO {lead_stage}
                SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::timestamptz[])
                ON CONFLICT (lead_id) DO NOTHING""",
            *columns,
        )
        entered.clear()

    async def _stage_changed(
        self,
        db: ProjectionDb,
        lead_stage: str,
        event: Lead.StageChanged,
        stays: dict[tuple[UUID, UUID, int], int],
    ) -> None:
        rows = await db.fetch(
            f"SELECT workspace_id, stage_id, entered_at FROM {lead_stage} WHERE lead_id = $1",
            event.originator_id,
        )
        if not rows:
            return  # a lead this view never saw received (cannot happen in a full log)
        row = rows[0]
        entered: datetime = row["entered_at"]
        if row["stage_id"] is not None:
            bucket = duration_bucket((event.timestamp - entered).total_seconds())
            key = (row["workspace_id"], row["stage_id"], bucket)
            stays[key] = stays.get(key, 0) + 1
        await db.execute(
            f"UPDATE {lead_stage} SET stage_id = $2, entered_at = $3 WHERE lead_id = $1",
            event.originator_id,
            event.new_stage_id,
            event.timestamp,
        )
