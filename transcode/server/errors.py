"""Errors the server answers with: an HTTP status, a stable reason code and
a sentence for the person reading the log."""

from __future__ import annotations

from starlette.responses import JSONResponse


class Problem(Exception):
    """Answered as `{"error": reason, "detail": detail}` with `status`."""

    def __init__(self, status: int, reason: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.reason = reason
        self.detail = detail
        self.headers = headers or {}


class StoredDataError(Problem):
    """A stored object is not what the index recorded: damaged bytes
    (`integrity_error`), a missing object (`object_missing`) or a short one
    (`object_truncated`). Answered as 500 with `Cache-Control: no-store`, so
    that no cache keeps the error in place of the frame once it is repaired.
    The detail names the instance, never a path: paths go to the log."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(500, reason, detail, {"Cache-Control": "no-store"})


def error_response(status: int, reason: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The body and status every error is answered with."""
    return JSONResponse({"error": reason, "detail": detail}, status_code=status, headers=headers)
