-- The projection runtime: which versioned tables serve each read model, and the events
-- that stopped a consumer.

-- One row per projection: the version (and its concrete tables) readers are served from.
-- A blue/green rebuild fills the next version's tables beside these, then swaps this row.
CREATE TABLE projection_versions (
    name         text        PRIMARY KEY,
    live_version int         NOT NULL,
    live_tables  jsonb       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- An event a consumer could not process. The consumer stops at it until the cause is fixed
-- (resolution 'retried': it went through on a restart) or an operator skips it ('skipped').
CREATE TABLE consumer_errors (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    consumer     text        NOT NULL,
    position     bigint      NOT NULL,
    event_id     uuid,
    event_type   text,
    error        text        NOT NULL,
    attempts     int         NOT NULL DEFAULT 1,
    occurred_at  timestamptz NOT NULL DEFAULT now(),
    last_seen_at timestamptz NOT NULL DEFAULT now(),
    resolved_at  timestamptz,
    resolution   text CHECK (resolution IN ('retried', 'skipped')),
    skipped_by   text,
    CHECK ((resolved_at IS NULL) = (resolution IS NULL))
);

-- At most one open error per consumer and position: a repeat failure bumps `attempts`.
CREATE UNIQUE INDEX consumer_errors_open ON consumer_errors (consumer, position)
    WHERE resolved_at IS NULL;
