"""The security side of the command line: `transcode keys`, `transcode
audit`, and the options `serve` and `listen` take for authentication,
TLS and the audit trail (kept here so that cli.py stays a table of
commands)."""

from __future__ import annotations

import argparse
import ipaddress
import json
import socket
import ssl
import sys
from pathlib import Path
from typing import Any

import jwt

from transcode.archive.objects import ArchiveAddress
from transcode.catalog import CatalogError, open_catalog
from transcode.security import AUDIT_FOLDER, KEYS_FILE
from transcode.security.audit import AuditLog, records, verify
from transcode.security.auth import AuthConfig, Authenticator
from transcode.security.dicom_audit import messages, sop_classes
from transcode.security.export import bundle
from transcode.security.keys import SCOPES, KeyFile, UnknownKey

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class Refused(Exception):
    """Options that must not be run as given (the message says why)."""


def add_commands(sub: Any) -> None:
    """`keys create|list|revoke` and `audit verify|export` on the subcommand table `sub`."""
    keys = sub.add_parser("keys", help="API keys for machines: create (shown once), list, revoke")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="a new key, printed once (only its hash is stored)")
    create.add_argument("--name", required=True, help="who or what uses it (listed, not secret)")
    create.add_argument("--scope", action="append", choices=SCOPES, required=True,
                        help="read, write or admin (repeat for several)")
    listing = keys_sub.add_parser("list", help="the keys, revoked ones included (never the secrets)")
    revoke = keys_sub.add_parser("revoke", help="refuse a key from the next request on")
    revoke.add_argument("key_id")
    for parser in (create, listing, revoke):
        _key_file_options(parser)
    keys.set_defaults(func=cmd_keys)

    audit = sub.add_parser("audit", help="check the audit trail's hash chain, or export it")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    check = audit_sub.add_parser("verify", help="check every line and the chain; exit 1 on any break")
    export = audit_sub.add_parser("export", help="the trail as FHIR R4 AuditEvent resources (a Bundle), or as "
                                                 "DICOM audit messages (PS3.15 A.5 XML, one per line)")
    export.add_argument("--format", choices=["fhir", "dicom"], default="fhir")
    export.add_argument("--catalog", help="where DICOM messages find each instance's SOP Class UID: a folder "
                                          "holding index.sqlite or a postgresql:// URL (default: --archive's)")
    for parser in (check, export):
        where = parser.add_mutually_exclusive_group(required=True)
        where.add_argument("--archive", type=Path, help=f"the archive whose trail ({AUDIT_FOLDER}/) to read")
        where.add_argument("--audit-dir", type=Path, help="the trail's folder")
    audit.set_defaults(func=cmd_audit)


def _key_file_options(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--archive", type=Path, help=f"the archive whose key file ({KEYS_FILE}) to use")
    where.add_argument("--keys-file", type=Path, help="a key file elsewhere (as [api_keys] file in --auth-config)")


def cmd_keys(args: argparse.Namespace) -> int:
    keys = KeyFile(args.keys_file or args.archive / KEYS_FILE)
    if args.keys_command == "create":
        key, text = keys.create(args.name, tuple(dict.fromkeys(args.scope)))
        print(text)
        print(f"key {key.id} ({key.name}, {' '.join(key.scopes)}): shown once, store it now", file=sys.stderr)
    elif args.keys_command == "list":
        for key in keys.all():
            state = f"revoked {key.revoked}" if key.revoked else "active"
            print(f"{key.id}  {key.name}  {','.join(key.scopes)}  created {key.created}  {state}")
    else:
        try:
            key = keys.revoke(args.key_id)
        except UnknownKey as exc:
            print(f"transcode: {exc}", file=sys.stderr)
            return EXIT_USAGE
        print(f"key {key.id} ({key.name}) revoked {key.revoked}")
    return EXIT_OK


def cmd_audit(args: argparse.Namespace) -> int:
    folder = args.audit_dir or args.archive / AUDIT_FOLDER
    if not folder.is_dir():
        print(f"transcode: no audit trail at {folder}", file=sys.stderr)
        return EXIT_USAGE
    if args.audit_command == "export":
        lines = (record for _, _, record in records(folder) if record is not None)
        if args.format == "dicom":
            where = args.catalog or args.archive
            if where is None:  # the SOP Class UIDs are left out
                print("\n".join(messages(lines)))
                return EXIT_OK
            try:
                with open_catalog(where, read_only=True) as catalog:
                    for message in messages(lines, sop_classes(catalog)):
                        print(message)
            except (CatalogError, OSError) as exc:
                print(f"transcode: the catalog for SOP Class UIDs: {exc}", file=sys.stderr)
                return EXIT_USAGE
            return EXIT_OK
        json.dump(bundle(lines), sys.stdout, indent=1)
        print()
        return EXIT_OK
    result = verify(folder)
    for problem in result.problems:
        print(f"{problem.file}:{problem.line}: {problem.reason}")
    print(f"{result.lines} lines, {len(result.problems)} problems; head {result.head}")
    return EXIT_FAILED if result.problems else EXIT_OK


def add_serve_options(serve: argparse.ArgumentParser) -> None:
    """Authentication, TLS and audit options of `serve`."""
    serve.add_argument("--auth-config", type=Path, default=None,
                       help="TOML file: [oidc] issuer, audience, jwks_url or key_file, ...; [api_keys] file. "
                            "Turns authentication on (API keys from the archive's key file by default)")
    serve.add_argument("--no-auth", action="store_true",
                       help="serve without authentication on an address other than loopback (a warning is printed)")
    _tls_options(serve)
    serve.add_argument("--forwarded-allow-ips", default=None, metavar="CIDR,...",
                       help="reverse proxies (addresses or networks, comma separated; '*' for any) whose "
                            "X-Forwarded-For/-Proto name the client; by default the connecting address is the client "
                            "(for the audit trail, the per-client limits and the access log)")
    _audit_options(serve)
    serve.add_argument("--audit-rotate-mb", type=float, default=64.0,
                       help="start a new trail file past this size (default: %(default)s)")
    serve.add_argument("--audit-fsync", action="store_true",
                       help="fsync each batch of trail lines (survives a power cut; costs a disk flush)")


def add_listen_options(listen: argparse.ArgumentParser) -> None:
    """TLS and audit options of `listen`."""
    _tls_options(listen)
    _audit_options(listen)


def _audit_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--audit-dir", type=Path, default=None,
                        help=f"audit trail folder (default: ARCHIVE/{AUDIT_FOLDER})")
    parser.add_argument("--no-audit", action="store_true", help="keep no audit trail")


def _tls_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tls-cert", type=Path, default=None, help="PEM certificate (chain): serve TLS only")
    parser.add_argument("--tls-key", type=Path, default=None, help="PEM private key of --tls-cert")
    parser.add_argument("--tls-client-ca", "--tls-ca", dest="tls_client_ca", type=Path, default=None,
                        help="CA bundle (PEM): mutual TLS, every client must present a certificate it signed "
                             "(refused at the handshake otherwise)")


def serve_security(args: argparse.Namespace, archive: Path, read_only: bool) -> dict[str, Any]:
    """The security part of the options each `serve` worker gets; Refused
    for unsafe or inconsistent options (checked before anything starts)."""
    _check_tls(args)
    if args.forwarded_allow_ips is not None:
        _proxies(args.forwarded_allow_ips)
    if args.auth_config is None and not _loopback(args.host):
        if not args.no_auth:
            raise Refused(f"{args.host} is not a loopback address: serving patient data there without "
                          "authentication needs --auth-config (or, knowingly, --no-auth)")
        print(f"WARNING: serving {archive} on {args.host} WITHOUT AUTHENTICATION: anyone who can reach it "
              "can read and store studies", file=sys.stderr, flush=True)
    keys = archive / KEYS_FILE
    if args.auth_config is not None:
        try:  # a bad file is refused now, not by every worker
            Authenticator(AuthConfig.load(args.auth_config, keys))
        except (ValueError, OSError, jwt.PyJWTError) as exc:
            raise Refused(f"--auth-config: {exc}") from None
    audit = None
    if not args.no_audit:
        audit = args.audit_dir or archive / AUDIT_FOLDER
        if read_only and args.audit_dir is None:
            raise Refused(f"{archive} is read-only: give --audit-dir for the audit trail (or --no-audit)")
    return {"auth_config": str(args.auth_config.resolve()) if args.auth_config else None,
            "api_keys": str(keys.resolve()), "audit": str(Path(audit).resolve()) if audit else None,
            "audit_max_bytes": int(args.audit_rotate_mb * (1 << 20)), "audit_fsync": args.audit_fsync}


def uvicorn_options(args: argparse.Namespace) -> dict[str, Any]:
    """uvicorn's TLS and proxy options for `serve` (checked by `serve_security`).
    Proxy headers are read only from `--forwarded-allow-ips`: uvicorn's own
    default trusts loopback, which would let any local process forge the
    client address of the trail and the limits."""
    return {"ssl_certfile": args.tls_cert, "ssl_keyfile": args.tls_key,
            "ssl_ca_certs": args.tls_client_ca, "ssl_cert_reqs": ssl.CERT_REQUIRED if args.tls_client_ca else ssl.CERT_NONE,
            "proxy_headers": args.forwarded_allow_ips is not None,
            "forwarded_allow_ips": _proxies(args.forwarded_allow_ips) if args.forwarded_allow_ips else None}


def _check_tls(args: argparse.Namespace) -> None:
    if bool(args.tls_cert) != bool(args.tls_key) or (args.tls_client_ca and not args.tls_cert):
        raise Refused("--tls-cert and --tls-key go together (and --tls-client-ca needs them)")


def _proxies(text: str) -> list[str]:
    """The `--forwarded-allow-ips` list: '*' or addresses and networks; Refused otherwise."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    for item in items:
        if item != "*":
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise Refused(f"--forwarded-allow-ips: {item!r} is not an address or a network") from None
    if not items:
        raise Refused("--forwarded-allow-ips: give at least one address or network")
    return items


def listen_audit(args: argparse.Namespace, address: ArchiveAddress) -> AuditLog | None:
    """The receiver's audit trail (the archive's, shared with `serve`: in
    its local folder), or None with --no-audit."""
    if args.no_audit:
        return None
    return AuditLog(args.audit_dir or address.local / AUDIT_FOLDER, catalog=address.catalog or address.local)


def listen_tls(args: argparse.Namespace) -> ssl.SSLContext | None:
    """The receiver's TLS context from `--tls-cert/--tls-key/--tls-client-ca`, or None."""
    _check_tls(args)
    if not args.tls_cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(args.tls_cert, args.tls_key)
    if args.tls_client_ca:
        context.load_verify_locations(args.tls_client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _loopback(host: str) -> bool:
    """Whether `host` (a name or an address) is a loopback address."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            return all(ipaddress.ip_address(info[4][0]).is_loopback for info in socket.getaddrinfo(host, None))
        except OSError:
            return False
