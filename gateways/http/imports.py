"""`POST /v1/leads/import`: a CSV body streamed into leads, answered with the import report."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

import structlog
from fastapi import APIRouter, Depends, Query, Request
from starlette.requests import ClientDisconnect

from domain.csv_mapping import MappingError, Target, parse_mapping
from domain.workspaces import Permission
from gateways.http.auth import actor_of, engine_of, requires, workspace_of
from gateways.http.errors import ApiError, JsonResponse
from gateways.http.middleware import IMPORT_PATH, BodyTooLarge
from gateways.http.payloads import idempotency_key
from handlers.imports import CsvImport, ImportInterrupted, ImportRefused
from handlers.workspaces import Principal

log = structlog.get_logger("leadlog.import")

router = APIRouter(tags=["leads"])

Manager = Annotated[Principal, Depends(requires(Permission.LEADS_MANAGE))]

CSV_TYPES = frozenset({"text/csv", "application/csv", "text/plain"})


def _check_content_type(header: str | None) -> None:
    media, _, params = (header or "").partition(";")
    if media.strip().lower() not in CSV_TYPES:
        raise ApiError(415, "unsupported_media_type", "send the file as text/csv (UTF-8)")
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in {
            "utf-8",
            "utf8",
        }:
            raise ApiError(415, "unsupported_charset", "the file must be UTF-8")


def _mapping(text: str | None) -> dict[str, Target] | None:
    if not text:
        return None
    try:
        return parse_mapping(text)
    except MappingError as error:
        raise ApiError(422, "bad_mapping", str(error)) from None


@router.post(IMPORT_PATH)
async def import_leads(
    request: Request,
    caller: Manager,
    mapping: Annotated[
        str | None,
        Query(description="explicit column mapping: `CSV Column=field,Other=email`"),
    ] = None,
    import_id: Annotated[
        str | None,
        Query(
            alias="importId",
            description="name this import to retry it safely: rows already written are not "
            "written again (defaults to the Idempotency-Key header, else a new id)",
        ),
    ] = None,
    start_row: Annotated[
        int,
        Query(alias="startRow", ge=1, description="number of the body's first row (chunks)"),
    ] = 1,
) -> JsonResponse:
    """Import a CSV file (header row first), streamed: any size up to the streamed limit.

    Columns are matched to lead fields by their usual names (first/last name combine);
    other columns become custom fields. Imported leads get status `new`. The report lists
    every rejected row (the first 1000) with its reason.
    """
    workspace_id = workspace_of(caller, request)
    _check_content_type(request.headers.get("content-type"))
    try:
        job = CsvImport(
            engine_of(request).intake,
            workspace_id,
            actor=actor_of(caller),
            import_id=import_id or idempotency_key(request),
            mapping=_mapping(mapping),
            start_row=start_row,
        )
    except ImportRefused as error:
        raise ApiError(400, error.code, error.message) from None

    async def chunks() -> AsyncIterator[bytes]:
        async for chunk in request.stream():
            if chunk:
                yield chunk

    try:
        report = await job.run(chunks())
    except ImportRefused as error:
        status = 400 if error.code in {"empty_file", "invalid_utf8", "malformed_csv"} else 422
        raise ApiError(status, error.code, error.message) from None
    except ImportInterrupted as stopped:
        details = {"report": stopped.report.as_json()}
        if isinstance(stopped.cause, BodyTooLarge):
            limit = stopped.cause.max_bytes
            raise ApiError(
                413,
                "payload_too_large",
                f"the file exceeds the import limit of {limit} bytes; the rows read before "
                "the limit are in the report (send the rest with startRow)",
                {**details, "maxBytes": limit},
            ) from None
        if isinstance(stopped.cause, ClientDisconnect):
            log.warning("import client went away", **stopped.report.as_json())
            raise ApiError(400, "client_disconnected", "the upload stopped", details) from None
        log.error("import stopped", error=repr(stopped.cause), import_id=job.import_id)
        raise ApiError(
            503,
            "import_incomplete",
            "the import stopped part way; retry it with the same importId",
            details,
        ) from None
    log.info(
        "import finished",
        import_id=report.import_id,
        rows=report.rows_total,
        accepted=report.accepted,
        rejected=report.rejected,
        seconds=round(report.seconds, 3),
    )
    return JsonResponse(report.as_json())
