"""Automation runs: where each run stands, the leads' automation timelines, per-automation stats.

Reads every event of the `AutomationRun` aggregate and of the `Message` aggregate (the
messages an automation sent: `message.queued` with origin `automation`, whose `origin_id` is
the run). Four tables:

* `automation_runs`: one row per run: its status (`running`, `completed`, `failed`,
  `skipped`, `stopped`), the step it is at, `due_at` while a step waits for its delay (the
  timer worker polls `WHERE due_at <= now()`), and the step that failed.
* `automation_timeline`: one row per entry of a run (`automation_triggered`, `step_scheduled`,
  `step_sent`, `step_failed`, `fallback`, `automation_completed`, `automation_failed`,
  `automation_skipped`, `automation_stopped`, `retry_requested`), with the step, channel,
  message, a `detail` object (error, reason, from/to channel, ...), and the current delivery
  status of the entry's message, kept up to date as status reports come in. A step's start
  is not an entry of its own: its outcome (sent or failed) is.
* `automation_stats`: per automation, the runs triggered, and how many are running,
  completed, failed, skipped or stopped now (a failed run retried moves from `failed` back
  to `running`, so it is counted once, by its outcome).
* `automation_messages`: each automation message's run and current status (the status as
  the `Message` aggregate folds it), so a report arriving before or after the entry that
  names its message lands on that entry.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import astuple, dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from domain.automations import AutomationRun, RunStatus
from domain.base import LoggedEvent
from domain.messages import Message, MessageStatus, Origin
from projections.base import Projection, ProjectionDb, Tables
from projections.timeline import event_types_of

TRIGGERED = "automation_triggered"
STAT_COUNTS = ("triggered", "running", "completed", "failed", "skipped", "stopped")
# Statuses the stats count runs by (`triggered` counts every run once, whatever it became).
_COUNTED = frozenset(STAT_COUNTS) - {"triggered"}

RUN_COLUMNS = (
    "id",
    "workspace_id",
    "automation_id",
    "lead_id",
    "status",
    "step",
    "due_at",
    "failed_step",
    "created_at",
    "updated_at",
    "updated_position",
)
_RUN_TYPES = (
    "uuid",
    "uuid",
    "uuid",
    "uuid",
    "text",
    "integer",
    "timestamptz",
    "integer",
    "timestamptz",
    "timestamptz",
    "bigint",
)
MESSAGE_COLUMNS = (
    "id",
    "workspace_id",
    "run_id",
    "lead_id",
    "step",
    "channel",
    "status",
    "updated_position",
)
_MESSAGE_TYPES = ("uuid", "uuid", "uuid", "uuid", "integer", "text", "text", "bigint")
TIMELINE_COLUMNS = (
    "position",
    "workspace_id",
    "lead_id",
    "automation_id",
    "run_id",
    "type",
    "at",
    "step",
    "channel",
    "message_id",
    "status",
    "detail",
)
_TIMELINE_TYPES = (
    "bigint",
    "uuid",
    "uuid",
    "uuid",
    "uuid",
    "text",
    "timestamptz",
    "integer",
    "text",
    "uuid",
    "text",
    "text",
)


@dataclass
class _Run:
    id: UUID
    workspace_id: UUID
    automation_id: UUID
    lead_id: UUID
    status: str
    step: int | None
    due_at: datetime | None
    failed_step: int | None
    created_at: datetime
    updated_at: datetime
    updated_position: int

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> _Run:
        return cls(**{name: row[name] for name in RUN_COLUMNS})


@dataclass
class _Message:
    id: UUID
    workspace_id: UUID
    run_id: UUID | None
    lead_id: UUID | None
    step: int | None
    channel: str
    status: str
    updated_position: int

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> _Message:
        return cls(**{name: row[name] for name in MESSAGE_COLUMNS})


@dataclass
class _Entry:
    position: int
    workspace_id: UUID
    lead_id: UUID
    automation_id: UUID
    run_id: UUID
    type: str
    at: datetime
    step: int | None
    channel: str | None
    message_id: UUID | None
    status: str | None
    detail: str  # JSON text, cast to jsonb on write


_MESSAGE_EVENTS = (Message.Queued, Message.Sent, Message.SendFailed, Message.StatusReported)
_Move = Callable[["_Run", str], None]


def _detail(event: AutomationRun.Entry) -> dict[str, Any]:
    """What an entry says beyond its type, step, channel and message (camelCase)."""
    if isinstance(event, AutomationRun.Skipped):
        return {"reason": event.reason, "detail": event.detail}
    if isinstance(event, AutomationRun.StepScheduled):
        return {"dueAt": event.due_at.isoformat()}
    if isinstance(event, AutomationRun.StepSent):
        return {"providerId": event.provider_id, "fallback": event.fallback}
    if isinstance(event, AutomationRun.StepFailed):
        return {"error": event.error, "fallback": event.fallback}
    if isinstance(event, AutomationRun.FellBack):
        return {"fromChannel": event.from_channel, "toChannel": event.to_channel}
    if isinstance(event, AutomationRun.Failed):
        return {"error": event.error}
    if isinstance(event, AutomationRun.Stopped):
        return {"reason": event.reason}
    if isinstance(event, AutomationRun.RetryRequested):
        return {"actor": event.actor}
    return {}


def _step_and_channel(event: AutomationRun.Entry) -> tuple[int | None, str | None]:
    if isinstance(event, AutomationRun.StepSent | AutomationRun.StepFailed):
        return event.index, event.channel
    if isinstance(event, AutomationRun.FellBack):
        return event.index, event.to_channel
    if isinstance(
        event,
        AutomationRun.StepScheduled | AutomationRun.Failed | AutomationRun.RetryRequested,
    ):
        return event.index, None
    return None, None


def _message_status(event: object) -> str | None:
    """The status a message event leaves the message in, as the aggregate folds it."""
    if isinstance(event, Message.Sent):
        return MessageStatus.SENT.value
    if isinstance(event, Message.SendFailed):
        return MessageStatus.FAILED.value
    if isinstance(event, Message.StatusReported):
        return MessageStatus(event.status).value
    return None


def _unnest(types: Sequence[str], start: int = 1) -> str:
    return ", ".join(f"${i}::{kind}[]" for i, kind in enumerate(types, start=start))


class AutomationRunsView(Projection):
    name = "automation_runs"
    version = 1
    table_names = (
        "automation_runs",
        "automation_timeline",
        "automation_stats",
        "automation_messages",
    )
    event_types = event_types_of(AutomationRun) | event_types_of(Message)

    def create_sql(self, tables: Tables) -> str:
        runs, timeline = tables["automation_runs"], tables["automation_timeline"]
        stats, messages = tables["automation_stats"], tables["automation_messages"]
        counts = "\n".join(f"{name} bigint NOT NULL DEFAULT 0," for name in STAT_COUNTS)
        return f"""
            CREATE TABLE IF NOT EXISTS {runs} (
                id               uuid        PRIMARY KEY,
                workspace_id     uuid        NOT NULL,
                automation_id    uuid        NOT NULL,
                lead_id          uuid        NOT NULL,
                status           text        NOT NULL,
                step             integer,
                due_at           timestamptz,
                failed_step      integer,
                created_at       timestamptz NOT NULL,
                updated_at       timestamptz NOT NULL,
                updated_position bigint      NOT NULL
            );
            CREATE INDEX IF NOT EXISTS {runs}_lead
                ON {runs} (automation_id, lead_id, created_at DESC);
            CREATE INDEX IF NOT EXISTS {runs}_due ON {runs} (due_at) WHERE due_at IS NOT NULL;
            CREATE TABLE IF NOT EXISTS {timeline} (
                position      bigint      PRIMARY KEY,
                workspace_id  uuid        NOT NULL,
                lead_id       uuid        NOT NULL,
                automation_id uuid        NOT NULL,
                run_id        uuid        NOT NULL,
                type          text        NOT NULL,
                at            timestamptz NOT NULL,
                step          integer,
                channel       text,
                message_id    uuid,
                status        text,
                detail        jsonb       NOT NULL DEFAULT '{{}}'
            );
            CREATE INDEX IF NOT EXISTS {timeline}_lead ON {timeline} (lead_id, position);
            CREATE INDEX IF NOT EXISTS {timeline}_message
                ON {timeline} (message_id) WHERE message_id IS NOT NULL;
            CREATE TABLE IF NOT EXISTS {stats} (
                workspace_id  uuid NOT NULL,
                automation_id uuid NOT NULL,
                {counts}
                PRIMARY KEY (workspace_id, automation_id)
            );
            CREATE TABLE IF NOT EXISTS {messages} (
                id               uuid    PRIMARY KEY,
                workspace_id     uuid    NOT NULL,
                run_id           uuid,
                lead_id          uuid,
                step             integer,
                channel          text    NOT NULL,
                status           text    NOT NULL,
                updated_position bigint  NOT NULL
            );
        """

    async def apply(self, db: ProjectionDb, tables: Tables, events: Sequence[LoggedEvent]) -> None:
        runs_t, timeline_t = tables["automation_runs"], tables["automation_timeline"]
        stats_t, messages_t = tables["automation_stats"], tables["automation_messages"]
        # Folded in memory from the stored rows: one read of each table, then one write.
        run_ids: set[UUID] = set()
        message_ids: set[UUID] = set()
        for logged in events:
            event = logged.event
            if isinstance(event, AutomationRun.Entry):
                run_ids.add(event.originator_id)
                message_id = getattr(event, "message_id", None)
                if message_id is not None and not isinstance(event, AutomationRun.StepStarted):
                    message_ids.add(message_id)
            elif isinstance(event, Message.Sent | Message.SendFailed | Message.StatusReported):
                message_ids.add(event.originator_id)
        runs: dict[UUID, _Run] = {}
        if run_ids:
            for stored in await db.fetch(
                f"SELECT {', '.join(RUN_COLUMNS)} FROM {runs_t} WHERE id = ANY($1::uuid[])",
                list(run_ids),
            ):
                runs[stored["id"]] = _Run.of(stored)
        messages: dict[UUID, _Message] = {}
        if message_ids:
            for stored in await db.fetch(
                f"SELECT {', '.join(MESSAGE_COLUMNS)} FROM {messages_t} WHERE id = ANY($1::uuid[])",
                list(message_ids),
            ):
                messages[stored["id"]] = _Message.of(stored)

        changed_runs: set[UUID] = set()
        changed_messages: set[UUID] = set()
        entries: list[_Entry] = []
        stats: dict[tuple[UUID, UUID], dict[str, int]] = defaultdict(
            lambda: dict.fromkeys(STAT_COUNTS, 0)
        )

        def move(run: _Run, status: str) -> None:
            if status == run.status:
                return
            counts = stats[(run.workspace_id, run.automation_id)]
            if run.status in _COUNTED:
                counts[run.status] -= 1
            if status in _COUNTED:
                counts[status] += 1
            run.status = status

        for logged in events:
            event = logged.event
            if isinstance(event, _MESSAGE_EVENTS):
                self._message(event, logged.position, messages, changed_messages)
                continue
            run_id = event.originator_id
            run = runs.get(run_id)
            if run is not None and run.updated_position >= logged.position:
                continue  # applied before
            if isinstance(event, AutomationRun.Triggered):
                run = runs[run_id] = _Run(
                    id=run_id,
                    workspace_id=event.workspace_id,
                    automation_id=event.automation_id,
                    lead_id=event.lead_id,
                    status="",
                    step=None,
                    due_at=None,
                    failed_step=None,
                    created_at=event.timestamp,
                    updated_at=event.timestamp,
                    updated_position=logged.position,
                )
                stats[(run.workspace_id, run.automation_id)]["triggered"] += 1
                move(run, RunStatus.RUNNING.value)
                entries.append(
                    self._entry(run, logged, TRIGGERED, None, None, None, {"cause": event.cause})
                )
            elif run is None:
                raise ValueError(f"{logged.event_type} of automation run {run_id} before it")
            elif isinstance(event, AutomationRun.Entry):
                self._fold(run, event, move)
                if not isinstance(event, AutomationRun.StepStarted):
                    step, channel = _step_and_channel(event)
                    message_id = getattr(event, "message_id", None)
                    entries.append(
                        self._entry(
                            run, logged, event.kind, step, channel, message_id, _detail(event)
                        )
                    )
            else:
                continue
            run.updated_at = event.timestamp
            run.updated_position = logged.position
            changed_runs.add(run_id)

        for entry in entries:
            if entry.message_id is not None and entry.message_id in messages:
                entry.status = messages[entry.message_id].status
        await self._write(
            db,
            runs_t,
            timeline_t,
            stats_t,
            messages_t,
            [runs[i] for i in sorted(changed_runs)],
            entries,
            stats,
            [messages[i] for i in sorted(changed_messages)],
        )

    @staticmethod
    def _fold(run: _Run, event: AutomationRun.Entry, move: _Move) -> None:
        """The run's row after one of its entries (as `AutomationRun.apply_entry` folds it)."""
        if isinstance(event, AutomationRun.Skipped):
            move(run, RunStatus.SKIPPED.value)
        elif isinstance(event, AutomationRun.StepScheduled):
            run.step = event.index
            run.due_at = event.due_at
        elif isinstance(event, AutomationRun.StepStarted):
            # A late fallback for an earlier step leaves the step scheduled next alone.
            if run.step is None or event.index >= run.step:
                run.step = event.index
                run.due_at = None
        elif isinstance(event, AutomationRun.Completed):
            move(run, RunStatus.COMPLETED.value)
            run.due_at = None
        elif isinstance(event, AutomationRun.Failed):
            move(run, RunStatus.FAILED.value)
            run.failed_step = event.index
            run.due_at = None
        elif isinstance(event, AutomationRun.Stopped):
            move(run, RunStatus.STOPPED.value)
            run.due_at = None
        elif isinstance(event, AutomationRun.RetryRequested):
            move(run, RunStatus.RUNNING.value)
            run.failed_step = None

    @staticmethod
    def _entry(
        run: _Run,
        logged: LoggedEvent,
        kind: str,
        step: int | None,
        channel: str | None,
        message_id: UUID | None,
        detail: dict[str, Any],
    ) -> _Entry:
        return _Entry(
            position=logged.position,
            workspace_id=run.workspace_id,
            lead_id=run.lead_id,
            automation_id=run.automation_id,
            run_id=run.id,
            type=kind,
            at=logged.event.timestamp,
            step=step,
            channel=channel,
            message_id=message_id,
            status=None,
            detail=json.dumps(detail, sort_keys=True),
        )

    @staticmethod
    def _message(
        event: Message.Queued | Message.Sent | Message.SendFailed | Message.StatusReported,
        position: int,
        messages: dict[UUID, _Message],
        changed: set[UUID],
    ) -> None:
        message_id = event.originator_id
        found = messages.get(message_id)
        if found is not None and found.updated_position >= position:
            return  # applied before
        if isinstance(event, Message.Queued):
            if event.origin != Origin.AUTOMATION.value:
                return
            messages[message_id] = _Message(
                id=message_id,
                workspace_id=event.workspace_id,
                run_id=event.origin_id,
                lead_id=event.lead_id,
                step=event.step,
                channel=event.channel,
                status=MessageStatus.PENDING.value,
                updated_position=position,
            )
            changed.add(message_id)
            return
        status = _message_status(event)
        if found is None or status is None:
            return  # another sender's message
        found.status = status
        found.updated_position = position
        changed.add(message_id)

    @staticmethod
    async def _write(
        db: ProjectionDb,
        runs_t: str,
        timeline_t: str,
        stats_t: str,
        messages_t: str,
        runs: list[_Run],
        entries: list[_Entry],
        stats: dict[tuple[UUID, UUID], dict[str, int]],
        messages: list[_Message],
    ) -> None:
        if messages:
            updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in MESSAGE_COLUMNS if c != "id")
            await db.execute(
                f"""
                INSERT INTO {messages_t} AS m ({", ".join(MESSAGE_COLUMNS)})
                SELECT * FROM unnest({_unnest(_MESSAGE_TYPES)})
                ON CONFLICT (id) DO UPDATE SET {updates}
                 WHERE m.updated_position < EXCLUDED.updated_position
                """,
                *(list(column) for column in zip(*map(astuple, messages), strict=True)),
            )
            # Entries written before this batch that name these messages.
            await db.execute(
                f"""
                UPDATE {timeline_t} AS t SET status = r.status
                  FROM unnest($1::uuid[], $2::text[]) AS r(id, status)
                 WHERE t.message_id = r.id AND t.status IS DISTINCT FROM r.status
                """,
                [m.id for m in messages],
                [m.status for m in messages],
            )
        if runs:
            updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in RUN_COLUMNS if c != "id")
            await db.execute(
                f"""
                INSERT INTO {runs_t} AS r ({", ".join(RUN_COLUMNS)})
                SELECT * FROM unnest({_unnest(_RUN_TYPES)})
                ON CONFLICT (id) DO UPDATE SET {updates}
                 WHERE r.updated_position < EXCLUDED.updated_position
                """,
                *(list(column) for column in zip(*map(astuple, runs), strict=True)),
            )
        if entries:
            await db.execute(
                f"""
                INSERT INTO {timeline_t} ({", ".join(TIMELINE_COLUMNS)})
                SELECT p, w, l, a, r, ty, at, s, c, m, st, d::jsonb
                  FROM unnest({_unnest(_TIMELINE_TYPES)})
                       AS x(p, w, l, a, r, ty, at, s, c, m, st, d)
                ON CONFLICT (position) DO NOTHING
                """,
                *(list(column) for column in zip(*map(astuple, entries), strict=True)),
            )
        keys = [key for key, counts in stats.items() if any(counts.values())]
        if keys:
            await db.execute(
                f"""
                INSERT INTO {stats_t} AS s (workspace_id, automation_id, {", ".join(STAT_COUNTS)})
                SELECT * FROM unnest($1::uuid[], $2::uuid[],
                                     {_unnest(["bigint"] * len(STAT_COUNTS), start=3)})
                ON CONFLICT (workspace_id, automation_id) DO UPDATE
                   SET {", ".join(f"{c} = s.{c} + EXCLUDED.{c}" for c in STAT_COUNTS)}
                """,
                [k[0] for k in keys],
                [k[1] for k in keys],
                *([stats[k][c] for k in keys] for c in STAT_COUNTS),
            )
