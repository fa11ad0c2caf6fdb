"""Per campaign: how its submissions went (counts by outcome, revenue) and why they failed.

A final status is counted from the event that moves a submission into it (a buyer's answer
without a status is not final: other endpoints are still to try). `delivered` counts
submissions posted at least once (the first post), `duplicate` every buyer answer saying
duplicate, `pending_action` the submissions waiting for their first-submission action now.
Revenue is the accepted prices less the prices given back by accepted returns.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from decimal import Decimal
from uuid import UUID

from domain.base import LoggedEvent
from domain.submissions import Submission, SubmissionStatus
from projections.base import Projection, ProjectionDb, Tables
from projections.submissions import reason_of
from projections.timeline import event_types_of

COUNTS = (
    "submitted",
    "delivered",
    "accepted",
    "rejected",
    "duplicate",
    "disqualified",
    "failed",
    "capped",
    "returned",
    "pending_action",
)
# Final statuses counted, and those whose reasons are kept.
_FINAL: dict[str, str] = {
    SubmissionStatus.ACCEPTED: "accepted",
    SubmissionStatus.REJECTED: "rejected",
    SubmissionStatus.DISQUALIFIED: "disqualified",
    SubmissionStatus.FAILED: "failed",
    SubmissionStatus.CAPPED: "capped",
    SubmissionStatus.RETURNED: "returned",
}
REASON_KINDS = ("disqualified", "rejected", "failed")
MAX_REASON = 200
NO_REASON = "(none given)"

_Key = tuple[UUID, UUID]


class _Totals:
    __slots__ = ("counts", "revenue")

    def __init__(self) -> None:
        self.counts = dict.fromkeys(COUNTS, 0)
        self.revenue = Decimal(0)


class CampaignStats(Projection):
    name = "campaign_stats"
    version = 1
    table_names = ("campaign_stats", "campaign_stat_reasons")
    event_types = event_types_of(Submission)

    def create_sql(self, tables: Tables) -> str:
        s, r = tables["campaign_stats"], tables["campaign_stat_reasons"]
        counts = "\n".join(f"{name} bigint NOT NULL DEFAULT 0," for name in COUNTS)
        return f"""
            CREATE TABLE IF NOT EXISTS {s} (
                workspace_id uuid    NOT NULL,
                campaign_id  uuid    NOT NULL,
                {counts}
                revenue      numeric NOT NULL DEFAULT 0,
                PRIMARY KEY (workspace_id, campaign_id)
            );
            CREATE TABLE IF NOT EXISTS {r} (
                workspace_id uuid   NOT NULL,
                campaign_id  uuid   NOT NULL,
                kind         text   NOT NULL,
                reason       text   NOT NULL,
                count        bigint NOT NULL,
                PRIMARY KEY (workspace_id, campaign_id, kind, reason)
            );
        """

    async def apply(self, db: ProjectionDb, tables: Tables, events: Sequence[LoggedEvent]) -> None:
        # Folded per campaign and per reason first: one upsert of each per batch.
        totals: dict[_Key, _Totals] = defaultdict(_Totals)
        reasons: dict[tuple[UUID, UUID, str, str], int] = defaultdict(int)
        for logged in events:
            event = logged.event
            if logged.workspace_id is None:
                continue
            if isinstance(event, Submission.Created):
                key = (logged.workspace_id, event.campaign_id)
                totals[key].counts["submitted"] += 1
                continue
            if not isinstance(event, Submission.Step):
                continue
            key = (logged.workspace_id, event.campaign_id)
            counts = totals[key].counts
            if isinstance(event, Submission.PostStarted) and event.attempt == 1:
                counts["delivered"] += 1
            if isinstance(event, Submission.BuyerAnswered):
                if event.outcome == "duplicate":
                    counts["duplicate"] += 1
                if event.outcome == "accepted" and event.endpoint_id:
                    totals[key].revenue += event.price or 0
            if isinstance(event, Submission.ReturnDecided) and event.accepted:
                totals[key].revenue -= event.price or 0
            if isinstance(event, Submission.ActionCompleted):
                counts["pending_action"] -= 1
            if event.status == SubmissionStatus.PENDING_ACTION:
                counts["pending_action"] += 1
            final = _FINAL.get(event.status) if event.status else None
            if final is None:
                continue
            counts[final] += 1
            if final in REASON_KINDS:
                reason = (reason_of(event) or NO_REASON)[:MAX_REASON]
                reasons[(logged.workspace_id, event.campaign_id, final, reason)] += 1
        if totals:
            keys = list(totals)
            await db.execute(
                f"""
                INSERT INTO {tables["campaign_stats"]} AS s
                       (workspace_id, campaign_id, {", ".join(COUNTS)}, revenue)
                SELECT * FROM unnest($1::uuid[], $2::uuid[],
                                     {", ".join(f"${i + 3}::bigint[]" for i in range(len(COUNTS)))},
                                     ${len(COUNTS) + 3}::numeric[])
                ON CONFLICT (workspace_id, campaign_id) DO UPDATE
                   SET {", ".join(f"{c} = s.{c} + EXCLUDED.{c}" for c in COUNTS)},
                       revenue = s.revenue + EXCLUDED.revenue
                """,
                [k[0] for k in keys],
                [k[1] for k in keys],
                *([totals[k].counts[c] for k in keys] for c in COUNTS),
                [totals[k].revenue for k in keys],
            )
        if reasons:
            keyed = list(reasons)
            await db.execute(
                f"""
                INSERT INTO {tables["campaign_stat_reasons"]} AS r
                       (workspace_id, campaign_id, kind, reason, count)
                SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[],
                                     $5::bigint[])
                ON CONFLICT (workspace_id, campaign_id, kind, reason) DO UPDATE
                   SET count = r.count + EXCLUDED.count
                """,
                [k[0] for k in keyed],
                [k[1] for k in keyed],
                [k[2] for k in keyed],
                [k[3] for k in keyed],
                list(reasons.values()),
            )
