"""The `transcode` command: `convert`, `ingest`, `migrate`, `verify`, `serve`, `listen`, `bench`, `info`, `keys`, `audit`.

Exit codes. `convert`: 0 every instance transcoded, 3 some kept as is (none
failed), 1 at least one failed. `ingest`: 0 every file transcoded, kept, a
duplicate or replaced, 1 any failed or conflicted. `migrate`: 0 every study done and every instance
clean, 1 otherwise (a rerun retries what is not done). `verify`, `audit verify`: 0 whole, 1 problems.
All: 2 for usage errors and refusals (an archive busy, an index that is not the
archive's); 141 (128 + SIGPIPE, as for cat) when the reader of the output
went away.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sqlite3
import sys
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from transcode import limits, logs
from transcode.archive import ArchiveBusy, ArchiveMismatch, FolderArchive
from transcode.archive.check import verify_archive
from transcode.archive.objects import ArchiveAddress, ArchiveURLError, open_archive
from transcode.archive.rebuild import rebuild_index
from transcode.archive.store import Archive
from transcode.catalog import is_url
from transcode.catalog.base import CatalogError
from transcode.codecs import codestream
from transcode.codecs.htj2k import EncodeSettings
from transcode.dicom.read import open_instance
from transcode.pipeline import Pool, ingest
from transcode.policy import OnConflict, Outcome, Stop
from transcode.report import Progress, ReportFile, print_summary
from transcode.security import commands
from transcode.service import clear_uploads, out_of_space
from transcode.transcoder import TranscodeResult, transcode_file
from transcode.verify import SAMPLE_EVERY, CrossCheck

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_KEPT = 0, 1, 2, 3
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE
log = logging.getLogger(__name__)


def _pairs(src: Path, dst: Path) -> Iterator[tuple[Path, Path]]:
    """(source, destination) for a file, or for every file under a folder
    with the folder structure mirrored under `dst`. Whatever is not a folder
    is a file to convert: a FIFO or a dangling link is reported, not skipped."""
    if not src.is_dir():
        yield src, dst / src.name if dst.is_dir() else dst
        return
    for path in sorted(p for p in src.rglob("*") if not p.is_dir()):
        target = dst / path.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        yield path, target


def _mb(n: int) -> str:
    return f"{n / 1e6:9.2f}"


def print_table(results: Sequence[TranscodeResult], out: TextIO | None = None) -> None:
    """One row per instance, then totals per outcome."""
    out = out or sys.stdout
    print(f"{'outcome':<11}{'reason':<29}{'frames':>7}{'MB in':>10}{'MB out':>10}{'ratio':>7}{'s':>7}  file", file=out)
    for r in results:
        ratio = f"{r.ratio:7.3f}" if r.ratio else f"{'-':>7}"
        print(
            f"{r.outcome.value:<11}{(r.reason.value if r.reason else ''):<29}{r.frames:>7}"
            f"{_mb(r.bytes_in):>10}{_mb(r.bytes_out):>10}{ratio}{r.seconds.get('total', 0):7.2f}  {r.source}",
            file=out,
        )
    counts = Counter(r.outcome.value for r in results)
    bytes_in = sum(r.bytes_in for r in results if r.outcome is Outcome.TRANSCODED)
    bytes_out = sum(r.bytes_out for r in results if r.outcome is Outcome.TRANSCODED)
    seconds = sum(r.seconds.get("total", 0) for r in results)
    summary = ", ".join(f"{counts.get(o.value, 0)} {o.value}" for o in Outcome)
    print(f"\n{len(results)} instances: {summary}.", file=out)
    if bytes_in:
        print(
            f"Transcoded {bytes_in / 1e6:.1f} MB -> {bytes_out / 1e6:.1f} MB "
            f"(ratio {bytes_out / bytes_in:.3f}) in {seconds:.1f} s, {bytes_in / 1e6 / max(seconds, 1e-9):.1f} MB/s.",
            file=out,
        )
    for r in results:
        if r.detail:
            print(f"  {r.source}: {r.reason or r.outcome.value}: {r.detail}", file=out)


def _exit_code(results: Sequence[TranscodeResult]) -> int:
    outcomes = {r.outcome for r in results}
    if Outcome.FAILED in outcomes:
        return EXIT_FAILED
    return EXIT_KEPT if Outcome.KEPT in outcomes else EXIT_OK


def cmd_convert(args: argparse.Namespace) -> int:
    src, dst = Path(args.src), Path(args.dst)
    if not src.exists():
        print(f"transcode: {src}: no such file or folder", file=sys.stderr)
        return EXIT_USAGE
    if src.is_dir():
        if dst.exists() and not dst.is_dir():
            print(f"transcode: {dst} must be a folder when {src} is one", file=sys.stderr)
            return EXIT_USAGE
        if dst.resolve().is_relative_to(src.resolve()):
            print(f"transcode: {dst} lies inside {src}: the source is never written to", file=sys.stderr)
            return EXIT_USAGE
        dst.mkdir(parents=True, exist_ok=True)
    settings = _settings(args)
    results = []
    for source, target in _pairs(src, dst):
        result = transcode_file(
            source, target, settings=settings, crosscheck=args.crosscheck,
            workers=args.workers, copy_kept=not args.no_copy_kept,
        )
        results.append(result)
        if args.json:
            print(json.dumps({k: v for k, v in result.to_dict().items() if k != "frame_index"}), flush=True)
    if not args.json:
        print_table(results)
    return _exit_code(results)


def cmd_info(args: argparse.Namespace) -> int:
    try:
        with open_instance(args.file) as instance:
            spec = instance.spec
            print(f"File:             {args.file}")
            print(f"Transfer syntax:  {instance.transfer_syntax} ({instance.transfer_syntax.name})")
            if spec is None:
                print("Pixel data:       none")
                return EXIT_OK
            print(f"Frames:           {spec.number_of_frames}")
            print(
                f"Frame:            {spec.columns} x {spec.rows}, {spec.samples_per_pixel} sample(s), "
                f"{spec.bits_stored}/{spec.bits_allocated} bits, "
                f"{'signed' if spec.pixel_representation else 'unsigned'}, {spec.photometric}"
            )
            if not instance.transfer_syntax.is_encapsulated:
                return EXIT_OK
            for number, data in enumerate(instance.codestreams()):
                if number >= args.frames:
                    print(f"... {spec.number_of_frames - number} more frame(s); --frames N shows more")
                    break
                _print_codestream(number, data)
    except Stop as stop:
        print(f"transcode: {args.file}: {stop.reason}: {stop.detail}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _print_codestream(number: int, data: bytes) -> None:
    try:
        index = codestream.parse(data)  # a padding byte after EOC is ignored
    except codestream.CodestreamError as exc:
        print(f"\nFrame {number}: {len(data)} bytes, not indexable as a J2K codestream: {exc}")
        return
    print(
        f"\nFrame {number}: {index.length} bytes, {'HT' if index.high_throughput else 'J2K Part 1'}, "
        f"{index.progression}, {'reversible' if index.reversible else 'irreversible'}, "
        f"{index.decompositions} decompositions, TLM {'yes' if index.has_tlm else 'no'}, "
        f"{index.tiles} tile(s) of {index.tile_width} x {index.tile_height}"
    )
    if not index.resolution_major:
        print("  tile-parts are not resolution-major: no byte boundary per resolution level")
        return
    print(f"  {'level':>5} {'size':>13} {'ends at byte':>13} {'bytes':>11} {'share':>7}")
    previous = 0
    for level in range(index.resolutions):
        end = index.level_end(level)
        w, h = index.resolution_size(level)
        print(f"  {level:>5} {f'{w} x {h}':>13} {end:>13} {end - previous:>11} {end / index.length:>7.1%}")
        previous = end


def cmd_ingest(args: argparse.Namespace) -> int:
    missing = [p for p in args.paths if not Path(p).exists()]
    if missing:
        print(f"transcode: no such file or folder: {', '.join(missing)}", file=sys.stderr)
        return EXIT_USAGE
    try:
        report_file = ReportFile(Path(args.report)) if args.report else None
    except OSError as exc:
        print(f"transcode: cannot write the report: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        pool = _dask_pool(args.dask) if args.dask else None
    except ValueError as exc:
        print(f"transcode: {exc}", file=sys.stderr)
        if report_file:
            report_file.close()
        return EXIT_USAGE
    progress = Progress()
    try:
        with open_archive(args.archive, catalog=args.catalog, work_dir=args.work_dir, exclusive=True) as archive:
            report = ingest(
                args.paths, archive, workers=args.workers, threads=args.threads, crosscheck=args.crosscheck,
                progress=progress, on_entry=report_file.add if report_file else None, keep_entries=False,
                on_conflict=args.on_conflict, pool=pool, exclude=report_file.paths if report_file else (),
                settings=_settings(args),
            )
        if report_file:
            report_file.finish(report)
    except (ArchiveBusy, ArchiveMismatch, ArchiveURLError) as exc:
        print(f"transcode: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except CatalogError as exc:  # a PostgreSQL catalog that cannot be reached, or failed mid-run
        print(f"transcode: {exc}. Everything committed so far is safe; rerun the same command once fixed.",
              file=sys.stderr)
        return EXIT_FAILED
    except (OSError, sqlite3.OperationalError) as exc:  # the archive or the report failed (disk full, read-only)
        if not (isinstance(exc, OSError) or out_of_space(exc)):
            raise
        print(f"transcode: cannot write: {'the disk is full' if out_of_space(exc) else exc}. Everything committed "
              "so far is safe; rerun the same command once fixed.", file=sys.stderr)
        return EXIT_FAILED
    finally:
        progress.close()
        if pool is not None:
            pool.close()
        if report_file:
            report_file.close()
    print_summary(report)
    return EXIT_OK if report.clean else EXIT_FAILED


def _dask_pool(address: str) -> Pool:
    """The `--dask` cluster (imported here: `distributed` is an optional extra);
    ValueError, with a sentence, where it cannot be had."""
    try:
        from transcode.cluster import DaskPool
    except ImportError:
        raise ValueError("--dask needs the dask extra: pip install 'transcode[dask]'") from None
    try:
        return DaskPool(address)
    except OSError as exc:  # no scheduler there, or it does not answer
        raise ValueError(f"cannot reach the Dask scheduler at {address}: {exc}") from None


def cmd_migrate(args: argparse.Namespace) -> int:
    """Pull studies from a PACS (C-FIND, C-GET or C-MOVE) through the ingest service."""
    from transcode.dimse.migrate import Filters, Migration, MigrationError
    from transcode.dimse.scu import RemoteAE
    from transcode.service import IngestService

    try:
        source = RemoteAE.parse(args.source)
        since = args.since.replace("-", "") if args.since else None
        if since is not None and not (len(since) == 8 and since.isdigit()):
            raise ValueError(f"--since {args.since!r}: expected YYYYMMDD or YYYY-MM-DD")
        report_file = ReportFile(Path(args.report)) if args.report else None
    except (ValueError, OSError) as exc:
        print(f"transcode: {exc}", file=sys.stderr)
        return EXIT_USAGE
    progress = Progress()
    address = _address(args)
    service = IngestService(address, workers=args.workers or 2, crosscheck=args.crosscheck,
                            on_conflict=args.on_conflict, settings=_settings(args))
    migration = Migration(address, source, service, ae_title=args.ae_title, retrieve=args.retrieve,
                          move_host=args.move_host, move_port=args.move_port, rate=args.rate,
                          on_entry=report_file.add if report_file else None, progress=progress)
    try:
        report = migration.run(Filters(tuple(args.study), since, tuple(args.modality)))
        if report_file:
            report_file.finish(report.ingest, studies=[study.to_dict() for study in report.studies])
    except (MigrationError, ArchiveBusy, ArchiveMismatch) as exc:
        print(f"transcode: {exc}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        progress.close()
        service.close()
        if report_file:
            report_file.close()
    print_summary(report.ingest)
    counts = report.counts()
    print(f"{len(report.studies)} studies: " + ", ".join(f"{counts[state]} {state}" for state in
                                                       ("done", "incomplete", "failed")) + ".")
    for study in report.studies:
        if study.state != "done":
            missing = f" missing: {', '.join(study.missing)}" if study.missing else ""
            print(f"  {study.state}: {study.study_uid}: {study.detail}{missing}")
    return EXIT_OK if report.clean else EXIT_FAILED


def cmd_verify(args: argparse.Namespace) -> int:
    address = _address(args)
    if args.catalog is not None:  # an object-store archive
        if args.rebuild_index:
            print("transcode: --rebuild-index reads an archive folder; it does not read an object store yet "
                  "(README, Object storage)", file=sys.stderr)
            return EXIT_USAGE
        opened = _open_for_verify(address)
        return EXIT_USAGE if opened is None else _verify(opened)
    root = address.local
    if args.rebuild_index:
        return _rebuild(root)
    if not (root / "index.sqlite").is_file():
        stored = (root / "archive.json").is_file() or any((root / "objects").glob("*"))
        hint = ": objects are stored, `transcode verify --rebuild-index` rebuilds it" if stored else ""
        print(f"transcode: {root} has no index (no index.sqlite){hint}", file=sys.stderr)
        return EXIT_USAGE
    return _verify(FolderArchive(root, read_only=True, check=False))


def _open_for_verify(address: ArchiveAddress) -> Archive | None:
    """The object-store archive at `address`, read-only and unchecked (a
    mismatch is reported as verify's one problem); None when refused."""
    try:
        return address.open(read_only=True, check=False)
    except (ArchiveURLError, FileNotFoundError, CatalogError) as exc:
        print(f"transcode: {exc}", file=sys.stderr)
        return None


def _verify(opened: Archive) -> int:
    with opened as archive:
        problems = verify_archive(archive)
        checked = 0 if archive.mismatch else archive.index.counts()["instances"]
    for problem in problems:
        print(f"{problem.path}: {problem.what}")
    print(f"{checked} instances checked, {len(problems)} problem(s).")
    return EXIT_FAILED if problems else EXIT_OK


def _rebuild(root: Path) -> int:
    try:
        rebuilt = rebuild_index(root)
    except (ArchiveBusy, FileNotFoundError) as exc:
        print(f"transcode: {exc}", file=sys.stderr)
        return EXIT_USAGE
    for problem in rebuilt.problems:
        print(f"{problem.path}: {problem.what}")
    print(f"Index rebuilt from the stored objects: {rebuilt.instances} instances, {rebuilt.frames} frames, "
          f"{rebuilt.conflicts} conflicting copies, {len(rebuilt.problems)} problem(s).")
    if rebuilt.ledger_kept:
        print(f"Kept from the old index: {rebuilt.ledger} ledger rows and {rebuilt.migrations} migrated studies' "
              "states (they record sources, not objects).")
    else:
        print("The old index held no ledger (emptied, missing or unreadable): the ledger of ingested source files "
              "starts empty, and why instances were kept as is was decided again.")
    return EXIT_FAILED if rebuilt.problems else EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        bounds = limits.from_arguments(args)
    except ValueError as exc:
        print(f"transcode: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.viewer_dir and not (Path(args.viewer_dir) / "index.html").is_file():
        print(f"transcode: --viewer-dir {args.viewer_dir} holds no index.html (give a built static viewer: "
              "OHIF's dist folder)", file=sys.stderr)
        return EXIT_USAGE
    if args.catalog is not None:  # an object-store archive: its index and upload spool in the catalog folder
        security = _store_security(args)
        if security is None:
            return EXIT_USAGE
        if not args.read_only:
            clear_uploads(_address(args).local)  # before any worker starts: what is there was never acknowledged
        return _serve(args, args.archive, args.read_only, security, bounds)
    archive = Path(args.archive)
    read_only = args.read_only or any(path.exists() and not os.access(path, os.W_OK)
                                      for path in (archive, archive / "index.sqlite"))
    if not (archive / "index.sqlite").is_file():
        if read_only or (archive.exists() and (not archive.is_dir() or any(archive.iterdir()))):
            # Never turn a folder of something else (the sources, say) into an archive.
            print(f"transcode: {archive} is not an archive (no index.sqlite) and not empty; run transcode "
                  "ingest first, or give a new folder for an archive filled through STOW-RS", file=sys.stderr)
            return EXIT_USAGE
        log.info("new empty archive at %s", archive)
    try:  # a new folder becomes an empty archive, to be filled through STOW-RS
        FolderArchive(archive, read_only=read_only).close()
    except ArchiveMismatch as exc:  # never serve (nor store into) an index that is not the archive's
        print(f"transcode: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        security = commands.serve_security(args, archive, read_only)
    except commands.Refused as exc:
        print(f"transcode: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if read_only:
        log.warning("%s is served read-only: STOW-RS answers 503", archive)
    else:
        clear_uploads(archive)  # before any worker starts: what is there was never acknowledged
    return _serve(args, str(archive.resolve()), read_only, security, bounds)


def _store_security(args: argparse.Namespace) -> dict[str, Any] | None:
    """For an object-store archive, which must open with its catalog (an
    empty store and catalog become an empty archive, unless `--read-only`):
    the security options, with its API keys and audit trail in its local
    working folder (the catalog folder, `--work-dir`, or the default one
    beside a PostgreSQL catalog). None when refused (and why said)."""
    try:
        open_archive(args.archive, catalog=args.catalog, work_dir=args.work_dir, read_only=args.read_only).close()
        local = _address(args).local
        local.mkdir(parents=True, exist_ok=True)
        return commands.serve_security(args, local, read_only=False)
    except (ArchiveMismatch, ArchiveURLError, FileNotFoundError, CatalogError, commands.Refused) as exc:
        print(f"transcode: {exc}", file=sys.stderr)
        return None


def _address(args: argparse.Namespace) -> ArchiveAddress:
    """The archive the command names: --archive, with --catalog and --work-dir where it has them."""
    return ArchiveAddress.of(args.archive, args.catalog, getattr(args, "work_dir", None))


def _serve(args: argparse.Namespace, archive: str, read_only: bool, security: dict[str, Any],
           bounds: limits.Limits) -> int:
    import uvicorn  # the server's dependencies load only when serving

    from transcode.server.app import SERVE_OPTIONS

    # Each worker process builds its own app (and archive handle) from these.
    os.environ[SERVE_OPTIONS] = json.dumps({"archive": archive, "read_only": read_only,
                                            "catalog": args.catalog if is_url(args.catalog) else
                                            args.catalog and str(Path(args.catalog).resolve()),
                                            "work_dir": args.work_dir and str(Path(args.work_dir).resolve()),
                                            "cors_origins": args.cors_origin, "stow_workers": args.stow_workers,
                                            "on_conflict": args.on_conflict,
                                            "max_frame_bytes": _frame_bytes(args.max_frame_mb),
                                            "max_render_pixels": args.max_render_pixels, "security": security,
                                            "limits": bounds.to_json(),
                                            "viewer_dir": str(Path(args.viewer_dir).resolve()) if args.viewer_dir else None,
                                            "read_cache_mb": args.read_cache_mb})
    host = f"[{args.host}]" if ":" in args.host else args.host
    origin = f"{'https' if args.tls_cert else 'http'}://{host}:{args.port}"
    print(f"DICOMweb root: {origin}/dicomweb  (studies: {origin}/dicomweb/studies)")
    if args.viewer_dir:
        print(f"OHIF: {origin}/ohif/")
    print(f"Viewer: open {origin}/ in a browser", flush=True)
    # uvicorn logs through `transcode.logs`; its access log (full URLs, patient data in queries) is replaced
    # by `transcode.access` (route templates). TLS and proxies: uvicorn's options (`commands.uvicorn_options`).
    uvicorn.run("transcode.server.app:app_from_environment", factory=True, workers=args.workers, host=args.host,
                port=args.port, log_config=None, access_log=False, **commands.uvicorn_options(args),
                http="transcode.server.protocol:BoundedHttpTools", timeout_keep_alive=bounds.keep_alive,
                limit_concurrency=bounds.max_connections)
    return EXIT_OK


def cmd_bench(args: argparse.Namespace) -> int:
    try:
        from transcode import bench
    except ImportError as exc:  # matplotlib, for the charts
        print(f"transcode: bench needs {exc.name}: pip install -e '.[bench]'", file=sys.stderr)
        return EXIT_USAGE
    missing = [p for p in args.paths if not Path(p).exists()]
    if missing:
        print(f"transcode: no such file or folder: {', '.join(missing)}", file=sys.stderr)
        return EXIT_USAGE
    try:
        results = bench.run(args.paths, Path(args.out), quick=args.quick, server=not args.no_server,
                            log=lambda line: print(line, file=sys.stderr, flush=True))
    except ValueError as exc:
        print(f"transcode: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print((Path(args.out) / "results.md").read_text())
    print(f"Results, tables and charts in {args.out} ({results['seconds']:.0f} s).")
    return EXIT_OK


def cmd_listen(args: argparse.Namespace) -> int:
    from transcode.dimse import hooks
    from transcode.dimse.forward import Forwarder
    from transcode.dimse.receiver import Peer, Receiver
    from transcode.dimse.scu import RemoteAE

    try:
        peers = [Peer.parse(text) for text in args.accept_from]
        targets: list[RemoteAE | str] = [RemoteAE.parse(text) for text in args.forward] + args.forward_stow
        tls = commands.listen_tls(args)
    except (ValueError, OSError, commands.Refused) as exc:
        print(f"transcode: --accept-from / --forward / --tls-*: {exc}", file=sys.stderr)
        return EXIT_USAGE
    study_hooks = ([hooks.command_hook(command) for command in args.on_study]
                   + [hooks.url_hook(url) for url in args.on_study_url] + hooks.entry_point_hooks())
    address = _address(args)
    forwarders = [Forwarder(address, target, ae_title=args.ae_title) for target in targets]
    receiver = Receiver(address, ae_title=args.ae_title, host=args.host, port=args.port,
                        accept_from=peers, max_associations=args.max_associations, study_idle=args.study_idle,
                        study_hooks=study_hooks, workers=args.workers, settings=_settings(args),
                        crosscheck=args.crosscheck, on_conflict=args.on_conflict,
                        on_archived=[forwarder.on_archived for forwarder in forwarders], ssl_context=tls,
                        audit=commands.listen_audit(args, address), ack=args.ack, backlog=args.backlog)
    stopped = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopped.set())
    try:
        for forwarder in forwarders:
            forwarder.start()
        receiver.start()
    except (ArchiveBusy, ArchiveMismatch, OSError) as exc:
        receiver.stop()
        for forwarder in forwarders:
            forwarder.close()
        print(f"transcode: {exc}", file=sys.stderr)
        return EXIT_USAGE
    host, port = receiver.address
    print(f"Storage SCP {args.ae_title} on {host}:{port}, archive {args.archive}", flush=True)
    stopped.wait()
    receiver.stop()
    for forwarder in forwarders:
        forwarder.close()
    return EXIT_OK


def _frame_bytes(mib: float) -> int:
    return int(mib * (1 << 20))


def _settings(args: argparse.Namespace) -> EncodeSettings:
    return EncodeSettings(tile_threshold=args.tile_threshold, tile_size=args.tile_size,
                          max_frame_bytes=_frame_bytes(args.max_frame_mb))


def _frame_cap_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-frame-mb", type=float, default=EncodeSettings().max_frame_bytes / (1 << 20),
                        help="keep as is, undecoded, frames larger than this decoded (MiB; default: %(default)g)")


def _encode_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--crosscheck", choices=[c.value for c in CrossCheck], default=CrossCheck.SAMPLE.value,
        help="frames also decoded by independent decoders (OpenJPEG for the output; liblj92 or pydicom's RLE "
             "decoder for JPEG Lossless and RLE sources): sample (default: the first of each format, then 1 in "
             f"{SAMPLE_EVERY}), first (of every instance), all, none",
    )
    _frame_cap_option(parser)
    parser.add_argument("--tile-threshold", type=int, default=EncodeSettings().tile_threshold,
                        help="tile frames whose larger side exceeds this (default: %(default)s)")
    parser.add_argument("--tile-size", type=int, default=EncodeSettings().tile_size,
                        help="tile side in pixels (default: %(default)s)")


def _work_dir_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--work-dir", metavar="DIR",
                        help="for an s3:// archive: this node's local working folder: staged objects (DIR/staging), "
                             "spools and uploads, serve's API keys and audit trail (default: the catalog folder; with "
                             "a postgresql:// catalog, a per-user, per-catalog folder under the temporary folder)")


def _conflict_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--on-conflict", choices=[c.value for c in OnConflict], default=OnConflict.KEEP.value,
        help="an archived SOP Instance UID sent again with another header or other pixels: keep the archived "
             "copy and store the new one beside it, or replace it and keep the old one beside (default: keep)",
    )


def _log_options(parser: argparse.ArgumentParser, default: object = None) -> None:
    """The logging options, global (before the subcommand) and accepted after
    it too (`transcode serve --log-level warning`), where the default
    `argparse.SUPPRESS` leaves the global value alone."""
    parser.add_argument("-v", "--verbose", action="count", default=default or 0,
                        help="log more: info, then debug (default: warnings; info for serve)")
    parser.add_argument("--log-level", type=str.lower, default=default,
                        choices=["critical", "error", "warning", "info", "debug"], help="log from this level on")
    parser.add_argument("--log-json", action="store_true", default=default or False,
                        help="log one JSON object per line (time, level, logger, message, exc)")


class _Subcommand(argparse.ArgumentParser):
    """A subcommand's parser: it takes the logging options as well."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _log_options(self, argparse.SUPPRESS)


def _configure_logging(args: argparse.Namespace) -> None:
    """Logging for this run, once (`transcode.logs`); a service (`log_default`
    set by its subcommand) logs from info by default, a command from warning."""
    default = getattr(args, "log_default", "warning")
    logs.configure(logs.level_from(args.verbose, args.log_level, default), json_lines=args.log_json)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="transcode", description=__doc__.splitlines()[0])
    _log_options(parser)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Subcommand)

    convert = sub.add_parser("convert", help="transcode a DICOM file, or every file under a folder, to HTJ2K")
    convert.add_argument("src", help="DICOM file or folder (read only, never modified)")
    convert.add_argument("dst", help="output file, or folder (created) mirroring the source folder")
    convert.add_argument("--workers", type=int, default=None, help="threads per instance (default: all cores)")
    _encode_options(convert)
    convert.add_argument("--no-copy-kept", action="store_true",
                         help="write nothing for instances kept as is (default: an exact copy)")
    convert.add_argument("--json", action="store_true", help="print one JSON result per line instead of a table")
    convert.set_defaults(func=cmd_convert)

    ingest_ = sub.add_parser("ingest", help="transcode files, folders and DICOMDIRs into an archive (resumable)")
    ingest_.add_argument("paths", nargs="+", help="files, folders (recursive) or DICOMDIR files; read only")
    ingest_.add_argument("--archive", required=True,
                         help="archive folder (created if missing), or s3://BUCKET/PREFIX (README, Object storage)")
    ingest_.add_argument("--catalog", help="for an s3:// archive: the local folder of its index and staging, or "
                                           "postgresql://USER@HOST:PORT/DB (README, Catalog)")
    _work_dir_option(ingest_)
    ingest_.add_argument("--workers", type=int, default=None, help="worker processes (default: all cores)")
    ingest_.add_argument("--threads", type=int, default=None,
                         help="threads per worker over frames (default: cores / workers)")
    ingest_.add_argument("--dask", metavar="ADDRESS",
                         help="run the files on a Dask cluster: tcp://scheduler:8786, or local:N for N worker "
                              "processes on this machine (replaces --workers; the staging folder must be shared)")
    ingest_.add_argument("--report", help="write every file's outcome to this JSON file")
    _encode_options(ingest_)
    _conflict_option(ingest_)
    ingest_.set_defaults(func=cmd_ingest)

    migrate = sub.add_parser("migrate", help="pull studies from a legacy PACS (C-FIND, then C-GET or C-MOVE); "
                             "a rerun resumes")
    migrate.add_argument("--from", dest="source", required=True, metavar="AE@HOST:PORT", help="the PACS")
    migrate.add_argument("--archive", required=True, help="archive folder (created if missing), or s3://BUCKET/PREFIX")
    migrate.add_argument("--catalog", help="for an s3:// archive: the local folder of its index, staging and spools, "
                                           "or postgresql://USER@HOST:PORT/DB (README, Catalog)")
    _work_dir_option(migrate)
    migrate.add_argument("--ae-title", default="TRANSCODE", help="our AE title (default: %(default)s)")
    migrate.add_argument("--study", action="append", default=[], metavar="UID", help="only this study (repeatable)")
    migrate.add_argument("--since", metavar="DATE", help="only studies dated on or after DATE (YYYYMMDD)")
    migrate.add_argument("--modality", action="append", default=[],
                         help="only studies with this modality (repeatable)")
    migrate.add_argument("--rate", type=float, default=None, help="start at most N studies per minute")
    migrate.add_argument("--retrieve", choices=["auto", "get", "move"], default="auto",
                         help="C-GET, falling back to C-MOVE where the PACS refuses it (auto, the default); "
                              "or only one of them")
    migrate.add_argument("--move-port", type=int, default=None,
                         help="port of our Storage SCP for C-MOVE (the PACS must know our AE title there)")
    migrate.add_argument("--move-host", default="127.0.0.1",
                         help="address our C-MOVE Storage SCP listens on (default: %(default)s)")
    migrate.add_argument("--workers", type=int, default=None, help="ingest worker processes (default: 2)")
    migrate.add_argument("--report", help="write every instance's outcome and every study's state to this JSON file")
    _encode_options(migrate)
    _conflict_option(migrate)
    migrate.set_defaults(func=cmd_migrate)

    verify = sub.add_parser("verify", help="re-read and re-decode every archived object against the index")
    verify.add_argument("--archive", required=True, help="archive folder, or s3://BUCKET/PREFIX with --catalog")
    verify.add_argument("--catalog", help="for an s3:// archive: the local folder of its index, or "
                                          "postgresql://USER@HOST:PORT/DB (README, Catalog)")
    _work_dir_option(verify)
    verify.add_argument("--rebuild-index", action="store_true",
                        help="replace the index by one rebuilt from the stored objects (keeps the old ledger)")
    verify.set_defaults(func=cmd_verify)

    serve = sub.add_parser("serve", help="serve an archive over DICOMweb (QIDO-RS, WADO-RS, STOW-RS)")
    serve.add_argument("--archive", required=True, help="archive folder, or s3://BUCKET/PREFIX with --catalog")
    serve.add_argument("--catalog", help="for an s3:// archive: the local folder of its index, staging and upload "
                       "spool, or postgresql://USER@HOST:PORT/DB (README, Catalog)")
    _work_dir_option(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    serve.add_argument("--port", type=int, default=8042, help="(default: %(default)s)")
    serve.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                       help="allow browser calls from this origin (repeatable; '*' for any)")
    serve.add_argument("--workers", type=int, default=1,
                       help="server processes (default: %(default)s; frame serving scales with them)")
    serve.add_argument("--stow-workers", type=int, default=None,
                       help="ingest worker processes kept for STOW-RS requests (default: 2)")
    serve.add_argument("--read-only", action="store_true",
                       help="write nothing: STOW-RS answers 503 (the default for a folder this user cannot write)")
    _conflict_option(serve)
    _frame_cap_option(serve)
    serve.add_argument("--max-render-pixels", type=int, default=None,
                       help="rendered images larger are scaled down to it, and no larger frame is decoded for one "
                            "(default: 4096 x 4096)")
    serve.add_argument("--viewer-dir", default=None, metavar="DIR",
                       help="a prebuilt static viewer (OHIF's dist) to serve under /ohif/, configured for this server")
    serve.add_argument("--read-cache-mb", type=int, default=None, metavar="MB",
                       help="for an s3:// archive: MB of frames read from the store that each server process keeps "
                            "for the next requests (0: none; default: 256)")
    commands.add_serve_options(serve)
    limits.add_arguments(serve)
    serve.set_defaults(func=cmd_serve, log_default="info")

    listen = sub.add_parser("listen", help="receive instances over DICOM (C-STORE) into an archive")
    listen.add_argument("--archive", required=True, help="archive folder (created if missing), or s3://BUCKET/PREFIX")
    listen.add_argument("--catalog", help="for an s3:// archive: the local folder of its index, staging and spools, "
                                          "or postgresql://USER@HOST:PORT/DB (README, Catalog)")
    _work_dir_option(listen)
    listen.add_argument("--ae-title", default="TRANSCODE", help="our AE title (default: %(default)s)")
    listen.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    listen.add_argument("--port", type=int, default=11112, help="(default: %(default)s)")
    listen.add_argument("--accept-from", action="append", default=[], metavar="AE[@HOST]",
                        help="accept associations only from this calling AE title (and host); repeatable "
                             "(default: from any)")
    listen.add_argument("--max-associations", type=int, default=10,
                        help="associations at once; more are rejected as transient (default: %(default)s)")
    listen.add_argument("--study-idle", type=float, default=60.0,
                        help="a study is complete after this many seconds without a new instance (default: "
                             "%(default)s)")
    listen.add_argument("--on-study", action="append", default=[], metavar="CMD",
                        help="shell command run once per complete study, its summary JSON on stdin (repeatable)")
    listen.add_argument("--on-study-url", action="append", default=[], metavar="URL",
                        help="POST each complete study's summary JSON to this URL (repeatable)")
    listen.add_argument("--forward", action="append", default=[], metavar="AE@HOST:PORT",
                        help="send each archived instance on with C-STORE, .202 first, else decoded (repeatable; "
                             "a persistent queue under the archive survives restarts and a peer that is down)")
    listen.add_argument("--forward-stow", action="append", default=[], metavar="URL",
                        help="the same over STOW-RS to this studies URL (repeatable)")
    listen.add_argument("--workers", type=int, default=2, help="ingest worker processes (default: %(default)s)")
    listen.add_argument("--ack", choices=["archived", "spooled"], default="archived",
                        help="answer a C-STORE once the instance is archived, with its outcome's status, or once it "
                             "is durable in the spool, Success for every readable instance (README; default: "
                             "%(default)s)")
    listen.add_argument("--backlog", type=int, default=256, metavar="N",
                        help="with --ack spooled: instances answered and not yet archived, at most; beyond, "
                             "senders wait (default: %(default)s)")
    _encode_options(listen)
    _conflict_option(listen)
    commands.add_listen_options(listen)
    listen.set_defaults(func=cmd_listen)

    bench_ = sub.add_parser("bench", help="speed, size, progressive and scaling benchmarks (generated data or yours)")
    bench_.add_argument("paths", nargs="*", help="DICOM files or folders to measure on (default: generated phantoms)")
    bench_.add_argument("--out", required=True, help="folder for results.json, results.md and the charts")
    bench_.add_argument("--quick", action="store_true", help="small sizes and few repeats: under two minutes")
    bench_.add_argument("--no-server", action="store_true", help="skip the DICOMweb load test")
    bench_.set_defaults(func=cmd_bench)

    info = sub.add_parser("info", help="transfer syntax, frames and the HTJ2K resolution map of a file")
    info.add_argument("file")
    info.add_argument("--frames", type=int, default=1, help="how many frames to map (default: 1)")
    info.set_defaults(func=cmd_info)
    commands.add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return EXIT_USAGE if exc.code else EXIT_OK
    _configure_logging(args)
    archive = getattr(args, "archive", None)
    if archive is not None and (getattr(args, "catalog", None) is not None or "://" in str(archive)):
        try:  # a URL of another scheme, or one without its catalog: refused before anything is made of it
            ArchiveAddress.of(args.archive, args.catalog).check()
        except ArchiveURLError as exc:
            print(f"transcode: {exc}", file=sys.stderr)
            return EXIT_USAGE
    try:
        code = int(args.func(args))
        sys.stdout.flush()  # here, where a closed pipe can still be caught
    except BrokenPipeError:
        # The reader went away (`transcode info FILE | head`): stop quietly, as
        # cat and grep do, with the status a shell gives them (128 + SIGPIPE).
        # Output still buffered goes to /dev/null, so the flush at exit cannot fail.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    return code


if __name__ == "__main__":
    sys.exit(main())
