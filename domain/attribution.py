"""The attribution parameters every channel keeps with a lead: UTM tags and click ids."""

from __future__ import annotations

ATTRIBUTION_KEYS = (
    "utm_source",
    "utm_medium",
    "utm_campaign",
    "utm_term",
    "utm_content",
    "gclid",
    "fbclid",
    "msclkid",
)
