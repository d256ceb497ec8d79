"""Authentication on every route, the raw frames route included: tokens
checked against a JWKS fetched over HTTP from a loopback server, API keys,
scopes; the audit trail names who was let in and who was not."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pydicom
import pytest
from fastapi.testclient import TestClient

from fixtures.generate import Spec, write
from tests.security import AUDIENCE, ISSUER, Issuer, auth_config, jwks_server, other_key_token
from tests.served import Served
from transcode.archive import FolderArchive
from transcode.security.audit import AuditLog, records
from transcode.security.auth import AuthConfig, Authenticator
from transcode.security.guard import Security
from transcode.security.keys import KeyFile
from transcode.server import create_app

BOUNDARY = "sent-by-a-test"
STOW_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'


def stow_body(payload: bytes) -> bytes:
    return (f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + payload
            + f"\r\n--{BOUNDARY}--\r\n".encode())


@pytest.fixture(scope="module")
def issuer() -> Issuer:
    return Issuer()


@pytest.fixture(scope="module")
def site(served: Served, issuer: Issuer, tmp_path_factory: pytest.TempPathFactory):
    """A copy of the served archive behind authentication (JWKS over HTTP) and an audit trail."""
    root = tmp_path_factory.mktemp("auth")
    shutil.copytree(served.root, root / "archive")
    keys = KeyFile(root / "keys.json")
    with jwks_server(issuer) as (url, fetched), FolderArchive(root / "archive") as archive:
        config = AuthConfig.load(auth_config(root / "auth.toml", keys.path, jwks_url=url), root / "unused.json")
        audit = AuditLog(root / "audit", index=archive.index.path)
        app = create_app(archive, stow_workers=1, security=Security(Authenticator(config), audit))
        with TestClient(app) as client:
            yield client, keys, root / "audit", fetched, audit


def routes(served: Served) -> list[tuple[str, str]]:
    """(method, URL) of every route: QIDO, WADO (instances, metadata, frames, bulk data), rendered,
    thumbnails, STOW."""
    study, series, sop = served.find("CT")
    s, se, i = f"/dicomweb/studies/{study}", f"/dicomweb/studies/{study}/series/{series}", \
        f"/dicomweb/studies/{study}/series/{series}/instances/{sop}"
    gets = ["/dicomweb/studies", "/dicomweb/series", "/dicomweb/instances", f"{s}/series", f"{s}/instances",
            f"{se}/instances", s, se, i, f"{s}/metadata", f"{se}/metadata", f"{i}/metadata", f"{i}/frames/1",
            f"{i}/frames/1/rendered", f"{i}/rendered", f"{se}/rendered", f"{i}/frames/1/thumbnail",
            f"{i}/thumbnail", f"{se}/thumbnail", f"{s}/thumbnail", f"{i}/bulkdata/7FE00010"]
    return [("GET", url) for url in gets] + [("POST", "/dicomweb/studies"), ("POST", s)]


def call(client: TestClient, method: str, url: str, headers: dict[str, str]) -> int:
    if method == "POST":
        return client.post(url, content=b"", headers={**headers, "Content-Type": STOW_TYPE}).status_code
    return client.get(url, headers=headers).status_code


BAD = {
    "missing": lambda issuer: None,
    "expired": lambda issuer: issuer.token(expires_in=-60),
    "wrong issuer": lambda issuer: issuer.token(issuer="https://elsewhere.test"),
    "wrong audience": lambda issuer: issuer.token(audience="another-service"),
    "bad signature": lambda issuer: other_key_token(),
    "not a token": lambda issuer: "tck_0123456789ab_guessed",
}


@pytest.mark.parametrize("case", list(BAD))
def test_every_route_answers_401_without_a_valid_credential(site, issuer, served, case) -> None:
    client, *_ = site
    token = BAD[case](issuer)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    for method, url in routes(served):
        response = client.request(method, url, headers=headers)
        assert response.status_code == 401, (case, method, url, response.text)
        challenge = response.headers["WWW-Authenticate"]
        assert challenge.startswith('Bearer realm="transcode"')
        # RFC 6750 3.1: no error code when no credential was sent, invalid_token for a bad one.
        assert ('error="invalid_token"' in challenge) == (token is not None), challenge
        assert response.json()["error"] in {"no_credentials", "token_expired", "bad_token", "bad_credentials"}


def test_scopes_decide_reads_and_stores(site, issuer, served) -> None:
    client, *_ = site
    reader, writer = issuer.token(scope="read"), issuer.token(subject="robot", scope="write")
    for method, url in routes(served):
        expected_reader = 403 if method == "POST" else None
        expected_writer = None if method == "POST" else 403
        for token, expected in ((reader, expected_reader), (writer, expected_writer)):
            status = call(client, method, url, {"Authorization": f"Bearer {token}", "Accept": "*/*"})
            if expected == 403:
                assert status == 403, (method, url)
            else:
                assert status not in (401, 403), (method, url, status)
    response = client.post("/dicomweb/studies", headers={"Authorization": f"Bearer {reader}"})
    assert 'error="insufficient_scope"' in response.headers["WWW-Authenticate"]
    assert 'scope="write"' in response.headers["WWW-Authenticate"]


def test_a_valid_token_reads_every_route_and_the_jwks_is_fetched_once(site, issuer, served) -> None:
    client, _, _, fetched, _ = site
    before = len(fetched)
    for n, (method, url) in enumerate(r for r in routes(served) if r[0] == "GET"):
        token = issuer.token(subject=f"viewer-{n}", scope="read")  # a new token each time: each is verified
        response = client.get(url, headers={"Authorization": f"Bearer {token}", "Accept": "*/*"})
        assert response.status_code == 200, (url, response.text)
    assert len(fetched) - before <= 1  # the keys are cached, not fetched per token


def test_store_with_a_write_token_and_the_trail_records_the_subject(site, issuer, tmp_path) -> None:
    client, _, folder, _, audit = site
    path = write(Spec("CT", 16, 16, 1, 16, 12, seed=77), tmp_path / "new.dcm")
    token = issuer.token(subject="modality-7", scope="write")
    response = client.post("/dicomweb/studies", content=stow_body(path.read_bytes()),
                           headers={"Authorization": f"Bearer {token}", "Content-Type": STOW_TYPE})
    assert response.status_code == 200, response.text
    lines = _written(audit, folder)
    stored = [r for r in lines if r["action"] == "store" and r["who"] == "modality-7"]
    assert stored and stored[-1]["outcome"] == "success"
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    (touched,) = stored[-1]["touched"]
    assert touched == {"study": ds.StudyInstanceUID, "series": ds.SeriesInstanceUID,
                       "instance": ds.SOPInstanceUID, "patient": ds.PatientID}


def test_api_keys_work_until_revoked(site, served) -> None:
    client, keys, folder, _, audit = site
    key, text = keys.create("viewer-box", ("read",))
    study, series, sop = served.find("CT")
    frame = f"/dicomweb/studies/{study}/series/{series}/instances/{sop}/frames/1"
    assert client.get(frame, headers={"X-API-Key": text, "Accept": "*/*"}).status_code == 200
    assert client.get(frame, headers={"Authorization": f"Bearer {text}", "Accept": "*/*"}).status_code == 200
    assert client.post("/dicomweb/studies", headers={"X-API-Key": text}).status_code == 403  # read only
    assert text not in keys.path.read_text() and key.digest in keys.path.read_text()  # stored hashed
    keys.revoke(key.id)
    for method, url in routes(served):
        response = client.request(method, url, headers={"X-API-Key": text})
        assert response.status_code == 403, (method, url)
        assert response.json()["error"] == "key_revoked"
    lines = _written(audit, folder)
    mine = [r for r in lines if r["who"] == f"key:{key.id}"]
    assert [r["outcome"] for r in mine[:2]] == ["success", "success"]
    assert mine[-1]["outcome"] == "denied" and mine[-1]["status"] == 403
    assert mine[0]["touched"] == [{"study": study, "series": series, "instance": sop,
                                   "patient": served.source(sop).PatientID}]
    assert mine[0]["route"].endswith("/instances/{sop}/frames/{frames}")


def test_local_key_file_instead_of_jwks(served, issuer, tmp_path) -> None:
    (tmp_path / "jwks.json").write_text(json.dumps(issuer.jwks))
    config = AuthConfig.load(auth_config(tmp_path / "auth.toml", tmp_path / "keys.json",
                                         key_file=tmp_path / "jwks.json"), tmp_path / "unused.json")
    assert (config.oidc.issuer, config.oidc.audience) == (ISSUER, AUDIENCE)
    with FolderArchive(served.root) as archive:
        client = TestClient(create_app(archive, security=Security(Authenticator(config))))
        good = client.get("/dicomweb/studies", headers={"Authorization": f"Bearer {issuer.token()}"})
        late = client.get("/dicomweb/studies", headers={"Authorization": f"Bearer {issuer.token(expires_in=-3)}"})
    assert good.status_code == 200
    assert late.status_code == 200  # within the configured clock skew (leeway 5 s)


def _written(audit: AuditLog, folder: Path) -> list[dict]:
    """The trail's lines once the writer has written everything recorded so far."""
    assert audit.flush()
    return [record for _, _, record in records(folder) if record is not None]


def test_cors_preflight_passes_and_credentials_only_for_listed_origins(served, issuer, tmp_path) -> None:
    (tmp_path / "jwks.json").write_text(json.dumps(issuer.jwks))
    config = AuthConfig.load(auth_config(tmp_path / "auth.toml", tmp_path / "keys.json",
                                         key_file=tmp_path / "jwks.json"), tmp_path / "unused.json")
    preflight = {"Origin": "https://viewer.example", "Access-Control-Request-Method": "GET",
                 "Access-Control-Request-Headers": "authorization"}
    with FolderArchive(served.root) as archive:
        for origins, credentials in ((["https://viewer.example"], "true"), (["*"], None)):
            client = TestClient(create_app(archive, cors_origins=origins, security=Security(Authenticator(config))))
            answer = client.options("/dicomweb/studies", headers=preflight)
            assert answer.status_code == 200
            assert answer.headers.get("access-control-allow-credentials") == credentials
            refused = client.get("/dicomweb/studies", headers={"Origin": "https://viewer.example"})
            assert refused.status_code == 401 and refused.headers["access-control-allow-origin"] in origins


def test_an_unreachable_issuer_is_503_not_a_bad_token(served, issuer, tmp_path) -> None:
    with jwks_server(issuer) as (url, _):
        pass  # stopped: its port now refuses connections
    config = AuthConfig.load(auth_config(tmp_path / "auth.toml", tmp_path / "keys.json", jwks_url=url),
                             tmp_path / "unused.json")
    with FolderArchive(served.root) as archive:
        client = TestClient(create_app(archive, security=Security(Authenticator(config))))
        answer = client.get("/dicomweb/studies", headers={"Authorization": f"Bearer {issuer.token()}"})
    assert answer.status_code == 503 and answer.json()["error"] == "issuer_unreachable"
