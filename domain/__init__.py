"""The pure domain model: aggregates, events, value objects and rules.

What a lead, a workspace, a pipeline, a lead type or a delivery *is*, and the rules they
follow (dedup keys, field mapping, trigger order, milestones), as eventsourcing aggregates
whose events are pydantic models. No I/O and no asyncio: a module here may import only
other `domain` modules, the standard library, eventsourcing, pydantic and the pure
normalisation libraries (phonenumbers, email-validator). Tested in `tests/domain` in
seconds, without servers.
"""
