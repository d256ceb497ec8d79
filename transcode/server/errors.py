"""Errors the server answers with: an HTTP status, a stable reason code and
a sentence for the person reading the log."""

from __future__ import annotations


class Problem(Exception):
    """Answered as `{"error": reason, "detail": detail}` with `status`."""

    def __init__(self, status: int, reason: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.reason = reason
        self.detail = detail
        self.headers = headers or {}
