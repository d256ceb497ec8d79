"""STOW-RS (PS3.18 10.5): store instances through the ingest pipeline.

The body is streamed to files in the archive's upload spool
(`IngestService.upload`), then ingested exactly
as `transcode ingest` would (same outcomes, same ledger) by worker processes
kept running between requests, under the archive's ingest lock: while
another ingest holds it the answer is 503 with Retry-After. A read-only
archive, or one whose index is not the archive's (identity.py), stores
nothing: 503 with the reason. A full disk, while the body is spooled or
while it is ingested, is 507: nothing of the request is acknowledged, and
the index stays consistent (the ingest commits whole instances). The store
response lists each instance as referenced
(transcoded, kept as is, or already there) or failed with a PS3.18 failure
reason; a conflicting copy is kept aside and reported as failed (0111),
unless the server replaces archived copies (`on_conflict`): the newcomer is
then stored and referenced, and the previous copy kept aside.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from transcode.archive import ArchiveBusy, ArchiveMismatch
from transcode.security.audit import Touched
from transcode.security.guard import AUDIT_TOUCHED
from transcode.server.errors import Problem
from transcode.server.lookup import uid
from transcode.server.multipart import save_parts
from transcode.server.service import Service
from transcode.service import STORED, IngestService, ServiceBusy, identify, out_of_space, storage_status

log = logging.getLogger(__name__)

#: Failure Reason for an instance of another study than the request's (PS3.18 10.5.3).
WRONG_STUDY = 0xA900


def routes(service: Service, ingester: IngestService, max_parts: int = 10000) -> APIRouter:
    """STOW-RS routes, storing through `ingester` (its options: how
    instances are transcoded, and what becomes of a SOP Instance UID
    archived already with other content); at most `max_parts` instances
    per request."""
    router = APIRouter()

    async def store(request: Request, study: str | None) -> Response:
        if service.archive.read_only:
            raise Problem(503, "read_only", "this archive is served read-only: it stores nothing")
        if study is not None:
            study = uid(study, "Study Instance UID")
        try:
            with ingester.upload() as folder:
                files = await save_parts(request.stream(), request.headers.get("content-type"), folder, max_parts)
                status, body = await run_in_threadpool(_store, service, ingester, request, files, study)
        except Exception as exc:
            if not out_of_space(exc):
                raise
            log.error("STOW-RS: the archive's disk is full: %s", exc)
            raise Problem(507, "insufficient_storage",
                          "the archive's disk is full: nothing of this request was stored") from None
        return Response(json.dumps(body), status_code=status, media_type="application/dicom+json")

    @router.post("/studies")
    async def stow(request: Request) -> Response:
        return await store(request, None)

    @router.post("/studies/{study}")
    async def stow_study(request: Request, study: str) -> Response:
        return await store(request, study)

    return router


def _store(service: Service, ingester: IngestService, request: Request, files: list[Path],
           study: str | None) -> tuple[int, dict[str, Any]]:
    sent = {str(path): identify(path)[:3] for path in files}
    failed: list[dict[str, Any]] = []
    referenced: list[dict[str, Any]] = []
    touched: list[Touched] = []
    setattr(request.state, AUDIT_TOUCHED, touched)  # what the audit trail records of this request
    todo = []
    for path, (_, _, study_uid) in sent.items():
        if study is not None and study_uid is not None and study_uid != study:
            failed.append(_failed(sent[path], WRONG_STUDY))
            touched.append(Touched(study_uid, None, sent[path][1]))
        else:
            todo.append(path)
    if todo:
        try:
            entries = ingester.store(todo)
        except ServiceBusy:
            raise Problem(503, "busy", "another STOW-RS request is being stored", {"Retry-After": "10"}) from None
        except ArchiveBusy:
            raise Problem(503, "busy", "an ingest is running into this archive", {"Retry-After": "60"}) from None
        except ArchiveMismatch as exc:  # the index was emptied or replaced while serving: store nothing
            log.error("STOW-RS refused: %s", exc)
            raise Problem(503, "index_mismatch", "the archive's index does not describe its objects: "
                          "nothing is stored until it is rebuilt (transcode verify --archive DIR "
                          "--rebuild-index; the server log says what was found)") from None
        for entry in entries:
            sop_class, sop, study_uid = sent[entry.source_path]
            sop = sop or entry.sop_uid  # one pydicom cannot parse: as the ingest read it
            code = storage_status(entry)
            if code in STORED:
                item = {"00081150": _ui(sop_class), "00081155": _ui(sop)}
                row = service.archive.index.located(entry.sop_uid)
                if row is not None:
                    touched.append(Touched(row[0], row[1], entry.sop_uid))
                    item["00081190"] = {"vr": "UR", "Value": [service.url(request, row[0], row[1], entry.sop_uid)]}
                referenced.append(item)
            else:
                failed.append(_failed((sop_class, sop, study_uid), code))
                touched.append(Touched(study_uid, None, sop))
    body: dict[str, Any] = {}
    if study is not None:
        body["00081190"] = {"vr": "UR", "Value": [service.url(request, study)]}
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": failed}
    if referenced:
        body["00081199"] = {"vr": "SQ", "Value": referenced}
    status = 200 if not failed else 202 if referenced else 409
    return status, body


def _ui(value: str | None) -> dict[str, Any]:
    return {"vr": "UI", "Value": [value]} if value else {"vr": "UI"}


def _failed(ids: tuple[str | None, str | None, str | None], code: int) -> dict[str, Any]:
    return {"00081150": _ui(ids[0]), "00081155": _ui(ids[1]), "00081197": {"vr": "US", "Value": [code]}}
