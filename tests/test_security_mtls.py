"""Mutual TLS and reverse proxies, against real `transcode serve` processes
and a real receiver: certificates made here by `cryptography` (a CA, a
server, a client it signed and a client it did not), and the audit trail
read back to see who and where each request came from."""

from __future__ import annotations

import argparse
import contextlib
import datetime
import http.client
import ipaddress
import shutil
import signal
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from tests.peers import free_port
from tests.security import Issuer, auth_config
from tests.served import Served
from tests.test_security_live import first_request
from transcode.cli import main
from transcode.dimse.receiver import Receiver
from transcode.security.audit import records
from transcode.security.commands import listen_tls


@dataclass(frozen=True)
class Pki:
    """PEM files: a CA, a server certificate for 127.0.0.1 and a client
    certificate it signed, and a client certificate from another CA."""

    ca: Path
    server: tuple[Path, Path]
    client: tuple[Path, Path]
    stranger: tuple[Path, Path]


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Test Hospital"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _issue(folder: Path, stem: str, subject: str, issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
           *, server: bool = False) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A certificate for `subject` signed by `issuer` (self-signed CA when None), written as STEM.pem/STEM.key."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    signer_cert, signer_key = issuer if issuer is not None else (None, key)
    builder = (x509.CertificateBuilder().subject_name(_name(subject))
               .issuer_name(signer_cert.subject if signer_cert else _name(subject)).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), True))
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                                        False)
    if issuer is not None:
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), False)
    cert = builder.sign(signer_key, hashes.SHA256())
    (folder / f"{stem}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / f"{stem}.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                           serialization.PrivateFormat.PKCS8,
                                                           serialization.NoEncryption()))
    return cert, key


def pki(folder: Path) -> Pki:
    ca = _issue(folder, "ca", "Test CA", None)
    _issue(folder, "server", "127.0.0.1", ca, server=True)
    _issue(folder, "client", "modality-7", ca)
    _issue(folder, "stranger", "stranger", _issue(folder, "other-ca", "Other CA", None))
    pair = lambda stem: (folder / f"{stem}.pem", folder / f"{stem}.key")
    return Pki(folder / "ca.pem", pair("server"), pair("client"), pair("stranger"))


def client_context(keys: Pki, certificate: tuple[Path, Path] | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(keys.ca))
    if certificate is not None:
        context.load_cert_chain(*certificate)
    return context


@contextlib.contextmanager
def serving(served: Served, folder: Path, *options: str) -> Iterator[tuple[subprocess.Popen, int, Path, list[str]]]:
    """`transcode serve` on a copy of the served archive: (process, port, audit folder, its output once
    stopped); the trail is complete once the block ends (SIGTERM: every queued line written)."""
    archive = folder / "archive"
    shutil.copytree(served.root, archive)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "transcode.cli", "serve", "--archive", str(archive), "--port",
                               str(port), "--log-level", "info", *options],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output: list[str] = []
    try:
        yield server, port, archive / "audit", output
    finally:
        server.send_signal(signal.SIGTERM)
        output.append(server.communicate(timeout=60)[0].decode())


def trail(folder: Path) -> list[dict]:
    return [record for _, _, record in records(folder) if record is not None]


@pytest.mark.parametrize("authentication", [False, True], ids=["auth-off", "auth-on"])
def test_serve_with_mutual_tls_refuses_clients_without_a_signed_certificate(served: Served, tmp_path,
                                                                         authentication: bool) -> None:
    keys = pki(tmp_path)
    options = ["--tls-cert", str(keys.server[0]), "--tls-key", str(keys.server[1]), "--tls-client-ca", str(keys.ca)]
    issuer = Issuer()
    if authentication:
        (tmp_path / "issuer.pem").write_bytes(issuer.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        options += ["--auth-config", str(auth_config(tmp_path / "auth.toml", tmp_path / "keys.json",
                                                     key_file=tmp_path / "issuer.pem"))]
    study, series, sop = served.find("CT")
    frame = f"/dicomweb/studies/{study}/series/{series}/instances/{sop}/frames/1"
    with serving(served, tmp_path, *options) as (server, port, audit, _):
        def connect(certificate: tuple[Path, Path] | None) -> http.client.HTTPSConnection:
            return http.client.HTTPSConnection("127.0.0.1", port, context=client_context(keys, certificate), timeout=10)

        conn = first_request(server, lambda: connect(keys.client), frame)
        first = conn.getresponse()
        first.read()
        assert first.status == (401 if authentication else 200)
        conn.request("GET", frame, headers={"Accept": "*/*", "Authorization": f"Bearer {issuer.token('dr-who')}"})
        second = conn.getresponse()
        assert second.status == 200 and second.read()
        conn.close()
        for certificate in (None, keys.stranger):  # refused at the handshake: no request gets in
            refused = connect(certificate)
            with pytest.raises((ssl.SSLError, ConnectionError)):
                refused.request("GET", frame, headers={"Accept": "*/*"})
                refused.getresponse().read()
            refused.close()
    lines = trail(audit)
    subject = "cert:CN=modality-7,O=Test Hospital"
    if authentication:  # the certificate names a request without a credential; a token's subject wins
        assert [(r["who"], r["status"]) for r in lines] == [(subject, 401), ("dr-who", 200)]
    else:  # authentication off: everyone may read, and the certificate says who did
        assert [(r["who"], r["status"]) for r in lines] == [(subject, 200), (subject, 200)]


def test_listen_with_mutual_tls_accepts_only_signed_callers(tmp_path) -> None:
    keys = pki(tmp_path)
    options = argparse.Namespace(tls_cert=keys.server[0], tls_key=keys.server[1], tls_client_ca=keys.ca)
    receiver = Receiver(tmp_path / "archive", port=free_port(), workers=1, ssl_context=listen_tls(options))
    receiver.start()
    try:
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(Verification)
        ae.acse_timeout = ae.network_timeout = 10
        port = receiver.address[1]
        signed = ae.associate("127.0.0.1", port, ae_title="TRANSCODE",
                              tls_args=(client_context(keys, keys.client), "127.0.0.1"))
        assert signed.is_established
        assert signed.send_c_echo().Status == 0
        signed.release()
        for certificate in (None, keys.stranger):
            refused = ae.associate("127.0.0.1", port, ae_title="TRANSCODE",
                                   tls_args=(client_context(keys, certificate), "127.0.0.1"))
            assert not refused.is_established
    finally:
        receiver.stop()


@pytest.mark.parametrize(("proxies", "trusted"), [(None, False), ("10.0.0.0/8,192.0.2.1", False),
                                                  ("127.0.0.0/8", True)],
                         ids=["default", "other-proxies", "loopback-proxy"])
def test_forwarded_headers_count_only_from_listed_proxies(served: Served, tmp_path, proxies: str | None,
                                                          trusted: bool) -> None:
    options = ["--forwarded-allow-ips", proxies] if proxies else []
    forged = {"Accept": "application/dicom+json", "X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"}
    with serving(served, tmp_path, *options) as (server, port, audit, output):
        conn = first_request(server, lambda: http.client.HTTPConnection("127.0.0.1", port, timeout=10),
                             "/dicomweb/studies")
        conn.getresponse().read()
        conn.request("GET", "/dicomweb/studies", headers=forged)
        response = conn.getresponse()
        body = response.read().decode()
        conn.close()
    assert response.status == 200
    client = "203.0.113.9" if trusted else "127.0.0.1"
    assert [r["from"] for r in trail(audit)] == ["127.0.0.1", client]
    assert f"{client} GET /dicomweb/studies 200" in output[0]  # the access log names the same client
    assert ("https://127.0.0.1" in body) == trusted  # RetrieveURLs follow X-Forwarded-Proto only from a proxy


def test_serve_refuses_bad_proxy_and_client_ca_options(served: Served, tmp_path, capsys) -> None:
    archive = ["serve", "--archive", str(served.root)]
    assert main([*archive, "--forwarded-allow-ips", "10.0.0.0/8,proxy.example"]) == 2
    assert "'proxy.example' is not an address or a network" in capsys.readouterr().err
    assert main([*archive, "--forwarded-allow-ips", " , "]) == 2
    assert main([*archive, "--tls-client-ca", str(tmp_path / "ca.pem")]) == 2  # mutual TLS needs TLS
    assert "--tls-client-ca needs them" in capsys.readouterr().err
