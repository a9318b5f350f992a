"""What crosses the wire: messages with an explicit byte count.

The byte count of a message is computed from its encoding by the code that
encodes it (a compressor, an algorithm's downlink) and passed here explicitly,
as SimGrid does; the size of a Python object never matters.
"""
from __future__ import annotations

from typing import NamedTuple

# Every message carries a fixed header: sender, receiver, round, kind, lengths.
# 64 bytes is the order of an Ethernet + IP + TCP header (14 + 20 + 20 = 54 B)
# plus a small application header; it is a scenario setting (network.header_bytes).
HEADER_BYTES = 64


class Message(NamedTuple):
    """One message (immutable).  A named tuple rather than a frozen dataclass:
    one is made per message sent, and a frozen dataclass's __init__ costs
    several times a tuple's on a replay's hot path."""

    src: str            # node name in the topology graph ("w0", "server")
    dst: str
    kind: str           # "grad", "params", "update", "request", "skip", ...
    round: int
    payload_bytes: int  # encoded payload, from the encoder's formula
    header_bytes: int = HEADER_BYTES

    @property
    def nbytes(self) -> int:
        """Bytes on the wire: header + payload."""
        return self.header_bytes + self.payload_bytes
