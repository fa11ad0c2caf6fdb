"""The engine's JetStream streams: created or brought up to date, or a clear refusal."""

from __future__ import annotations

from nats.js.api import StreamConfig, StreamInfo
from nats.js.client import JetStreamContext
from nats.js.errors import BadRequestError, ServerError

STREAM_NAME_IN_USE = 10058


class StreamRefused(Exception):
    """The NATS server will not keep a stream as configured (a setting to change, not an
    outage to wait out)."""


async def ensure_stream(js: JetStreamContext, config: StreamConfig) -> StreamInfo:
    """Create the stream, or bring an existing one's settings up to date."""
    try:
        try:
            return await js.add_stream(config)
        except BadRequestError as error:
            if error.err_code != STREAM_NAME_IN_USE:
                raise
            return await js.update_stream(config)
    except (BadRequestError, ServerError) as error:
        replicas = config.num_replicas or 1
        hint = (
            f" (LEADLOG_NATS_REPLICAS is {replicas}: a stream cannot have more copies than"
            " the cluster has servers, and a single server keeps 1)"
            if replicas > 1
            else ""
        )
        raise StreamRefused(
            f"NATS refused the stream {config.name}: {error.description}{hint}"
        ) from error
