"""What our side needs to call a remote DICOM application entity: its
address (`AE@host:port`), the transfer syntaxes we offer, and TCP_NODELAY.

pynetdicom 3.0 leaves Nagle's algorithm on (it sets only SO_REUSEADDR): a
small PDU written after another (a command, then its data set; a response)
then waits for the peer's delayed ACK, about 40 ms on Linux. Every socket
we open or accept is set TCP_NODELAY once the association is up
(`no_delay`).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from pydicom.uid import AllTransferSyntaxes
from pynetdicom.association import Association

#: Every transfer syntax pydicom knows, offered for storage: what the reader
#: cannot decode is archived as is (kept), never refused.
TRANSFER_SYNTAXES: tuple[str, ...] = tuple(AllTransferSyntaxes)
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
