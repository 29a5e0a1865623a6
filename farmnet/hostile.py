"""Hostile peers, for tests and bench/hostile.py: what a broken or malicious client does to
the server's listeners, with plain blocking sockets (run them in a thread or another process).

Each function is one attack and returns what the attacker saw; none waits longer than its
``timeout``. They only ever connect to the address they are given.
"""

from __future__ import annotations

import socket
import struct
import time
from typing import Any

from twisted.protocols import amp

from farmnet.protocol import commands as c

__all__ = [
    "amp_login_seconds",
    "command_box",
    "connection_state",
    "non_reading_tool",
    "partial_box",
    "read_box",
    "slow_web_connections",
]

#: Bytes of one AMP value at most.
VALUE_MAX = 0xFFFF


def command_box(command: type[amp.Command], ask: int, **arguments: Any) -> bytes:
    """One command as AMP bytes, asking answer number ``ask``."""
    box = command.makeArguments(arguments, None)
    box[b"_command"], box[b"_ask"] = command.commandName, str(ask).encode()
    return box.serialize()


def hello(ask: int = 1, user: str = "attacker", kind: str = "tool") -> bytes:
    return command_box(c.Hello, ask, protocol=c.PROTOCOL_VERSION, kind=kind, user=user)


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("connection closed")
        data += chunk
    return data


def read_box(sock: socket.socket) -> dict[bytes, bytes]:
    """One AMP box read from ``sock``."""
    box: dict[bytes, bytes] = {}
    while True:
        (length,) = struct.unpack("!H", _recv_exact(sock, 2))
        if length == 0:
            return box
        key = _recv_exact(sock, length)
        (length,) = struct.unpack("!H", _recv_exact(sock, 2))
        box[key] = _recv_exact(sock, length)


def amp_login_seconds(host: str, port: int, timeout: float = 30.0) -> float:
    """Seconds from connecting to the answer of a tool's Hello; raises if it fails."""
    start = time.monotonic()
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(hello(user="prober"))
        answer = read_box(sock)
        if b"_answer" not in answer:
            raise ConnectionError(f"Hello refused: {answer!r}")
        return time.monotonic() - start


def partial_box(host: str, port: int, size: int, *, login: bool = False,
                timeout: float = 30.0) -> tuple[int, str, socket.socket]:
    """Send ``size`` bytes of one box that never ends (key/value pairs, no final empty
    key), after a Hello when ``login``. Returns the bytes of the box sent, how the server
    took it ("open": all sent and still connected; "reset") and the socket, left open
    (the caller closes it)."""
    sock = socket.create_connection((host, port), timeout=timeout)
    if login:
        sock.sendall(hello())
        read_box(sock)
    value = b"x" * VALUE_MAX
    sent = 0
    index = 0
    try:
        while sent < size:
            key = b"k%d" % index
            pair = struct.pack("!H", len(key)) + key + struct.pack("!H", len(value)) + value
            sock.sendall(pair)
            sent += len(pair)
            index += 1
        return sent, connection_state(sock), sock
    except (ConnectionResetError, BrokenPipeError):
        return sent, "reset", sock


def connection_state(sock: socket.socket) -> str:
    """"open", "closed" (the server closed: a FIN) or "reset", without waiting."""
    sock.setblocking(False)
    try:
        return "closed" if sock.recv(1) == b"" else "open"
    except BlockingIOError:
        return "open"
    except OSError:
        return "reset"
    finally:
        sock.setblocking(True)


def non_reading_tool(host: str, port: int, requests: list[bytes], timeout: float = 30.0) -> socket.socket:
    """A logged-in tool that sends ``requests`` (command boxes) and never reads the answers.
    Returns its socket, left open (the caller closes it)."""
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.sendall(hello())
    read_box(sock)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a peer that reads nothing
    for request in requests:
        try:
            sock.sendall(request)
        except (ConnectionResetError, BrokenPipeError, TimeoutError):
            break
    return sock


def slow_web_connections(port: int, count: int, sources: list[str],
                         timeout: float = 5.0) -> tuple[list[socket.socket], int]:
    """Slowloris: ``count`` connections to the web port from each source address
    (127.0.0.x), each sending the start of a request's headers and never the end.
    Returns the connections still open and how many the server refused (reset)."""
    held: list[socket.socket] = []
    refused = 0
    for source in sources:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            try:
                sock.bind((source, 0))
                sock.connect(("127.0.0.1", port))
                sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
                held.append(sock)
            except OSError:
                refused += 1
                sock.close()
    # Refused connections are reset as they arrive: find them out.
    time.sleep(0.2)
    still: list[socket.socket] = []
    for sock in held:
        sock.setblocking(False)
        try:
            data = sock.recv(1)
            if data == b"":
                refused += 1
                sock.close()
                continue
        except BlockingIOError:
            pass
        except OSError:
            refused += 1
            sock.close()
            continue
        still.append(sock)
    return still, refused
