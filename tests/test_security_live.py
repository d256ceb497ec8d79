"""`transcode serve` and `transcode listen` as deployed: TLS, tokens from a
local key file, the loopback rule, the key commands, and a trail that keeps
every line through a clean shutdown."""

from __future__ import annotations

import datetime
import http.client
import ipaddress
import shutil
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from tests.conftest import PYDICOM_FILES
from tests.peers import free_port
from tests.security import Issuer, auth_config
from tests.served import Served
from transcode.cli import main
from transcode.dimse.receiver import Peer, Receiver
from transcode.security.audit import AuditLog, records, verify


def certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key (PEM files)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def first_request(server: subprocess.Popen, connect: Callable[[], http.client.HTTPConnection],
                  path: str) -> http.client.HTTPConnection:
    """A connection to `serve` once it listens, with a GET of `path` sent (Accept: */*)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            conn = connect()
            conn.request("GET", path, headers={"Accept": "*/*"})
            return conn
        except OSError:
            assert time.monotonic() < deadline and server.poll() is None, "serve did not start"
            time.sleep(0.2)


def test_serve_refuses_a_public_address_without_authentication(served: Served, tmp_path, capsys) -> None:
    assert main(["serve", "--archive", str(served.root), "--host", "0.0.0.0"]) == 2
    assert "--no-auth" in capsys.readouterr().err
    (tmp_path / "bad.toml").write_text("[oidc]\nissuer = 'x'\n")
    assert main(["serve", "--archive", str(served.root), "--auth-config", str(tmp_path / "bad.toml")]) == 2
    assert "needs issuer, audience and jwks_url or key_file" in capsys.readouterr().err
    assert main(["serve", "--archive", str(served.root), "--tls-cert", str(tmp_path / "c.pem")]) == 2


def test_key_commands(tmp_path, capsys) -> None:
    keys = ["--keys-file", str(tmp_path / "keys.json")]
    assert main(["keys", "create", "--name", "router", "--scope", "read", "--scope", "write", *keys]) == 0
    text = capsys.readouterr().out.strip()
    assert text.startswith("tck_")
    key_id = text.split("_")[1]
    assert main(["keys", "list", *keys]) == 0
    assert f"{key_id}  router  read,write" in capsys.readouterr().out
    assert main(["keys", "revoke", key_id, *keys]) == 0
    assert main(["keys", "list", *keys]) == 0
    assert "revoked" in capsys.readouterr().out
    assert main(["keys", "revoke", "nosuchkey", *keys]) == 2
    assert text.split("_", 2)[2] not in (tmp_path / "keys.json").read_text()
    assert (tmp_path / "keys.json").stat().st_mode & 0o077 == 0


def test_serve_over_tls_with_tokens_and_a_trail_flushed_at_shutdown(served: Served, tmp_path) -> None:
    shutil.copytree(served.root, tmp_path / "archive")
    cert, key = certificate(tmp_path)
    issuer = Issuer()
    pem = issuer.key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    (tmp_path / "issuer.pem").write_bytes(pem)
    config = auth_config(tmp_path / "auth.toml", tmp_path / "keys.json", key_file=tmp_path / "issuer.pem")
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "transcode.cli", "serve", "--archive", str(tmp_path / "archive"),
                               "--port", str(port), "--tls-cert", str(cert), "--tls-key", str(key),
                               "--auth-config", str(config), "--log-level", "warning"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    context = ssl.create_default_context(cafile=str(cert))
    study, series, sop = served.find("CT")
    frame = f"/dicomweb/studies/{study}/series/{series}/instances/{sop}/frames/1"
    try:
        conn = first_request(server, lambda: http.client.HTTPSConnection("127.0.0.1", port, context=context,
                                                                          timeout=10), "/dicomweb/studies")
        refused = conn.getresponse()
        refused.read()
        assert refused.status == 401
        token = issuer.token(subject="radiologist-3")
        statuses = []
        for _ in range(25):
            conn.request("GET", frame, headers={"Authorization": f"Bearer {token}", "Accept": "*/*"})
            response = conn.getresponse()
            response.read()
            statuses.append(response.status)
        assert statuses == [200] * 25
        plain = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        with pytest.raises((http.client.HTTPException, ConnectionError)):  # TLS only: no plain HTTP answer
            plain.request("GET", "/dicomweb/studies")
            plain.getresponse()
        conn.close()  # before the shutdown, which waits for open connections
    finally:
        server.send_signal(signal.SIGTERM)
        output = server.communicate(timeout=60)[0].decode()
    lines = [r for _, _, r in records(tmp_path / "archive" / "audit") if r is not None]
    assert [r["who"] for r in lines].count("radiologist-3") == 25, output  # none lost at shutdown
    assert lines[0]["outcome"] == "denied" and lines[0]["status"] == 401
    assert verify(tmp_path / "archive" / "audit").problems == ()


def test_listen_over_tls_checks_the_called_ae_title(tmp_path) -> None:
    cert, key = certificate(tmp_path)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    receiver = Receiver(tmp_path / "archive", port=free_port(), workers=1, ssl_context=server_context)
    receiver.start()
    try:
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(Verification)
        ae.acse_timeout = ae.network_timeout = 10
        client_context = ssl.create_default_context(cafile=str(cert))
        port = receiver.address[1]
        secure = ae.associate("127.0.0.1", port, ae_title="TRANSCODE", tls_args=(client_context, "127.0.0.1"))
        assert secure.is_established
        assert secure.send_c_echo().Status == 0
        secure.release()
        plain = ae.associate("127.0.0.1", port, ae_title="TRANSCODE")
        assert not plain.is_established
        elsewhere = ae.associate("127.0.0.1", port, ae_title="OTHER-SCP", tls_args=(client_context, "127.0.0.1"))
        assert elsewhere.is_rejected
    finally:
        receiver.stop()


def test_listen_takes_tls_options(tmp_path, capsys) -> None:
    assert main(["listen", "--archive", str(tmp_path / "a"), "--tls-ca", str(tmp_path / "ca.pem")]) == 2
    assert "--tls-cert" in capsys.readouterr().err


def test_kill_9_loses_no_line_of_a_request_answered_before_the_last_moment(served: Served, tmp_path) -> None:
    shutil.copytree(served.root, tmp_path / "archive")
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "transcode.cli", "serve", "--archive", str(tmp_path / "archive"),
                               "--port", str(port), "--log-level", "warning"])
    study, series, sop = served.find("MR")
    frame = f"/dicomweb/studies/{study}/series/{series}/instances/{sop}/frames/2"
    try:
        conn = first_request(server, lambda: http.client.HTTPConnection("127.0.0.1", port, timeout=10), frame)
        for _ in range(30):
            response = conn.getresponse()
            assert response.status == 200
            response.read()
            conn.request("GET", frame, headers={"Accept": "*/*"})
        conn.getresponse().read()
        time.sleep(0.5)  # longer than the writer's linger
    finally:
        server.kill()
        server.wait(30)
    lines = [r for _, _, r in records(tmp_path / "archive" / "audit") if r is not None]
    assert [r["touched"][0]["instance"] for r in lines] == [sop] * 31
    assert verify(tmp_path / "archive" / "audit").problems == ()


def test_listen_writes_stores_and_rejected_callers_to_the_trail(tmp_path) -> None:
    ct = pydicom.dcmread(PYDICOM_FILES / "CT_small.dcm")
    audit = AuditLog(tmp_path / "audit", catalog=tmp_path / "archive")
    receiver = Receiver(tmp_path / "archive", port=free_port(), workers=1, accept_from=[Peer("MODALITY")],
                        audit=audit)
    receiver.start()
    try:
        for title in ("MODALITY", "INTRUDER"):
            ae = AE(ae_title=title)
            ae.add_requested_context(ct.SOPClassUID, ct.file_meta.TransferSyntaxUID)
            assoc = ae.associate("127.0.0.1", receiver.address[1], ae_title="TRANSCODE")
            if title == "MODALITY":
                assert assoc.send_c_store(ct).Status == 0
                assoc.release()
            else:
                assert assoc.is_rejected
    finally:
        receiver.stop()  # closes the trail: every line written
    stored, rejected = [r for _, _, r in records(tmp_path / "audit") if r is not None]
    assert (stored["who"], stored["action"], stored["method"], stored["status"], stored["outcome"]) == (
        "ae:MODALITY", "store", "C-STORE", 0, "success")
    assert stored["touched"] == [{"study": ct.StudyInstanceUID, "series": ct.SeriesInstanceUID,
                                  "instance": ct.SOPInstanceUID, "patient": ct.PatientID}]
    assert (rejected["who"], rejected["outcome"], rejected["from"]) == ("ae:INTRUDER", "denied", "127.0.0.1")
