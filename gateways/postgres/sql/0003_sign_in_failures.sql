-- Failed sign-ins to the web app, counted per key (`email:<address>`, `address:<ip>`) for
-- the rate limit. Not events: anyone may fail to sign in, and that must not fill the log.
-- Shared here so that every API process sees the same counts.
CREATE TABLE sign_in_failures (
    key text NOT NULL,
    failed_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sign_in_failures_key_at ON sign_in_failures (key, failed_at);
