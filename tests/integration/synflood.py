"""A bounded SYN flood over loopback, from spoofed sources, for the hostile-client tests.

:func:`syn_packet` builds one IPv4 + TCP SYN segment by hand (both checksums computed here);
:func:`flood` sends at most ``count`` of them through a raw socket (``IPPROTO_RAW``, which implies
``IP_HDRINCL``: the kernel takes our IP header as it is), each from a random source address in
127.0.0.0/8 and a random source port, to 127.0.0.1:``port``, spread over a given time and never
for longer than a limit. It never answers a SYN-ACK: it has no socket that could.

What happens to the SYN-ACKs, as measured on this machine (Linux 6.18; see
tests/integration/test_hostile_clients.py): all of 127.0.0.0/8 is local on ``lo``, so the
server's SYN-ACK to a spoofed 127.x.y.z comes straight back into the host's own stack, finds no
socket on that port and is answered with a RST, which removes the half-open request from the
listener's SYN queue at once: ``Tcp: AttemptFails`` and ``Tcp: OutRsts`` each grow by one per SYN,
and the SYN queue never fills. Loopback delivery happens inside ``sendto()``, so the whole
SYN, SYN-ACK, RST exchange is over before the next SYN leaves. For a flood whose SYN-ACKs are
lost, as on the Internet, the tests run the server in a network namespace where the spoofed
range is routed, not local (the kernel answers a RST only to a segment routed to a local
address, so there the SYN-ACK is dropped in silence).

Sources avoid 127.0.0.0/16 (the real clients of the tests use 127.0.0.1 and 127.0.0.2) and the
addresses ending in .0 and .255.

Run as a program (root), ``python -m tests.integration.synflood PORT COUNT SECONDS LIMIT``, it
prints one JSON object, ``{"sent": N, "seconds": S}``; a test runs it so that the flood has an
interpreter (and a CPU) of its own.
"""

from __future__ import annotations

import json
import random
import socket
import struct
import sys
import time
from typing import Final

import attrs

#: The TCP header's SYN flag.
SYN: Final = 0x02
#: How many packets go out between two looks at the clock.
BATCH: Final = 250
_TTL: Final = 64
_WINDOW: Final = 64240
#: MSS 1460 (kind 2, length 4): a SYN cookie encodes the MSS, and real clients send one.
_MSS_OPTION: Final = struct.pack("!BBH", 2, 4, 1460)


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of ``data``: the ones' complement of the ones'
    complement sum of its 16-bit big-endian words (an odd length is padded with a zero)."""
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def syn_packet(source: str, source_port: int, destination: str, port: int, seq: int) -> bytes:
    """One IPv4 packet carrying a TCP SYN from ``source:source_port`` to ``destination:port``,
    with initial sequence number ``seq`` and an MSS option; IP and TCP checksums filled in."""
    src, dst = socket.inet_aton(source), socket.inet_aton(destination)
    offset = (20 + len(_MSS_OPTION)) // 4
    tcp = (
        struct.pack("!HHIIBBHHH", source_port, port, seq, 0, offset << 4, SYN, _WINDOW, 0, 0)
        + _MSS_OPTION
    )
    pseudo = src + dst + struct.pack("!BBH", 0, socket.IPPROTO_TCP, len(tcp))
    tcp = tcp[:16] + struct.pack("!H", checksum(pseudo + tcp)) + tcp[18:]
    length = 20 + len(tcp)
    ident = seq & 0xFFFF
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, length, ident, 0, _TTL, socket.IPPROTO_TCP, 0, src, dst
    )
    header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
    return header + tcp


def spoofed_source(rng: random.Random) -> str:
    """A random loopback address outside 127.0.0.0/16, never ending in .0 or .255."""
    return f"127.{rng.randint(1, 254)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"


@attrs.frozen
class Flood:
    """What one flood did: SYNs sent and the seconds it took."""

    sent: int
    seconds: float


def flood(
    port: int, count: int, seconds: float, limit: float, rng: random.Random | None = None
) -> Flood:
    """Send up to ``count`` spoofed SYNs to 127.0.0.1:``port``, spread evenly over ``seconds``,
    and never for longer than ``limit`` seconds (on a machine too busy to keep the pace, what is
    left unsent then is not sent). Needs root."""
    rng = rng or random.Random()
    rate = count / seconds
    started = time.monotonic()
    deadline = started + limit
    sent = 0
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as raw:
        while sent < count and (now := time.monotonic()) < deadline:
            ahead = sent / rate - (now - started)
            if ahead > 0:  # faster than the rate: wait for it
                time.sleep(min(ahead, deadline - now))
                continue
            for _ in range(min(BATCH, count - sent)):
                packet = syn_packet(
                    spoofed_source(rng),
                    rng.randint(1024, 65535),
                    "127.0.0.1",
                    port,
                    rng.getrandbits(32),
                )
                raw.sendto(packet, ("127.0.0.1", 0))
                sent += 1
    return Flood(sent, time.monotonic() - started)


def main(argv: list[str]) -> int:
    """``PORT COUNT SECONDS LIMIT``: flood, then print ``{"sent": N, "seconds": S}``."""
    port, count, seconds, limit = int(argv[0]), int(argv[1]), float(argv[2]), float(argv[3])
    done = flood(port, count, seconds, limit)
    print(json.dumps({"sent": done.sent, "seconds": round(done.seconds, 3)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
