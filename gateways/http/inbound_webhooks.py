"""Routes: filled in by the intake channel work."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
