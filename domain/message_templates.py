"""Message templates: checked when saved, filled from the lead (and its user) when sent."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from domain.automations import Template
from domain.channels import ChannelType
from domain.lead_context import MAX_PATH, is_blank, placeholders, resolve

KNOWN_ROOTS = ("lead", "user", "key")

_PLACEHOLDER = re.compile(r"\{\{([^{}]*)\}\}")
_BRACES = re.compile(r"\{\{|\}\}")
_PATH_PART = re.compile(r"([^\[\]]+)((?:\[\s*\d+\s*\])*)")


def _texts(template: Template, channel: ChannelType) -> list[tuple[str, str]]:
    """(where, text) of every text of the template that is sent on `channel`."""
    if channel is ChannelType.WHATSAPP:
        return [(f"parameters[{i}]", p) for i, p in enumerate(template.parameters)]
    texts = [("body", template.body or "")]
    if channel is ChannelType.EMAIL:
        texts.insert(0, ("subject", template.subject or ""))
    return texts


def _path_problem(path: str) -> str | None:
    if len(path) > MAX_PATH:
        return "is too long"
    parts = path.split(".")
    names: list[str] = []
    for part in parts:
        match = _PATH_PART.fullmatch(part.strip())
        if match is None or not match[1].strip():
            return "is not a path (`lead.name`, `lead.customFields.city`, `user.email`)"
        names.append(match[1].strip())
    root = names[0]
    if root not in KNOWN_ROOTS:
        known = ", ".join(f"`{r}`" for r in KNOWN_ROOTS)
        return f"starts with `{root}`, not one of {known} (a lead field is `lead.{path}`)"
    if len(names) < 2:
        return f"names no field of `{root}` (e.g. `{root}.name`)"
    return None


def text_problems(text: str, where: str) -> list[str]:
    """What is wrong with the placeholders of one text: empty, unbalanced or unknown ones."""
    problems: list[str] = []
    for match in _PLACEHOLDER.finditer(text):
        path = match[1].strip()
        if not path:
            problems.append(f"{where}: `{match[0]}` is an empty placeholder")
            continue
        problem = _path_problem(path)
        if problem:
            problems.append(f"{where}: placeholder `{{{{{path}}}}}` {problem}")
    spans = [match.span() for match in _PLACEHOLDER.finditer(text)]
    for brace in _BRACES.finditer(text):
        if not any(start <= brace.start() < end for start, end in spans):
            excerpt = text[max(brace.start() - 20, 0) : brace.end() + 20].strip()
            example = "{{lead.name}}"
            problems.append(
                f"{where}: unbalanced braces near `{excerpt}` (a placeholder is `{example}`)"
            )
            break
    return problems


def template_problems(template: Template, channel: ChannelType) -> list[str]:
    """Why `template` cannot be saved for `channel` (none: it can): it does not fit the
    channel, or a placeholder is empty, unbalanced, or does not start with a known root."""
    problems: list[str] = []
    misfit = template.fits(channel)
    if misfit:
        problems.append(misfit)
    for where, text in _texts(template, channel):
        problems.extend(text_problems(text, where))
    if channel is ChannelType.WHATSAPP:
        # The name and language pick an approved template at Meta: they are not filled in.
        for where, text in (("name", template.name or ""), ("language", template.language or "")):
            if "{{" in text or "}}" in text:
                problems.append(f"{where}: a WhatsApp template's {where} cannot hold placeholders")
    return problems


def as_text(value: Any) -> str:
    """A value as it reads in a message: lists joined by commas, booleans as yes/no, whole
    floats without `.0`, nothing as nothing."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, list | tuple):
        return ", ".join(as_text(item) for item in value if not is_blank(item))
    return str(value)


def fill(text: str, context: Mapping[str, Any]) -> tuple[str, list[str]]:
    """`text` with each placeholder replaced by its value as text, and the paths of the ones
    that had no value (blank: None, empty text, an empty list)."""
    missing = [p for p in placeholders(text) if p and is_blank(resolve(context, p))]
    filled = _PLACEHOLDER.sub(lambda match: as_text(resolve(context, match[1].strip())), text)
    return filled, missing


def render_message(
    template: Template, channel: ChannelType, context: Mapping[str, Any]
) -> tuple[dict[str, Any], list[str]]:
    """The content to send on `channel` and the placeholders that had no value.

    `context` is `lead_context(lead, extra={"user": {...}})`. SMS: `{"body"}`; email:
    `{"subject", "body"}`; WhatsApp: `{"template": {"name", "language", "parameters"}}`.
    A missing value is reported, not raised: the caller fails the step. A template that
    does not fit the channel (which saving refuses) is a ValueError.
    """
    misfit = template.fits(channel)
    if misfit:
        raise ValueError(misfit)
    missing: list[str] = []

    def filled(text: str) -> str:
        value, absent = fill(text, context)
        missing.extend(path for path in absent if path not in missing)
        return value

    if channel is ChannelType.WHATSAPP:
        content: dict[str, Any] = {
            "template": {
                "name": template.name,
                "language": template.language,
                "parameters": [filled(p) for p in template.parameters],
            }
        }
    elif channel is ChannelType.EMAIL:
        content = {"subject": filled(template.subject or ""), "body": filled(template.body or "")}
    else:
        content = {"body": filled(template.body or "")}
    return content, missing
