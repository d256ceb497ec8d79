"""The rendered and thumbnail routes served first as plain Starlette routes
answer as the FastAPI routes behind them do: the image, 400 for a frame
number that is not a number, 404 for one that does not exist."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.served import Served
from transcode.archive import FolderArchive
from transcode.server import create_app


def test_plain_rendered_routes_answer_like_fastapi(served: Served) -> None:
    study, series, sop = served.find("CT")
    base = f"/dicomweb/studies/{study}/series/{series}/instances/{sop}"
    with FolderArchive(served.root) as archive:
        client = TestClient(create_app(archive))
        for path in ("/frames/1/rendered", "/frames/1/thumbnail", "/rendered", "/thumbnail"):
            response = client.get(base + path, headers={"Accept": "image/jpeg"})
            assert response.status_code == 200 and response.content[:2] == b"\xff\xd8", path
        bad = client.get(base + "/frames/one/rendered")
        assert bad.status_code == 400 and bad.json()["error"] == "bad_request"
        missing = client.get(base + "/frames/9/rendered")
        assert missing.status_code == 404 and missing.json()["error"] == "no_such_frame"
