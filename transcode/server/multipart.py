"""multipart/related bodies (RFC 2387) as DICOMweb peers read and write them.

Written: each part carries `Content-Type:` spelled exactly so (Cornerstone3D
finds it case-sensitively) and a `Content-Location`. The boundary is derived
from what the body holds, so the same resource always has the same bytes:
a client fetching byte ranges of it (Cornerstone3D's progressive loader)
gets pieces of one body.

Read (STOW-RS): the request body is streamed part by part into files with
python-multipart's parser; nothing is held in memory but one chunk. A
preamble before the first boundary is skipped, as RFC 2046 asks.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from blake3 import blake3
from python_multipart.multipart import MultipartParser

from transcode.server.errors import Problem
from transcode.server.negotiate import parse_media_type

log = logging.getLogger(__name__)


def boundary_for(key: str) -> str:
    """A boundary that depends only on `key` (what the body holds)."""
    return "DICOMweb-" + blake3(key.encode()).hexdigest()[:32]


def content_type(media_type: str, boundary: str) -> str:
    """The response's Content-Type for parts of `media_type`."""
    return f'multipart/related; type="{media_type}"; boundary={boundary}'


def body(parts: Iterable[tuple[str, str, Iterable[bytes | memoryview]]], boundary: str) -> Iterator[bytes | memoryview]:
    """A multipart/related body, streamed: each part is (Content-Type,
    Content-Location, its bytes in pieces)."""
    for part_type, location, pieces in parts:
        yield part_head(boundary, part_type, location)
        yield from pieces
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode()


def part_head(boundary: str, part_type: str, location: str) -> bytes:
    return f"--{boundary}\r\nContent-Type: {part_type}\r\nContent-Location: {location}\r\n\r\n".encode()


def closing(boundary: str) -> bytes:
    """What follows the payload of a body's last part."""
    return f"\r\n--{boundary}--\r\n".encode()


async def save_parts(stream: AsyncIterator[bytes], request_type: str | None, folder: Path,
                     max_parts: int = 10000) -> list[Path]:
    """Write each application/dicom part of a STOW-RS body to its own file
    in `folder`; return the files in the order sent."""
    media = parse_media_type(request_type or "")
    if media.kind != "multipart/related":
        raise Problem(415, "unsupported_media_type", 'STOW-RS takes multipart/related; type="application/dicom"')
    inner = media.params.get("type", "application/dicom").lower()
    if inner != "application/dicom":
        raise Problem(415, "unsupported_media_type",
                      f'parts of type {inner} are not supported; send type="application/dicom"')
    boundary = media.params.get("boundary")
    if not boundary:
        raise Problem(400, "bad_request", "the multipart/related Content-Type has no boundary")

    files: list[Path] = []
    current: list[BinaryIO] = []

    def begin() -> None:
        if len(files) >= max_parts:
            raise Problem(413, "too_many_parts", f"at most {max_parts} instances per request")
        path = folder / f"{len(files):06d}-{uuid.uuid4().hex[:8]}.dcm"
        files.append(path)
        current.append(open(path, "wb"))  # noqa: SIM115 - closed at the part's end

    def data(buf: bytes, start: int, end: int) -> None:
        current[-1].write(buf[start:end])

    def end() -> None:
        current.pop().close()

    parser = MultipartParser(boundary, {"on_part_begin": begin, "on_part_data": data, "on_part_end": end},
                             max_header_count=32, max_header_size=16384)
    preamble = _Preamble(boundary.encode("latin-1"))
    try:
        async for chunk in stream:
            parser.write(preamble.past(chunk))
        parser.finalize()
    except (Problem, OSError):  # a refusal, or the disk: not the client's syntax
        raise
    except Exception as exc:  # python-multipart's parse errors
        log.info("unparsable STOW-RS body: %s", exc)
        raise Problem(400, "bad_multipart", "the multipart/related body cannot be parsed") from exc
    finally:
        for handle in current:
            handle.close()
    if current or not files:
        raise Problem(400, "bad_multipart", "the multipart body holds no complete part")
    return files


class _Preamble:
    """Drops whatever precedes the first boundary line: RFC 2046 5.1.1 lets
    a body begin with a preamble that readers must ignore (a MIME library's
    "This is a multi-part message"), and python-multipart skips only blank
    lines. Holds at most a boundary's length of the stream meanwhile."""

    def __init__(self, boundary: bytes) -> None:
        self._delimiter = b"--" + boundary
        self._held = b""
        self._fresh = True  # nothing dropped yet: the body may begin with the delimiter itself
        self._found = False

    def past(self, chunk: bytes) -> bytes:
        """What of `chunk` (and of the chunks before it) follows the preamble."""
        if self._found:
            return chunk
        data = self._held + chunk
        if self._fresh and data.startswith(self._delimiter):
            start = 0
        else:
            at = data.find(b"\r\n" + self._delimiter)
            start = at + 2 if at >= 0 else -1
        if start < 0:
            if self._fresh and self._delimiter.startswith(data):
                self._held = data  # the first bytes so far could still be the delimiter
            else:  # keep what could begin a delimiter line split across chunks
                self._fresh, self._held = False, data[-(len(self._delimiter) + 1):]
            return b""
        self._found = True
        return data[start:]
