"""Client-first close on every listener, against a real ``twistd farmnet server`` on
127.0.0.1: web requests (keep-alive or not, a client that never closes, one that never
sends a request) and telnet manhole sessions leave no TIME-WAIT socket on the server's
ports, and neither does a clean shutdown with such connections open."""

from __future__ import annotations

import http.client
import shutil
import signal
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from farmnet.server import passwords
from farmnet.testing import ProcessFarm
from tests.test_network import time_wait_sockets

PASSWORD = "correct horse"
CLOSE_WAIT = 0.5

SERVER_YAML = f"""\
server:
  stats:
    enabled: false
  connections:
    close_wait: {CLOSE_WAIT}
  web:
    idle_timeout: 1
    header_timeout: 1
  manhole:
    telnet: tcp:0:interface=127.0.0.1
    passwords: {{passwords}}
"""


def port_of(address_file: Path) -> int:
    return int(address_file.read_text().strip().rsplit(":", 1)[1])


def http_get(port: int, path: str = "/api/farm", keep_alive: bool = True) -> tuple[int, str | None]:
    """One request with http.client (HTTP/1.1, keep-alive unless asked); it closes the
    connection itself once the response says ``Connection: close``."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={} if keep_alive else {"Connection": "close"})
        response = conn.getresponse()
        response.read()
        return response.status, response.getheader("connection")
    finally:
        conn.close()


def held_request(port: int, version: str = "1.1") -> tuple[bytes, str]:
    """A raw request asking for keep-alive, the answer read, and the socket kept open
    until the server ends it: returns the response head and how it ended."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"GET /api/farm HTTP/{version}\r\nHost: 127.0.0.1\r\n"
                     "Connection: keep-alive\r\n\r\n".encode())
        data = b""
        ended = "open"
        try:
            while chunk := sock.recv(65536):
                data += chunk
            ended = "eof"
        except ConnectionResetError:
            ended = "reset"
        except TimeoutError:
            ended = "timeout"
        return data.split(b"\r\n\r\n", 1)[0], ended


def silent_connection(port: int) -> str:
    """Connects and never sends: how the server ends it."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        try:
            return "eof" if sock.recv(1) == b"" else "data"
        except ConnectionResetError:
            return "reset"
        except TimeoutError:
            return "timeout"


def telnet_session(port: int, ending: bytes) -> bytes:
    """Log in to the telnet manhole (answering no negotiation), evaluate, then send
    ``ending`` (ctrl-D) and read until the server ends the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        seen = b""

        def read_until(text: bytes) -> None:
            nonlocal seen
            deadline = time.monotonic() + 10
            while text not in seen and time.monotonic() < deadline:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                seen += chunk

        read_until(b"Username: ")
        sock.sendall(b"root\r\n")
        read_until(b"Password: ")
        sock.sendall(PASSWORD.encode() + b"\r\n")
        read_until(b">>> ")
        sock.sendall(b"6 * 7\r\n")
        read_until(b"42")
        sock.sendall(ending)
        try:
            while sock.recv(4096):
                pass
        except ConnectionResetError:
            pass
        return seen


class ClientFirstTests(TestCase):
    timeout = 120

    async def setUp(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="farmnet-clientfirst-"))
        self.addCleanup(shutil.rmtree, self.base, True)
        users = self.base / "manhole.passwords"
        users.write_text(f"root:{passwords.hash_password(PASSWORD)}\n")
        config = self.base / "server.yaml"
        config.write_text(SERVER_YAML.format(passwords=users))
        self.farm = ProcessFarm(reactor, self.base)
        self.addCleanup(self.farm.stop)
        await self.farm.start_server("--config", str(config), "--web", "tcp:0:interface=127.0.0.1")
        store = self.base / "server-store"
        for name in ("web.address", "manhole-telnet.address"):
            for _ in range(200):
                if (store / name).exists():
                    break
                await deferLater(reactor, 0.05)
        self.web = port_of(store / "web.address")
        self.telnet = port_of(store / "manhole-telnet.address")

    async def assert_no_time_wait(self, port: int) -> None:
        self.assertEqual(await time_wait_sockets(port, "sport"), set(),
                         f"TIME-WAIT sockets on the server's port {port}")

    async def test_web_requests_leave_no_time_wait_on_the_server(self) -> None:
        for keep_alive in (True, False) * 10:
            status, connection = await deferToThread(http_get, self.web, keep_alive=keep_alive)
            self.assertEqual((status, connection), (200, "close"))
        # The clients closed first: the TIME-WAIT sockets are theirs.
        self.assertGreaterEqual(len(await time_wait_sockets(self.web, "dport")), 15)
        # Clients that read the answer but never close, HTTP/1.1 and 1.0: reset after close_wait.
        for version in ("1.1", "1.0", "1.1"):
            head, ended = await deferToThread(held_request, self.web, version)
            self.assertIn(b" 200 ", head.split(b"\r\n")[0])
            self.assertIn(b"connection: close", head.lower())
            self.assertEqual(ended, "reset")
        # A client that never sends a request: ended by the header deadline, with a reset.
        self.assertEqual(await deferToThread(silent_connection, self.web), "reset")
        await self.assert_no_time_wait(self.web)

    async def test_manhole_sessions_leave_no_time_wait_on_the_server(self) -> None:
        for _ in range(3):
            seen = await deferToThread(telnet_session, self.telnet, b"\x04")
            self.assertIn(b"42", seen)
        await self.assert_no_time_wait(self.telnet)

    async def test_shutdown_with_open_connections_leaves_no_time_wait(self) -> None:
        web_idle = [deferToThread(silent_connection, self.web) for _ in range(3)]
        web_held = [deferToThread(held_request, self.web) for _ in range(3)]
        # A telnet session that stays logged in (its client never closes on its own).
        sock = socket.create_connection(("127.0.0.1", self.telnet), timeout=10)
        self.addCleanup(sock.close)
        await deferLater(reactor, 0.3)
        server = self.farm.server
        assert server is not None
        ended = server.watch.ended
        server.signal(signal.SIGTERM)
        how = await ended
        # A clean stop: twistd ends by the signal it got, not with the failure status 1.
        self.assertIn(how.exitCode if how.exitCode is not None else -how.signal, (0, -signal.SIGTERM),
                      server.tail())
        results: list[Any] = [await d for d in web_idle] + [(await d)[1] for d in web_held]
        self.assertEqual(results, ["reset"] * 6)
        await self.assert_no_time_wait(self.web)
        await self.assert_no_time_wait(self.telnet)
