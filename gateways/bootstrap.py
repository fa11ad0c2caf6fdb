"""The composition root: connects to Postgres and NATS and wires the store, handlers and app."""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass, field

import asyncpg
import nats
import structlog
from nats.aio.client import Client as NatsClient

from gateways.consumers.automations import AutomationViews, ChannelViews, build_messaging
from gateways.consumers.projector import Projector
from gateways.consumers.read_models import LeadViews
from gateways.metrics import MeteredIntake, Metrics
from gateways.postgres.database import open_pool
from gateways.postgres.event_store import PostgresEventStore
from gateways.postgres.log_store import PostgresLog
from gateways.settings import Settings
from gateways.webhook_keys import WebhookKeys
from handlers.intake import LeadIntake
from handlers.messaging import Messaging
from handlers.workspaces import Authenticator
from projections.automation_runs import AutomationRunsView
from projections.automations import AutomationsView
from projections.base import Projection
from projections.campaign_stats import CampaignStats
from projections.campaigns import CampaignsView
from projections.channels import ChannelsView
from projections.dashboard import DashboardStats
from projections.deliveries import DeliveriesView
from projections.lead_timers import LeadTimers
from projections.leads import LeadList
from projections.messages import MessagesView
from projections.pending_leads import PendingLeads
from projections.submissions import SubmissionsView
from projections.timeline import LeadTimeline
from projections.webhook_stats import WebhookStats
from projections.workspaces import WorkspaceDirectory

log = structlog.get_logger(__name__)

# Every read model the engine keeps; `leadlog up` runs them all.
PROJECTIONS: tuple[Projection, ...] = (
    WorkspaceDirectory(),
    PendingLeads(),
    LeadList(),
    LeadTimeline(),
    SubmissionsView(),
    LeadTimers(),
    WebhookStats(),
    DeliveriesView(),
    DashboardStats(),
    CampaignsView(),
    CampaignStats(),
    AutomationsView(),
    AutomationRunsView(),
    MessagesView(),
    ChannelsView(),
)


@dataclass
class Engine:
    """Everything a running leadlog process holds; built by `start_engine`, closed by `close`."""

    settings: Settings
    database_url: str
    nats_url: str
    pool: asyncpg.Pool
    log: PostgresLog
    store: PostgresEventStore
    intake: LeadIntake
    authenticator: Authenticator
    metrics: Metrics
    projector: Projector
    lead_views: LeadViews
    nats: NatsClient
    admin_token: str | None
    _closed: bool = field(default=False, repr=False)

    @functools.cached_property
    def messaging_parts(self) -> tuple[Messaging, ChannelViews, AutomationViews]:
        """Messaging and the directories it reads, one set per process (shared caches)."""
        return build_messaging(self.store, self.projector)

    @property
    def messaging(self) -> Messaging:
        return self.messaging_parts[0]

    @functools.cached_property
    def webhook_keys(self) -> WebhookKeys:
        """Inbound webhook keys from memory, kept current from the log (one per process)."""
        return WebhookKeys(self.store)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if "webhook_keys" in self.__dict__:
            await self.webhook_keys.close()
        await self.projector.stop()
        await self.log.close()
        if not self.nats.is_closed:
            await self.nats.drain()
        await self.pool.close()


async def connect_nats(url: str, name: str = "leadlog") -> NatsClient:
    """A NATS connection that keeps reconnecting forever once it has connected.

    `url` names one server or, separated by commas, several servers of one cluster.
    """
    return await nats.connect(
        nats_servers(url),
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        connect_timeout=5,
        allow_reconnect=True,
    )


def nats_servers(url: str) -> list[str]:
    """The servers in a NATS URL setting: `nats://a:4222,nats://b:4222` names two."""
    return [server.strip() for server in url.split(",") if server.strip()]


async def start_engine(
    settings: Settings, database_url: str, nats_url: str, admin_token: str | None
) -> Engine:
    pool = await open_pool(database_url, settings.database_schema, max_size=20)
    try:
        nc = await connect_nats(nats_url)
    except BaseException:
        await pool.close()
        raise
    event_log = PostgresLog(pool, settings.database_schema)
    store = PostgresEventStore(event_log)
    projector = Projector(pool, event_log, store, PROJECTIONS)
    await projector.register()
    metrics = Metrics()
    event_log.on_batch = metrics.observe_batch
    return Engine(
        settings=settings,
        database_url=database_url,
        nats_url=nats_url,
        pool=pool,
        log=event_log,
        store=store,
        intake=MeteredIntake(LeadIntake(store), metrics),
        metrics=metrics,
        authenticator=Authenticator(store, admin_token),
        projector=projector,
        lead_views=LeadViews(projector),
        nats=nc,
        admin_token=admin_token,
    )


async def check_postgres(pool: asyncpg.Pool, timeout: float = 2.0) -> str | None:
    """None when Postgres answers, else what went wrong."""
    try:
        await asyncio.wait_for(pool.fetchval("SELECT 1"), timeout)
    except Exception as error:
        return repr(error)
    return None


async def check_nats(nc: NatsClient, timeout: int = 2) -> str | None:
    """None when NATS answers a round trip, else what went wrong."""
    if not nc.is_connected:
        return "not connected"
    try:
        await nc.flush(timeout=timeout)
    except Exception as error:
        return repr(error)
    return None
