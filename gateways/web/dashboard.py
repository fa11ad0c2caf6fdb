"""The dashboard page: figures from the `dashboard` and `leads` read models, drawn as SVG on
the server (no chart library, no script; colours are SVG presentation attributes, which the
page's CSP allows where inline styles are not)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Depends, Request, Response

from domain.pipelines import Pipeline, StageType
from gateways.bootstrap import Engine
from gateways.consumers.read_models import LeadFilter, ViewNeedsRebuild
from gateways.web.board import choose_pipeline
from gateways.web.pages import page
from gateways.web.routes import csrf_guard
from gateways.web.session import SignedIn, require_user, web_of
from projections.dashboard import bucket_seconds

router = APIRouter(include_in_schema=False, dependencies=[Depends(csrf_guard)])
Signed = Annotated[SignedIn, Depends(require_user)]

DAYS = 30
WAIT_SECONDS = 1.0
"""How long a page waits for the views to reach the log's head before it shows what they
have (so a figure just changed is usually on the next page already)."""
# Distinguishable on white and for the common colour-vision deficiencies (Okabe-Ito).
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")

# The chart canvas (SVG user units; the SVG scales to the page's width).
WIDTH, HEIGHT = 720, 200
LEFT, RIGHT, TOP, BOTTOM = 40, 10, 10, 28


def percent(part: int, whole: int) -> float | None:
    return None if whole == 0 else round(100 * part / whole, 1)


def show_percent(value: float | None) -> str:
    return "—" if value is None else f"{value:g}%"


def show_duration(seconds: float | None) -> str:
    """A duration in its largest sensible unit: `42s`, `7m`, `3.5h`, `12d`."""
    if seconds is None:
        return "—"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            value = seconds / size
            return f"{value:.1f}{unit}".replace(".0", "") if value < 10 else f"{value:.0f}{unit}"
    return f"{seconds:.0f}s" if seconds >= 1 else "<1s"


@dataclass
class Bar:
    x: float
    y: float
    width: float
    height: float
    color: str
    title: str


@dataclass
class Axis:
    ticks: list[tuple[float, str]]
    """(y, label) of each horizontal grid line."""
    labels: list[tuple[float, str]]
    """(x, label) under the bars."""


@dataclass
class SourcesChart:
    days: list[date]
    sources: list[tuple[str, str, int, int]]
    """(source, colour, leads, duplicates) over the period, most leads first."""
    per_day: dict[date, dict[str, int]]
    bars: list[Bar]
    axis: Axis
    total: int

    @property
    def busy_days(self) -> list[date]:
        return [d for d in self.days if self.per_day.get(d)]


@dataclass
class FunnelStage:
    id: UUID
    name: str
    color: str
    type: str
    here: int
    """Leads in this stage now."""
    reached: int
    """Leads in this stage or a later open/won one (lost stages are not "further")."""
    conversion: float | None
    """reached / the previous stage's reached, in %; None for the first stage."""
    bar: Bar | None = None


@dataclass
class StageTime:
    id: UUID
    name: str
    color: str
    stays: int
    median: float | None
    p90: float | None
    bars: list[Bar] = field(default_factory=list)


@dataclass
class RateChart:
    """A daily rate (duplicates, delivery success) with the period's overall figure."""

    rate: float | None
    part: int
    whole: int
    per_day: list[tuple[date, int, int, float | None]]
    """(day, part, whole, rate %) for the days with anything to count."""
    bars: list[Bar]
    axis: Axis
    extra: dict[str, int] = field(default_factory=dict)


@dataclass
class Dashboard:
    pipeline: Pipeline
    pipelines: list[Pipeline]
    since: date
    until: date
    sources: SourcesChart
    funnel: list[FunnelStage]
    stage_times: list[StageTime]
    duplicates: RateChart
    deliveries: RateChart
    behind: list[str]
    """Views that had not reached the log's head when the page was drawn."""


def _day_x(index: int, count: int) -> tuple[float, float]:
    """The left edge and width of the bar of day `index` of `count`."""
    slot = (WIDTH - LEFT - RIGHT) / count
    return LEFT + index * slot + slot * 0.15, slot * 0.7


def _day_labels(days: list[date]) -> list[tuple[float, str]]:
    labels = []
    for i, day in enumerate(days):
        if i % 5 == 0 or i == len(days) - 1:
            x, w = _day_x(i, len(days))
            labels.append((x + w / 2, day.strftime("%b %d")))
    return labels


def _scale(top: float) -> tuple[float, list[tuple[float, str]]]:
    """A round maximum for the y axis at or above `top`, and its grid lines."""
    nice = 1.0
    while nice < top:
        for step in (2, 2.5, 2):  # 1, 2, 5, 10, 20, 50, …
            nice *= step
            if nice >= top:
                break
    ticks = []
    for k in range(5):
        value = nice * k / 4
        y = HEIGHT - BOTTOM - (HEIGHT - TOP - BOTTOM) * k / 4
        ticks.append((y, f"{value:g}"))
    return nice, ticks


def sources_chart(days: list[date], rows: list[Any]) -> SourcesChart:
    per_day: dict[date, dict[str, int]] = {}
    totals: dict[str, list[int]] = {}
    for row in rows:
        per_day.setdefault(row["day"], {})[row["source"]] = row["leads"]
        counts = totals.setdefault(row["source"], [0, 0])
        counts[0] += row["leads"]
        counts[1] += row["duplicates"]
    order = sorted(totals, key=lambda s: (-totals[s][0], s))
    colors = {s: PALETTE[i % len(PALETTE)] for i, s in enumerate(order)}
    top, ticks = _scale(max((sum(v.values()) for v in per_day.values()), default=1))
    plot = HEIGHT - TOP - BOTTOM
    bars = []
    for i, day in enumerate(days):
        x, w = _day_x(i, len(days))
        base = float(HEIGHT - BOTTOM)
        for source in order:
            n = per_day.get(day, {}).get(source, 0)
            if not n:
                continue
            h = plot * n / top
            base -= h
            title = f"{day.isoformat()}: {n} from {source}"
            bars.append(Bar(x, base, w, h, colors[source], title))
    return SourcesChart(
        days=days,
        sources=[(s, colors[s], totals[s][0], totals[s][1]) for s in order],
        per_day=per_day,
        bars=bars,
        axis=Axis(ticks, _day_labels(days)),
        total=sum(t[0] for t in totals.values()),
    )


def rate_chart(
    days: list[date], counts: dict[date, tuple[int, int]], what: str
) -> tuple[float | None, list[tuple[date, int, int, float | None]], list[Bar], Axis]:
    """Bars of part/whole per day in % (0 to 100), with the overall rate."""
    _, ticks = _scale(100)
    ticks = [(y, f"{label}%") for y, label in ticks]
    plot = HEIGHT - TOP - BOTTOM
    per_day, bars = [], []
    part_sum = whole_sum = 0
    for i, day in enumerate(days):
        part, whole = counts.get(day, (0, 0))
        if not whole:
            continue
        part_sum, whole_sum = part_sum + part, whole_sum + whole
        rate = percent(part, whole)
        per_day.append((day, part, whole, rate))
        x, w = _day_x(i, len(days))
        h = plot * (rate or 0) / 100
        title = f"{day.isoformat()}: {show_percent(rate)} {what} ({part} of {whole})"
        # A zero-rate day still shows a sliver, so it reads as "measured, nothing" not "no data".
        bars.append(Bar(x, HEIGHT - BOTTOM - max(h, 1.5), w, max(h, 1.5), "", title))
    return percent(part_sum, whole_sum), per_day, bars, Axis(ticks, _day_labels(days))


def funnel_of(pipeline: Pipeline, here: dict[UUID, int]) -> list[FunnelStage]:
    stages = list(pipeline.stages)
    funnel: list[FunnelStage] = []
    for i, stage in enumerate(stages):
        if stage.type == StageType.LOST:
            reached = here.get(stage.id, 0)
        else:
            reached = sum(here.get(s.id, 0) for s in stages[i:] if s.type != StageType.LOST)
        previous = next((f for f in reversed(funnel) if f.type != StageType.LOST), None)
        conversion = (
            percent(reached, previous.reached)
            if previous is not None and stage.type != StageType.LOST
            else None
        )
        funnel.append(
            FunnelStage(
                stage.id, stage.name, stage.color, str(stage.type), here.get(stage.id, 0),
                reached, conversion,
            )
        )  # fmt: skip
    top = max((f.reached for f in funnel), default=0) or 1
    row = 34
    for i, f in enumerate(funnel):
        w = (WIDTH - 270) * f.reached / top  # room after the bar for its label
        f.bar = Bar(190, i * row + 6, max(w, 1.5), row - 12, f.color, "")
    return funnel


def quantile(buckets: list[tuple[int, int]], q: float) -> float | None:
    """The q-quantile of a duration histogram [(bucket, stays)], in seconds."""
    total = sum(n for _, n in buckets)
    if not total:
        return None
    seen = 0
    for bucket, n in sorted(buckets):
        seen += n
        if seen >= q * total:
            return bucket_seconds(bucket)
    return bucket_seconds(max(b for b, _ in buckets))


def stage_times_of(pipeline: Pipeline, rows: list[Any]) -> list[StageTime]:
    histograms: dict[UUID, list[tuple[int, int]]] = {}
    for row in rows:
        histograms.setdefault(row["stage_id"], []).append((row["bucket"], row["stays"]))
    times = []
    for stage in pipeline.stages:
        histogram = histograms.get(stage.id, [])
        times.append(
            StageTime(
                stage.id,
                stage.name,
                stage.color,
                sum(n for _, n in histogram),
                quantile(histogram, 0.5),
                quantile(histogram, 0.9),
            )
        )
    longest = max((t.p90 or 0 for t in times), default=0) or 1
    row = 40
    for i, t in enumerate(times):
        for j, value in enumerate((t.median, t.p90)):
            if value is None:
                continue
            w = (WIDTH - 330) * value / longest  # room after the bar for its label
            label = "median" if j == 0 else "p90"
            t.bars.append(Bar(190, i * row + 6 + j * 14, max(w, 1.5), 12, t.color, label))
    return times


async def load_dashboard(engine: Engine, workspace_id: UUID, wanted: str) -> Dashboard:
    pipeline, pipelines = await choose_pipeline(engine, workspace_id, wanted)
    head = await engine.log.max_position()
    behind = [
        name
        for name in ("dashboard", "leads")
        if not await engine.projector.wait_for(name, head, WAIT_SECONDS)
    ]
    until = datetime.now(UTC).date()
    since = until - timedelta(days=DAYS - 1)
    days = [since + timedelta(days=i) for i in range(DAYS)]
    stage_ids = [s.id for s in pipeline.stages]
    # Each query reads an aggregate (a row per day/source, stage/bucket, stage), so the page
    # costs the same with 100 leads or a million.
    async with engine.pool.acquire() as conn:
        daily = await conn.fetch(
            "SELECT day, source, leads, duplicates FROM dash_leads_daily "
            "WHERE workspace_id = $1 AND day >= $2",
            workspace_id,
            since,
        )
        deliveries = await conn.fetch(
            "SELECT day, succeeded, failed, disabled FROM dash_deliveries_daily "
            "WHERE workspace_id = $1 AND day >= $2",
            workspace_id,
            since,
        )
        stays = await conn.fetch(
            "SELECT stage_id, bucket, stays FROM dash_stage_time "
            "WHERE workspace_id = $1 AND stage_id = ANY($2::uuid[])",
            workspace_id,
            stage_ids,
        )
    sources = sources_chart(days, list(daily))
    dupes: dict[date, tuple[int, int]] = {}
    for row in daily:
        part, whole = dupes.get(row["day"], (0, 0))
        dupes[row["day"]] = (part + row["duplicates"], whole + row["leads"])
    rate, per_day, bars, axis = rate_chart(days, dupes, "duplicates")
    duplicates = RateChart(rate, *_sums(per_day), per_day, bars, axis)
    delivered: dict[date, tuple[int, int]] = {}
    extra = {"succeeded": 0, "failed": 0, "disabled": 0}
    for row in deliveries:
        finished = row["succeeded"] + row["failed"] + row["disabled"]
        delivered[row["day"]] = (row["succeeded"], finished)
        for key in extra:
            extra[key] += row[key]
    rate, per_day, bars, axis = rate_chart(days, delivered, "delivered")
    delivery = RateChart(rate, *_sums(per_day), per_day, bars, axis, extra)
    try:
        # The counts the leads view keeps: a handful of rows however many leads.
        here = await engine.lead_views.stage_counts(
            workspace_id, LeadFilter(pipeline_id=(pipeline.id,), stage_id=tuple(stage_ids))
        )
    except ViewNeedsRebuild:
        # Tables of an older version, being rebuilt after an upgrade: the funnel waits.
        here = {}
        behind = [*behind, "leads"] if "leads" not in behind else behind
    return Dashboard(
        pipeline=pipeline,
        pipelines=pipelines,
        since=since,
        until=until,
        sources=sources,
        funnel=funnel_of(pipeline, here),
        stage_times=stage_times_of(pipeline, list(stays)),
        duplicates=duplicates,
        deliveries=delivery,
        behind=behind,
    )


def _sums(per_day: list[tuple[date, int, int, float | None]]) -> tuple[int, int]:
    return sum(p for _, p, _, _ in per_day), sum(w for _, _, w, _ in per_day)


@router.get("/dashboard")
async def dashboard(request: Request, signed: Signed) -> Response:
    web = web_of(request)
    wanted = "".join(c for c in request.query_params.get("pipeline", "") if c.isprintable())[:36]
    try:
        shown = await load_dashboard(web.engine, signed.workspace_id, wanted)
    except LookupError as error:
        return page(
            request,
            "error.html",
            {"signed": signed, "title": "Nothing to show yet", "message": str(error)},
            status_code=404,
        )
    return page(
        request,
        "dashboard.html",
        {
            "signed": signed,
            "d": shown,
            "width": WIDTH,
            "height": HEIGHT,
            "left": LEFT,
            "right": RIGHT,
            "bottom": BOTTOM,
            "show_percent": show_percent,
            "show_duration": show_duration,
        },
    )
