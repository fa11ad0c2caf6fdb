"""Outbound effects: webhooks and email, delivered at least once from the outbox.

`deliveries` is the worker that sends due deliveries and records every attempt as an
event (retry timing comes from `handlers.deliveries.RetryPolicy`); `webhook_sender` is
the signed, SSRF-guarded HTTP client; `smtp_sender` sends email. May import
`gateways.postgres`, `gateways.consumers`, the composition root, `domain`, `handlers`
and `projections`.
"""
