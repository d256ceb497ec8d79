"""What our side needs to call a remote DICOM application entity: its
address (`AE@host:port`), the transfer syntaxes we offer and prefer, and
TCP_NODELAY.

Where a peer offers several transfer syntaxes for one presentation context,
we take the one that loses nothing (`preferred`), as dcmtk's storescp and
Orthanc do: a sender that proposes lossy JPEG before Explicit VR Little
Endian for an image it holds uncompressed compresses it lossily if lossy
JPEG is what is accepted.

pynetdicom 3.0 leaves Nagle's algorithm on (it sets only SO_REUSEADDR): a
small PDU written after another (a command, then its data set; a response)
then waits for the peer's delayed ACK, about 40 ms on Linux. Every socket
we open or accept is set TCP_NODELAY once the association is up
(`no_delay`).
"""

from __future__ import annotations

import socket
from collections.abc import Iterable
from dataclasses import dataclass

from pydicom.uid import (
    AllTransferSyntaxes,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom.association import Association

from transcode.codecs.uncompressed_plugin import ENCAPSULATED_UNCOMPRESSED
from transcode.policy import LOSSLESS_SOURCES, LOSSLESS_UNDECODED

#: Encodings that hold pixels as they are, nothing to decode, best first
#: (Explicit VR keeps the VRs of private elements, which Implicit VR loses).
_NATIVE = (ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian)


def _rank(syntax: str) -> int:
    if syntax in _NATIVE:
        return _NATIVE.index(syntax)
    return len(_NATIVE) + (syntax not in LOSSLESS_SOURCES and syntax not in LOSSLESS_UNDECODED)


def preferred(syntaxes: Iterable[str]) -> list[str]:
    """`syntaxes` best first for an archive that must not lose a pixel:
    native encodings, then lossless compression, then the rest (lossy, or
    unknown here) in the order given. The peer's order is kept within each."""
    return sorted(syntaxes, key=_rank)


#: Every transfer syntax pydicom knows, and Encapsulated Uncompressed, best
#: first, offered for storage: what the reader cannot decode is archived as
#: is (kept), never refused.
TRANSFER_SYNTAXES: tuple[str, ...] = tuple(preferred([*AllTransferSyntaxes, ENCAPSULATED_UNCOMPRESSED]))
#: A-ASSOCIATE-RQ carries at most 128 presentation contexts (odd IDs 1-255).
MAX_CONTEXTS = 128
#: The largest PDU a peer may send us (the Maximum Length our A-ASSOCIATE
#: answers and requests carry), for the receiver and for migrations (C-GET
#: and C-MOVE deliveries): 1 MiB instead of pynetdicom's 16 kB, so that a
#: 0.5 MB CT file arrives in a few PDUs rather than 32, each parsed in Python
#: (one association into `listen --ack spooled`: 66 to 102 files/s answered,
#: benchmarks/dimse_throughput.py, README). Bounded: an association holds
#: one PDU in memory at a time.
MAXIMUM_PDU = 1 << 20


@dataclass(frozen=True)
class RemoteAE:
    """A remote application entity: its AE title, host and port."""

    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> RemoteAE:
        """`AE@host:port`; raises ValueError naming what is wrong."""
        ae_title, at, address = text.partition("@")
        host, colon, port = address.rpartition(":")
        if not at or not colon or not host or not port.isdigit():
            raise ValueError(f"{text!r}: expected AE@host:port")
        if not 1 <= len(ae_title) <= 16:
            raise ValueError(f"{text!r}: an AE title is 1 to 16 characters")
        return cls(ae_title, host.strip("[]"), int(port))

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


def no_delay(assoc: Association) -> None:
    """Turn Nagle's algorithm off on the association's socket."""
    sock = assoc.dul.socket.socket if assoc.dul.socket is not None else None
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
