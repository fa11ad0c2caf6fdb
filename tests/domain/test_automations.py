"""Automations: delays, steps and their templates, runs and the safety lock."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from domain.automations import (
    NAMED_DELAYS,
    RUN_NAMESPACE,
    AutomationConfig,
    AutomationRun,
    RunStatus,
    SafetyLock,
    Step,
    Template,
    lock_id,
    parse_delay,
    run_id,
)

SMS = {"body": "Hi {{lead.name}}"}
EMAIL = {"subject": "Welcome", "body": "Hi {{lead.name}}"}
WHATSAPP = {"name": "welcome", "language": "en_US", "parameters": ["{{lead.name}}"]}


@pytest.mark.parametrize(
    ("given", "seconds"),
    [
        ("immediate", 0),
        ("Immediately", 0),
        ("5 min", 300),
        ("15 min", 900),
        ("30 min", 1800),
        ("1 h", 3600),
        ("2 h", 7200),
        ("  24 H ", 86_400),
        ("90s", 90),
        ("90 sec", 90),
        ("45m", 2700),
        ("45 min", 2700),
        ("3h", 10_800),
        ("2d", 172_800),
        ("1.5h", 5400),
        ("600", 600),
        (0, 0),
        (12.5, 12.5),
    ],
)
def test_delays_read_the_seed_names_durations_and_seconds(
    given: str | float, seconds: float
) -> None:
    assert parse_delay(given) == seconds


def test_every_seed_delay_is_named() -> None:
    assert {NAMED_DELAYS[n] for n in ("5 min", "15 min", "30 min", "1 h", "2 h", "24 h")} == {
        300,
        900,
        1800,
        3600,
        7200,
        86_400,
    }


@pytest.mark.parametrize("bad", ["soon", "", "-5", "5 weeks", "5m30s", "1e3", "h", "5 minutes"])
def test_a_bad_delay_is_refused_saying_what_a_delay_is(bad: str) -> None:
    with pytest.raises(ValueError, match="not a delay"):
        parse_delay(bad)


def test_a_negative_delay_is_refused() -> None:
    with pytest.raises(ValueError, match="not negative"):
        parse_delay(-1)


def step(**fields: Any) -> Step:
    return Step.model_validate({"channel": "sms", "template": SMS, **fields})


def test_a_step_takes_its_delay_by_name_or_in_seconds_but_not_both() -> None:
    assert step(delay="5 min").delay_seconds == 300
    assert step(delaySeconds=42).delay_seconds == 42
    assert step().delay_seconds == 0
    with pytest.raises(ValidationError, match="not both"):
        step(delay="5 min", delaySeconds=300)
    with pytest.raises(ValidationError, match="not a delay"):
        step(delay="whenever")
    # A delay beyond a year is refused by the bound on delaySeconds.
    with pytest.raises(ValidationError, match=r"delaySeconds|delay_seconds"):
        step(delay="400d")


@pytest.mark.parametrize(
    ("channel", "template", "problem"),
    [
        ("sms", {"subject": "no body"}, "needs `body`"),
        ("email", {"body": "no subject"}, "needs `subject`"),
        ("whatsapp", {"body": "text is not a template"}, "`name` and `language`"),
        ("whatsapp", {"name": "welcome"}, "`name` and `language`"),
    ],
)
def test_a_step_template_must_fit_its_channel(
    channel: str, template: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ValidationError, match=problem):
        Step.model_validate({"channel": channel, "template": template})


def test_a_fallback_needs_its_own_template_when_the_steps_does_not_fit() -> None:
    # WhatsApp's template has no body an SMS could carry.
    with pytest.raises(ValidationError, match="fallbackTemplate"):
        Step.model_validate({"channel": "whatsapp", "template": WHATSAPP, "fallbackChannel": "sms"})
    fell = Step.model_validate(
        {
            "channel": "whatsapp",
            "template": WHATSAPP,
            "fallbackChannel": "sms",
            "fallbackTemplate": SMS,
        }
    )
    assert fell.template_for(fallback=True) == Template.model_validate(SMS)
    assert fell.template_for(fallback=False) == Template.model_validate(WHATSAPP)
    # An SMS body falling back to email lacks a subject ...
    with pytest.raises(ValidationError, match="subject"):
        step(fallbackChannel="email")
    # ... while an email template fits an SMS fallback as it is (its body is sent).
    plain = Step.model_validate({"channel": "email", "template": EMAIL, "fallbackChannel": "sms"})
    assert plain.template_for(fallback=True) == plain.template
    # A fallback template that does not fit its channel is refused too.
    with pytest.raises(ValidationError, match="fallbackTemplate"):
        step(fallbackChannel="whatsapp", fallbackTemplate=SMS)


def test_the_configuration_defaults_and_bounds() -> None:
    config = AutomationConfig.model_validate(
        {"name": "  Welcome  ", "steps": [{"channel": "sms", "template": SMS}]}
    )
    assert config.name == "Welcome" and config.safety_lock_minutes == 5 and config.active
    assert config.failure_window_seconds == 3600 and config.webhook_source_id is None
    with pytest.raises(ValidationError, match="steps"):
        AutomationConfig.model_validate({"name": "Empty", "steps": []})
    with pytest.raises(ValidationError, match="steps"):
        AutomationConfig.model_validate(
            {"name": "Long", "steps": [{"channel": "sms", "template": SMS}] * 21}
        )
    with pytest.raises(ValidationError, match="colour"):
        AutomationConfig.model_validate(
            {"name": "X", "colour": "red", "steps": [{"channel": "sms", "template": SMS}]}
        )


def config() -> AutomationConfig:
    return AutomationConfig.model_validate(
        {
            "name": "Welcome",
            "steps": [
                {
                    "channel": "whatsapp",
                    "template": WHATSAPP,
                    "fallbackChannel": "sms",
                    "fallbackTemplate": SMS,
                },
                {"channel": "email", "template": EMAIL, "delay": "24 h"},
            ],
        }
    )


def new_run(automation: uuid.UUID, lead: uuid.UUID, cause: str) -> AutomationRun:
    return AutomationRun(
        workspace_id=uuid.uuid4(),
        automation_id=automation,
        lead_id=lead,
        cause=cause,
        config=config(),
        contact={"phone": "+14155552671", "email": "ann@example.com"},
    )


def test_a_run_id_is_one_per_automation_lead_and_cause() -> None:
    automation, lead = uuid.uuid4(), uuid.uuid4()
    first = new_run(automation, lead, "lead.received:1")
    again = new_run(automation, lead, "lead.received:1")
    assert first.id == again.id
    assert first.id == run_id(automation, lead, uuid.uuid5(RUN_NAMESPACE, "lead.received:1"))
    assert new_run(automation, lead, "lead.received:2").id != first.id
    assert new_run(automation, uuid.uuid4(), "lead.received:1").id != first.id
    assert new_run(uuid.uuid4(), lead, "lead.received:1").id != first.id


def test_a_run_moves_through_its_steps_fails_and_is_retried() -> None:
    run = new_run(uuid.uuid4(), uuid.uuid4(), "cause")
    assert (run.status, run.step, run.due_at) == (RunStatus.RUNNING, None, None)
    due = datetime.now(UTC) + timedelta(minutes=5)
    run.schedule(0, due)
    assert (run.step, run.due_at) == (0, due)
    whatsapp = uuid.uuid4()
    run.start_step(0, "whatsapp", uuid.uuid4(), whatsapp, fallback=False)
    assert run.due_at is None and run.messages[whatsapp] == (0, False)
    run.step_failed(0, "whatsapp", "131026 undeliverable", whatsapp, fallback=False)
    run.fall_back(0, "whatsapp", "sms")
    sms = uuid.uuid4()
    run.start_step(0, "sms", uuid.uuid4(), sms, fallback=True)
    assert 0 in run.fallback_used
    run.step_sent(0, "sms", sms, "SM123", fallback=True)
    assert 0 in run.sent_at
    run.schedule(1, due)
    run.stop("lead converted")
    assert (run.status, run.due_at) == (RunStatus.STOPPED, None)
    with pytest.raises(ValueError, match="no failed step"):
        run.request_retry("user:mia")

    failing = new_run(uuid.uuid4(), uuid.uuid4(), "cause")
    failing.start_step(0, "whatsapp", uuid.uuid4(), uuid.uuid4(), fallback=False)
    failing.start_step(0, "sms", uuid.uuid4(), uuid.uuid4(), fallback=True)
    failing.fail(0, "no phone")
    assert (failing.status, failing.failed_step) == (RunStatus.FAILED, 0)
    assert failing.request_retry("user:mia") == 0
    # The retry starts the step over: its fallback may be used again.
    assert (failing.status, failing.failed_step) == (RunStatus.RUNNING, None)
    assert 0 not in failing.fallback_used
    failing.complete()
    assert failing.status is RunStatus.COMPLETED
    kinds = [type(e).__name__ for e in failing.collect_events()]
    assert kinds == [
        "Triggered",
        "StepStarted",
        "StepStarted",
        "Failed",
        "RetryRequested",
        "Completed",
    ]


def test_a_skipped_run_says_why() -> None:
    run = new_run(uuid.uuid4(), uuid.uuid4(), "cause")
    run.skip("safety_lock", "triggered 2 minutes ago for +14155552671")
    assert run.status is RunStatus.SKIPPED
    skipped = run.collect_events()[-1]
    assert isinstance(skipped, AutomationRun.Skipped)
    assert (skipped.kind, skipped.reason) == ("automation_skipped", "safety_lock")
    assert skipped.lead_id == run.lead_id and skipped.automation_id == run.automation_id


def test_the_safety_lock_is_one_per_automation_and_contact_and_holds_its_window() -> None:
    automation = uuid.uuid4()
    lock = SafetyLock(automation_id=automation, contact="Ann@Example.com")
    assert (
        lock.id
        == lock_id(automation, "ann@example.com")
        == SafetyLock.create_id(automation, "ANN@EXAMPLE.COM")
    )
    assert lock.id != lock_id(uuid.uuid4(), "ann@example.com")
    assert lock.id != lock_id(automation, "bob@example.com")
    now = datetime.now(UTC)
    assert not lock.held(now, 5)  # never taken
    lock.take(uuid.uuid4())
    assert lock.taken_at is not None
    taken = lock.taken_at
    assert lock.held(taken + timedelta(minutes=4, seconds=59), 5)
    assert not lock.held(taken + timedelta(minutes=5), 5)
    assert not lock.held(taken, 0)  # a window of 0 never holds
    # Taken again later, the window starts again from then.
    lock.trigger_event(
        SafetyLock.Taken, run_id=uuid.uuid4(), timestamp=taken + timedelta(minutes=10)
    )
    assert lock.held(taken + timedelta(minutes=12), 5)
