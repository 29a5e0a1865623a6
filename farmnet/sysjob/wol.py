"""Wake-on-LAN: send magic packets to wake sleeping renders (the system job's ``wakeonlan`` block).

Afanasy's work-flow, kept as is: the server asks an idle render to sleep (it runs ``wolsleep``); later, when
the farm needs it, the server adds a ``wolwake MAC1 MAC2 ...`` task to the system job's wakeonlan block; an
online render runs that task, which the ``wakeonlan`` service turns into::

    python -m farmnet.sysjob.wol --broadcast 255.255.255.255 --port 9 MAC1 MAC2 ...

and this module sends one magic packet per MAC address, over UDP, to the broadcast address.  A MAC may be
written ``aa:bb:cc:dd:ee:ff``, ``aa-bb-cc-dd-ee-ff`` or ``aabbccddeeff`` (any case).  An invalid MAC is
reported and nothing at all is sent (exit status 2), so a typo never half-wakes a farm silently; a send
that fails (no route, broadcast refused) exits with status 1.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from typing import Any

from twisted.internet.error import CannotListenError
from twisted.internet.protocol import DatagramProtocol

__all__ = ["MAGIC_PREFIX", "main", "magic_packet", "normalize_mac", "parse_args", "send"]

#: A magic packet starts with six 0xFF bytes, then holds the MAC sixteen times.
MAGIC_PREFIX = b"\xff" * 6
_MAC = re.compile(r"[0-9a-f]{2}(?:([:-]?)[0-9a-f]{2}(?:\1[0-9a-f]{2}){4})", re.IGNORECASE)

#: Exit status for bad arguments (an invalid MAC), as argparse uses.
EXIT_USAGE = 2


def normalize_mac(mac: str) -> bytes:
    """The six bytes of ``mac`` (``aa:bb:..``, ``aa-bb-..`` or ``aabb..``); ValueError if it is not one."""
    text = mac.strip()
    if not _MAC.fullmatch(text):
        raise ValueError(f"invalid MAC address {mac!r} (expected e.g. aa:bb:cc:dd:ee:ff)")
    return bytes.fromhex(re.sub(r"[:-]", "", text))


def magic_packet(mac: str) -> bytes:
    """The Wake-on-LAN magic packet for ``mac``: 6 x 0xFF, then the MAC 16 times (102 bytes)."""
    return MAGIC_PREFIX + normalize_mac(mac) * 16


def send(reactor: Any, packets: Sequence[bytes], address: str, port: int) -> None:
    """Send each packet once to ``(address, port)`` from a fresh UDP port with SO_BROADCAST set."""
    udp = reactor.listenUDP(0, DatagramProtocol())
    try:
        udp.setBroadcastAllowed(True)
        for packet in packets:
            udp.write(packet, (address, port))
    finally:
        udp.stopListening()


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m farmnet.sysjob.wol", description="Send Wake-on-LAN magic packets."
    )
    parser.add_argument("--broadcast", default="255.255.255.255", help="broadcast address (IPv4)")
    parser.add_argument("--port", type=int, default=9, help="UDP port (default 9, the discard port)")
    parser.add_argument("macs", nargs="+", metavar="MAC", help="MAC addresses to wake")
    return parser.parse_args(argv)


async def main(reactor: Any, *argv: str) -> None:
    args = parse_args(argv)
    packets: list[bytes] = []
    bad = []
    for mac in args.macs:
        try:
            packets.append(magic_packet(mac))
        except ValueError as e:
            bad.append(str(e))
    if bad:
        for message in bad:
            print(f"wol: {message}", file=sys.stderr)
        print("wol: nothing sent", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)
    try:
        send(reactor, packets, args.broadcast, args.port)
    except (OSError, ValueError, CannotListenError) as e:  # no route, broadcast refused, not an IP...
        print(f"wol: sending to {args.broadcast}:{args.port} failed: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    for mac in args.macs:
        print(f"wol: magic packet for {mac} sent to {args.broadcast}:{args.port}")


if __name__ == "__main__":
    from twisted.internet.task import react

    react(main, sys.argv[1:])
