"""Accept headers as DICOMweb clients really send them, and what to answer.

Clients differ in small ways that matter: OHIF quotes parameters
(`multipart/related; type="application/octet-stream"; transfer-syntax=*`),
Cornerstone3D does not (`type=application/octet-stream; transfer-syntax=*`),
dicomweb-client sends lists of alternatives, browsers send `*/*` with
q-values, curl sends nothing. PS3.18 8.7.3 gives the defaults: a frame asked
for as `application/octet-stream` without a transfer syntax is Explicit VR
Little Endian; `image/jphc` is HTJ2K.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field

EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
HTJ2K_SYNTAXES = ("1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203")
UNCOMPRESSED = (EXPLICIT_LE, IMPLICIT_LE)
_BIG_ENDIAN = "1.2.840.10008.1.2.2"
_DEFLATED = "1.2.840.10008.1.2.1.99"

#: The single-frame media type of each compressed transfer syntax (PS3.18 Table 8.7.3-5).
MEDIA_TYPES = {
    **dict.fromkeys(("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57",
                     "1.2.840.10008.1.2.4.70"), "image/jpeg"),
    **dict.fromkeys(("1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"), "image/jls"),
    **dict.fromkeys(("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"), "image/jp2"),
    **dict.fromkeys(HTJ2K_SYNTAXES, "image/jphc"),
    "1.2.840.10008.1.2.5": "image/dicom-rle",
}
OCTET = "application/octet-stream"
#: Syntaxes whose every frame is also, byte for byte, a frame of others, which a
#: client may name: HTJ2K Lossless RPCL only constrains HTJ2K Lossless's
#: progression order, decompositions and markers, and HTJ2K admits lossless
#: codestreams (PS3.5 10.18). Sent under the name asked for; the bytes are the same.
ALSO_VALID_AS = {
    "1.2.840.10008.1.2.4.202": ("1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.203"),
    "1.2.840.10008.1.2.4.201": ("1.2.840.10008.1.2.4.203",),
}

# One element of a comma-separated list: quoted strings may hold commas and semicolons.
_ITEM = re.compile(r'(?:[^,"]|"(?:[^"\\]|\\.)*")+')
_PARAM = re.compile(r';\s*([^=;\s]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')


class NotAcceptable(ValueError):
    """Nothing the client accepts can be produced; the message says what can."""


@dataclass(frozen=True)
class MediaRange:
    """One alternative of an Accept header: `kind` ("multipart/related",
    "image/*", ...), its parameters (names lower-cased, values unquoted)."""

    kind: str
    params: dict[str, str] = field(default_factory=dict)
    q: float = 1.0


def parse_media_type(item: str) -> MediaRange:
    """One media type with its parameters (a Content-Type, or one Accept alternative)."""
    kind = item.split(";", 1)[0].strip().lower()
    params = {}
    for name, value in _PARAM.findall(item):
        value = value.strip()
        if value.startswith('"') and value.endswith('"') and len(value) >= 2:
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        params[name.lower()] = value
    try:
        q = float(params.pop("q", "1"))
    except ValueError:
        q = 1.0
    return MediaRange(kind, params, q)


def parse_accept(header: str | None) -> list[MediaRange]:
    """The alternatives in preference order (q descending, then as listed);
    q=0 alternatives are dropped. No header means `*/*`."""
    if not header or not header.strip():
        return [MediaRange("*/*")]
    ranges = [parse_media_type(m.group(0)) for m in _ITEM.finditer(header) if m.group(0).strip()]
    order = sorted(range(len(ranges)), key=lambda i: (-ranges[i].q, i))
    return [ranges[i] for i in order if ranges[i].q > 0 and ranges[i].kind]


def _matches(pattern: str, media_type: str) -> bool:
    if pattern in ("*/*", "*"):
        return True
    if pattern.endswith("/*"):
        return media_type.split("/", 1)[0] == pattern[:-2]
    return pattern == media_type


@dataclass(frozen=True)
class FrameChoice:
    """How frames go out: `decode` to native little-endian pixel bytes, or the
    stored bytes as they are; as multipart parts or one single-part body."""

    media_type: str
    transfer_syntax: str
    decode: bool
    multipart: bool

    @property
    def part_type(self) -> str:
        """Each part's Content-Type, transfer syntax included (Cornerstone3D
        reads it to decide whether it may decode partial data)."""
        return f"{self.media_type}; transfer-syntax={self.transfer_syntax}"


def _as_stored(syntax: str | None, stored: str) -> str | None:
    """The name under which frames stored as `stored` go out as they are to
    a client asking for `syntax` (None or `*`: any), or None if they cannot."""
    if syntax in (None, "*", stored):
        return stored
    return syntax if syntax in ALSO_VALID_AS.get(stored, ()) else None


def _frame_option(media_type: str, syntax: str | None, stored: str, decodable: bool) -> tuple[str, str, bool] | None:
    """(media type, transfer syntax, decode) for one requested inner type, or None."""
    stored_type = MEDIA_TYPES.get(stored, OCTET)
    if media_type == OCTET:
        if syntax is not None and (name := _as_stored(syntax, stored)):
            return OCTET, name, False
        wanted = syntax or EXPLICIT_LE  # PS3.18 8.7.3.5.2: the default for octet-stream
        if wanted in UNCOMPRESSED and decodable:
            return OCTET, wanted, stored not in UNCOMPRESSED
        return None
    if media_type == "*/*" or stored_type != OCTET and media_type in ("image/*", stored_type):
        name = _as_stored(syntax, stored)
        return (stored_type, name, False) if name else None
    return None


#: Accept headers longer than this (normalised) are answered without the cache: it holds
#: at most 1024 entries of this size, whatever clients send (the head's size is capped too).
CACHED_ACCEPT = 256


def choose_frames(accept: str | None, stored: str, *, single: bool, decodable: bool = True) -> FrameChoice:
    """Pick the representation of frames stored as `stored` for this Accept
    header. `single`: one frame was asked for, so a single-part body is
    possible. `decodable`: frames can be decoded to native pixels.

    A pure function of what clients send again and again, so cached, keyed
    by the header with its white space collapsed, and only when short."""
    key = " ".join(accept.split()) if accept else None
    if key is not None and len(key) > CACHED_ACCEPT:
        return _choose_frames(key, stored, single, decodable)
    return _cached_choice(key, stored, single, decodable)


def _choose_frames(accept: str | None, stored: str, single: bool, decodable: bool) -> FrameChoice:
    if stored in (_BIG_ENDIAN, _DEFLATED):
        stored = EXPLICIT_LE  # frames of these are served as native little-endian bytes
    for r in parse_accept(accept):
        syntax = r.params.get("transfer-syntax")
        if r.kind in ("multipart/related", "multipart/*", "*/*"):
            inner = r.params.get("type", OCTET).lower() if r.kind == "multipart/related" else OCTET
            option = _frame_option(inner, syntax, stored, decodable)
            if option:
                return FrameChoice(*option, multipart=True)
        elif single:
            option = _frame_option(r.kind, syntax, stored, decodable)
            if option:
                return FrameChoice(*option, multipart=False)
    offers = [f'multipart/related; type="{MEDIA_TYPES[stored]}"'] if stored in MEDIA_TYPES else []
    offers += [f'multipart/related; type="{OCTET}"; transfer-syntax=*']
    if decodable:
        offers.append(f'multipart/related; type="{OCTET}"; transfer-syntax={EXPLICIT_LE}')
    raise NotAcceptable(f"frames are stored as {stored}; acceptable: {' or '.join(offers)}")


_cached_choice = functools.lru_cache(maxsize=1024)(_choose_frames)


def level_refusal(choice: FrameChoice, stored: str, *, has_levels: bool) -> str | None:
    """Why `?level=` cannot be honoured for frames stored as `stored` and
    sent as `choice`, or None when it can. Levels are byte prefixes of the
    codestreams this archive wrote (`has_levels`): an instance kept as is
    (a lossy JPEG, a .203 HTJ2K) has none, whatever the client accepts."""
    if not has_levels:
        return (f"resolution levels exist only for instances stored as HTJ2K Lossless RPCL "
                f"(1.2.840.10008.1.2.4.202) by this archive; this one is kept as is in {stored}: "
                "ask without level")
    if choice.decode:
        return ("level applies to frames sent as stored HTJ2K (accept image/jphc or application/octet-stream "
                "with transfer-syntax=*), not to decoded ones")
    return None


@dataclass(frozen=True)
class InstanceChoice:
    """How instances go out: as multipart parts or one application/dicom
    body; as stored, or converted to Explicit VR Little Endian."""

    multipart: bool
    convert: bool


def choose_instances(accept: str | None, stored: set[str], *, single: bool, convertible: bool) -> InstanceChoice:
    """Part 10 objects as stored (no transfer-syntax, `*`, or the one they
    are stored in), or converted to Explicit VR Little Endian when the
    client names that syntax and every instance can be (`convertible`).
    Other syntaxes are not produced (frames decode through /frames)."""
    for r in parse_accept(accept):
        syntax = r.params.get("transfer-syntax")
        as_stored = syntax in (None, "*") or stored <= {syntax}
        convert = not as_stored and convertible and syntax == EXPLICIT_LE
        if not (as_stored or convert):
            continue
        if r.kind == "multipart/related" and r.params.get("type", "application/dicom").lower() == "application/dicom":
            return InstanceChoice(multipart=True, convert=convert)
        if r.kind in ("*/*", "multipart/*"):
            return InstanceChoice(multipart=True, convert=convert)
        if single and r.kind == "application/dicom":
            return InstanceChoice(multipart=False, convert=convert)
    offers = "no transfer-syntax, transfer-syntax=*"
    if convertible:
        offers += f" or transfer-syntax={EXPLICIT_LE}"
    raise NotAcceptable(
        f"instances are stored as {', '.join(sorted(stored))}; accept "
        f'multipart/related; type="application/dicom" with {offers}'
    )


def accepts_json(accept: str | None) -> bool:
    """Whether the client takes application/dicom+json (or plain JSON)."""
    return any(_matches(r.kind, "application/dicom+json") or r.kind == "application/json"
               for r in parse_accept(accept))


def choose_image(accept: str | None, query_accept: str | None = None) -> str:
    """image/jpeg (the default, PS3.18 8.3.5.1.2) or image/png for rendered
    resources; the `accept` query parameter takes precedence over the header."""
    for r in parse_accept(query_accept or accept):
        for media_type in ("image/jpeg", "image/png"):
            if _matches(r.kind, media_type):
                return media_type
    raise NotAcceptable("rendered images are image/jpeg or image/png")
