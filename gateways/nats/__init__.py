"""The NATS JetStream edge: lead intake from `leadlog.intake.>` and the event relay.

`intake` is the durable consumer that acks a message only after its lead is committed
(dead letters for bad messages, backoff for transient failures); `relay` publishes every
committed event, in log order, to `leadlog.events.<workspace>.<event_type>`. May import
`gateways.postgres`, the composition root, `domain` and `handlers`.
"""
