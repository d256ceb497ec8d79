"""Authentication on every route, the raw frames route included: tokens
checked against a JWKS fetched over HTTP from a loopback server, API keys,
scopes; the audit trail names who was let in and who was not."""

from __future__ import annotations

import base64
import json
import shutil
from datetime import datetime
from pathlib import Path
from xml.etree import ElementTree

import pydicom
import pytest
from fastapi.testclient import TestClient

from fixtures.generate import Spec, write
from tests.security import AUDIENCE, ISSUER, Issuer, auth_config, jwks_server, other_key_token
from tests.served import Served
from transcode.archive import FolderArchive
from transcode.cli import main
from transcode.security.audit import AuditLog, records
from transcode.security.auth import AuthConfig, Authenticator
from transcode.security.dicom_audit import messages, sop_classes
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
        audit = AuditLog(root / "audit", catalog=archive.root)
        app = create_app(archive, stow_workers=1, security=Security(Authenticator(config), audit))
        with TestClient(app) as client:
            yield client, keys, root / "audit", fetched, audit


def routes(served: Served) -> list[tuple[str, str]]:
    """(method, URL) of every route: QIDO, WADO (instances, metadata, frames, bulk data), rendered,
    thumbnails, IIIF (an image service, a series manifest), STOW."""
    study, series, sop = served.find("CT")
    s, se, i = f"/dicomweb/studies/{study}", f"/dicomweb/studies/{study}/series/{series}", \
        f"/dicomweb/studies/{study}/series/{series}/instances/{sop}"
    gets = ["/dicomweb/studies", "/dicomweb/series", "/dicomweb/instances", f"{s}/series", f"{s}/instances",
            f"{se}/instances", s, se, i, f"{s}/metadata", f"{se}/metadata", f"{i}/metadata", f"{i}/frames/1",
            f"{i}/frames/1/rendered", f"{i}/rendered", f"{se}/rendered", f"{i}/frames/1/thumbnail",
            f"{i}/thumbnail", f"{se}/thumbnail", f"{s}/thumbnail", f"{i}/bulkdata/7FE00010",
            f"/iiif{i.removeprefix('/dicomweb')}/frames/1/info.json",
            f"/iiif{se.removeprefix('/dicomweb')}/manifest.json",
            f"/wado?{wado_uri(study, series, sop)}&contentType=application/dicom",
            f"/dicomweb?{wado_uri(study, series, sop)}"]
    return [("GET", url) for url in gets] + [("POST", "/dicomweb/studies"), ("POST", s)]


def wado_uri(study: str, series: str, sop: str) -> str:
    return f"requestType=WADO&studyUID={study}&seriesUID={series}&objectUID={sop}"


def test_wado_uri_says_nothing_of_the_archive_before_authentication(site, served) -> None:
    """WADO-URI is rewritten before the guard: an instance that is not there
    is 401 like one that is, not a 404 that tells a stranger which UIDs exist."""
    client, *_ = site
    study, series, sop = served.find("CT")
    for objects in (sop, "1.2.3.4.5"):
        assert client.get(f"/wado?{wado_uri(study, series, objects)}").status_code == 401


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


# The DICOM audit message schema (PS3.15 A.5.1), element by element: required
# and optional attributes (with their value sets where the schema closes
# them) and the children in order as (names, least, most). The choice of
# ParticipantObjectName or ParticipantObjectQuery is optional, as A.5.3's
# tables and RFC 3881 have it (A.5.1's text omits the `?`).
CODED = ({"csd-code", "codeSystemName", "originalText"}, {"displayName"}, [])
A5 = {
    "AuditMessage": (set(), set(), [({"EventIdentification"}, 1, 1), ({"ActiveParticipant"}, 1, None),
                                    ({"AuditSourceIdentification"}, 1, 1),
                                    ({"ParticipantObjectIdentification"}, 0, None)]),
    "EventIdentification": ({"EventDateTime", "EventOutcomeIndicator"}, {"EventActionCode"},
                            [({"EventID"}, 1, 1), ({"EventTypeCode"}, 0, None),
                             ({"EventOutcomeDescription"}, 0, 1)]),
    "EventID": CODED, "EventTypeCode": CODED, "RoleIDCode": CODED, "ParticipantObjectIDTypeCode": CODED,
    "EventOutcomeDescription": (set(), set(), []),
    "ActiveParticipant": ({"UserID", "UserIsRequestor"},
                          {"AlternativeUserID", "UserName", "NetworkAccessPointID", "NetworkAccessPointTypeCode"},
                          [({"RoleIDCode"}, 0, None), ({"MediaIdentifier"}, 0, 1)]),
    "AuditSourceIdentification": ({"AuditSourceID"}, {"AuditEnterpriseSiteID"}, [({"AuditSourceTypeCode"}, 0, None)]),
    "AuditSourceTypeCode": ({"csd-code"}, {"codeSystemName", "displayName", "originalText"}, []),
    "ParticipantObjectIdentification": (
        {"ParticipantObjectID"}, {"ParticipantObjectTypeCode", "ParticipantObjectTypeCodeRole",
                                  "ParticipantObjectDataLifeCycle", "ParticipantObjectSensitivity"},
        [({"ParticipantObjectIDTypeCode"}, 1, 1), ({"ParticipantObjectName", "ParticipantObjectQuery"}, 0, 1),
         ({"ParticipantObjectDetail"}, 0, None), ({"ParticipantObjectDescription"}, 0, None)]),
    "ParticipantObjectQuery": (set(), set(), []),
    "ParticipantObjectDetail": ({"type", "value"}, set(), []),
    "ParticipantObjectDescription": (set(), set(), [({"MPPS"}, 0, None), ({"Accession"}, 0, None),
                                                    ({"SOPClass"}, 0, None)]),
    "SOPClass": ({"NumberOfInstances"}, {"UID"}, [({"Instance"}, 0, None)]),
    "Instance": ({"UID"}, set(), []),
}
CLOSED = {"EventActionCode": {"C", "R", "U", "D", "E"}, "EventOutcomeIndicator": {"0", "4", "8", "12"},
          "UserIsRequestor": {"true", "false"}, "NetworkAccessPointTypeCode": {"1", "2", "3", "4", "5"},
          "ParticipantObjectTypeCode": {"1", "2", "3", "4"},
          "ParticipantObjectTypeCodeRole": {str(n) for n in range(1, 27)}}


def check_a5(element) -> None:
    """Raise AssertionError where `element` breaks the A.5.1 schema above."""
    required, optional, children = A5[element.tag]
    assert required <= set(element.attrib) <= required | optional, (element.tag, element.attrib)
    for name, value in element.attrib.items():
        assert value == value.strip() and value, (element.tag, name)
        assert name not in CLOSED or value in CLOSED[name], (element.tag, name, value)
    if element.tag == "EventIdentification":
        assert datetime.fromisoformat(element.get("EventDateTime")).utcoffset() is not None
    if element.tag == "ParticipantObjectQuery":
        base64.b64decode(element.text, validate=True)
    if element.tag == "ParticipantObjectDetail":
        base64.b64decode(element.get("value"), validate=True)
    if element.tag == "SOPClass":
        assert int(element.get("NumberOfInstances")) == len(element.findall("Instance"))
    kids = list(element)
    at = 0
    for names, least, most in children:
        count = 0
        while at < len(kids) and kids[at].tag in names and (most is None or count < most):
            at, count = at + 1, count + 1
        assert count >= least, (element.tag, names)
    assert at == len(kids), (element.tag, [k.tag for k in kids[at:]])
    for kid in kids:
        check_a5(kid)


def test_dicom_audit_messages_of_search_retrieve_store_and_a_refusal(site, issuer, served, tmp_path, capsys) -> None:
    client, _, folder, _, audit = site
    study, series, sop = served.find("CT")
    reader, writer = issuer.token(subject="reader-9", scope="read"), issuer.token(subject="writer-9", scope="write")
    path = write(Spec("CT", 16, 16, 1, 16, 12, seed=91), tmp_path / "sent.dcm")
    sent = pydicom.dcmread(path, stop_before_pixels=True)
    calls = [client.get("/dicomweb/studies", params={"PatientID": served.source(sop).PatientID},
                        headers={"Authorization": f"Bearer {reader}"}),
             client.get(f"/dicomweb/studies/{study}/series/{series}/instances/{sop}/frames/1",
                        headers={"Authorization": f"Bearer {reader}", "Accept": "*/*"}),
             client.post("/dicomweb/studies", content=stow_body(path.read_bytes()),
                         headers={"Authorization": f"Bearer {writer}", "Content-Type": STOW_TYPE}),
             client.post("/dicomweb/studies", content=b"", headers={"Authorization": f"Bearer {reader}",
                                                                    "Content-Type": STOW_TYPE})]
    assert [r.status_code for r in calls] == [200, 200, 200, 403]
    count = len(_written(audit, folder))
    capsys.readouterr()
    assert main(["audit", "export", "--format", "dicom", "--audit-dir", str(folder)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == count
    for line in out:
        check_a5(ElementTree.fromstring(line))
    search, retrieve, store, denied = (ElementTree.fromstring(line) for line in out[-4:])

    def event(message) -> tuple:
        e = message.find("EventIdentification")
        return e.find("EventID").get("csd-code"), e.get("EventActionCode"), e.get("EventOutcomeIndicator")

    def objects(message) -> dict[str, str]:
        return {o.find("ParticipantObjectIDTypeCode").get("csd-code"): o.get("ParticipantObjectID")
                for o in message.iter("ParticipantObjectIdentification")}

    def caller(message) -> tuple:
        p = message.find("ActiveParticipant")
        role = p.find("RoleIDCode")
        return p.get("UserID"), p.get("UserIsRequestor"), role.get("csd-code") if role is not None else None

    assert event(search) == ("110112", "E", "0") and caller(search) == ("reader-9", "true", "110153")
    query = search.find("ParticipantObjectIdentification/ParticipantObjectQuery")
    assert base64.b64decode(query.text).decode() == f"PatientID={served.source(sop).PatientID}"
    assert event(retrieve) == ("110104", "R", "0") and caller(retrieve) == ("reader-9", "true", "110152")
    assert objects(retrieve) == {"110180": study, "2": served.source(sop).PatientID}
    assert [i.get("UID") for i in retrieve.iter("Instance")] == [sop]
    assert event(store) == ("110104", "C", "0") and caller(store) == ("writer-9", "true", "110153")
    assert objects(store) == {"110180": sent.StudyInstanceUID, "2": sent.PatientID}
    assert [i.get("UID") for i in store.iter("Instance")] == [sent.SOPInstanceUID]
    assert event(denied) == ("110113", "E", "4") and caller(denied) == ("reader-9", "true", None)
    assert denied.find("EventIdentification/EventTypeCode").get("csd-code") == "110132"
    assert objects(denied)["12"].endswith("/studies")
    with FolderArchive(folder.parent / "archive", read_only=True) as archive:
        lookup = sop_classes(archive.index)
        lines = [r for _, _, r in records(folder) if r is not None][-3:-2]
        (stored,) = [ElementTree.fromstring(m) for m in messages(lines, lookup)]
    assert stored.find(".//SOPClass").get("UID") == sent.SOPClassUID
    # The command finds them through --catalog (a folder here; a postgresql:// URL the same way).
    assert main(["audit", "export", "--format", "dicom", "--audit-dir", str(folder),
                 "--catalog", str(folder.parent / "archive")]) == 0
    exported = ElementTree.fromstring(capsys.readouterr().out.splitlines()[count - 2])
    assert exported.find(".//SOPClass").get("UID") == sent.SOPClassUID


def test_the_viewer_page_and_files_are_public_and_nothing_else(site) -> None:
    client, *_ = site
    for url in ("/", "/viewer/viewer.css", "/viewer/index.html"):  # the sign-in form must load
        assert client.get(url).status_code == 200, url
    for url in ("/viewerx", "/dicomweb/studies", "/iiif/x/info.json", "/zarr/x"):
        assert client.get(url).status_code == 401, url
    assert client.post("/", content=b"").status_code == 401
