"""The admin manhole, for real on loopback: a telnet client protocol, Debian's OpenSSH client,
a unix socket; password hashing and files; the namespace helpers."""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import stat
import sys
import tempfile
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.conch import telnet
from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, UNIXClientEndpoint, connectProtocol
from twisted.internet.utils import getProcessOutputAndValue
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from farmnet import errors
from farmnet.app import ServerService
from farmnet.config import (
    AfanasyConfig,
    ConfigError,
    ManholeConfig,
    SchedulingConfig,
    ServerConfig,
    StoreConfig,
    WebConfig,
)
from farmnet.model.spec import parse_job
from farmnet.server import passwords
from farmnet.server.manhole import (
    ManholeError,
    load_or_create_host_key,
    make_manhole_services,
    manhole_namespace,
    session_namespace,
    telnet_endpoint,
)
from tests.test_network import time_wait_sockets

PASSWORD = "correct horse"
ANSI = re.compile(rb"\x1b(\[[0-9;?]*[A-Za-z]|[()][A-Za-z0-9]|[A-Za-z=>78])")


def job_doc(name: str = "job", frames: int = 3) -> dict[str, Any]:
    return {"job": {"name": name, "blocks": [
        {"name": "render", "command": "echo @####@", "frame_first": 1, "frame_last": frames}]}}


def clean(data: bytes) -> bytes:
    """Terminal output without escape sequences and carriage returns."""
    return ANSI.sub(b"", data).replace(b"\r", b"")


class TelnetClient(telnet.TelnetProtocol):
    """The client side of a telnet session: agrees to what the manhole negotiates, collects
    the application data, waits for text."""

    def __init__(self) -> None:
        self.data = b""
        self._waiters: list[tuple[bytes, int, defer.Deferred[bytes]]] = []
        self.lost: defer.Deferred[None] = defer.Deferred()

    def enableRemote(self, option: bytes) -> bool:
        return option in (telnet.ECHO, telnet.SGA)

    def enableLocal(self, option: bytes) -> bool:
        return option in (telnet.NAWS, telnet.SGA, telnet.LINEMODE)

    def disableRemote(self, option: bytes) -> None:
        pass

    def disableLocal(self, option: bytes) -> None:
        pass

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        waiting, self._waiters = self._waiters, []
        for text, start, d in waiting:
            self._check(text, start, d)

    def connectionLost(self, reason: Any = None) -> None:
        self.lost.callback(None)

    def _check(self, text: bytes, start: int, d: defer.Deferred[bytes]) -> None:
        cleaned = clean(self.data[start:])
        if text in cleaned:
            d.callback(cleaned)
        else:
            self._waiters.append((text, start, d))

    def wait_for(self, text: bytes, start: int = 0, timeout: float = 10) -> defer.Deferred[bytes]:
        """Fires with the (cleaned) data from ``start`` once it contains ``text``."""
        d: defer.Deferred[bytes] = defer.Deferred()
        d.addTimeout(timeout, reactor)
        self._check(text, start, d)
        return d

    def send(self, line: str) -> int:
        """Send a line; returns where its answer starts in ``data``."""
        mark = len(self.data)
        self.transport.write(line.encode() + b"\n")
        return mark


class LogCapture:
    def __init__(self, test: TestCase | SynchronousTestCase) -> None:
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        test.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def logins(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("kind") == kind and "success" in e]


class ManholeTestCase(TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="farmnet-manhole-"))
        self.addCleanup(shutil.rmtree, self.base, True)
        self.log = LogCapture(self)
        self.passwords = self.base / "manhole.passwords"
        self.passwords.write_text(f"# manhole users\nroot:{passwords.hash_password(PASSWORD)}\n")

    def server(self, **manhole: Any) -> ServerService:
        config = ServerConfig(listen="tcp:0:interface=127.0.0.1",
                              store=StoreConfig(path=str(self.base / "store")),
                              web=WebConfig(listen=""), afanasy=AfanasyConfig(listen=""),
                              scheduling=SchedulingConfig(admins=("alice",)),
                              manhole=ManholeConfig(**manhole))
        server = ServerService(reactor, config)
        self.addCleanup(server.farm.stop)
        return server

    async def start(self, server: ServerService) -> list[Any]:
        config = server.config
        services = make_manhole_services(reactor, config.manhole, manhole_namespace(server),
                                         admins=config.scheduling.admins, store=config.store.path)
        self._services = services
        for svc in services:
            svc.startService()
            self.addCleanup(svc.stopService)
            port = await svc.ready
            self.assertIsNotNone(port, f"{svc.name} did not start")
        return services

    def submit(self, server: ServerService) -> None:
        spec, _ = parse_job(job_doc())
        server.farm.submit(spec, "anna")

    async def telnet(self, endpoint: Any) -> TelnetClient:
        client = TelnetClient()
        await connectProtocol(endpoint, telnet.TelnetTransport(lambda: client))
        self.addCleanup(self.close, client)
        return client

    async def close(self, client: TelnetClient) -> None:
        if not client.lost.called:
            client.transport.loseConnection()
            await client.lost

    async def login(self, client: TelnetClient, user: str, password: str, start: int = 0) -> int:
        """Answer the prompts (the first after ``start``); returns where the answer starts."""
        await client.wait_for(b"Username: ", start)
        await client.wait_for(b"Password: ", client.send(user))
        return client.send(password)


class TelnetTests(ManholeTestCase):
    async def test_login_and_evaluate(self) -> None:
        server = self.server(telnet="tcp:0:interface=127.0.0.1",
                             passwords=str(self.passwords))
        [svc] = await self.start(server)
        self.submit(server)
        client = await self.telnet(TCP4ClientEndpoint(reactor, "127.0.0.1", svc.port.getHost().port))
        await self.login(client, "root", PASSWORD)
        await client.wait_for(b">>> ")

        answer = await client.wait_for(b">>> ", client.send("len(farm.jobs)"))
        self.assertIn(b"\n1\n", answer)
        answer = await client.wait_for(b">>> ", client.send("user, farm.jobs[1].user_name"))
        self.assertIn(b"('root', 'anna')", answer)
        answer = await client.wait_for(b">>> ", client.send("jobs()"))
        self.assertRegex(answer.decode(), r"ID\s+NAME\s+USER\s+STATE.*\n1\s+job\s+anna\s+RDY")

        [event] = self.log.logins("telnet")
        self.assertEqual(event["user"], "root")
        self.assertTrue(event["success"])
        self.assertRegex(event["peer"], r"^127\.0\.0\.1:\d+$")

    async def test_wrong_password_refused(self) -> None:
        server = self.server(telnet="tcp:0:interface=127.0.0.1",
                             passwords=str(self.passwords))
        [svc] = await self.start(server)
        client = await self.telnet(TCP4ClientEndpoint(reactor, "127.0.0.1", svc.port.getHost().port))
        mark = await self.login(client, "root", "wrong horse")
        await client.wait_for(b"Authentication failed\nUsername: ", mark)
        mark = await self.login(client, "mallory", PASSWORD, mark)  # unknown user: refused the same way
        await client.wait_for(b"Authentication failed\nUsername: ", mark)
        self.assertNotIn(b">>>", client.data)
        refused = self.log.logins("telnet")
        self.assertEqual([(e["user"], e["success"]) for e in refused],
                         [("root", False), ("mallory", False)])
        self.assertIn("wrong password", refused[0]["reason"])

    async def test_three_failures_disconnect(self) -> None:
        server = self.server(telnet="tcp:0:interface=127.0.0.1",
                             passwords=str(self.passwords))
        [svc] = await self.start(server)
        client = await self.telnet(TCP4ClientEndpoint(reactor, "127.0.0.1", svc.port.getHost().port))
        mark = 0
        for attempt in range(3):
            mark = await self.login(client, "root", f"guess {attempt}", mark)
            if attempt < 2:
                await client.wait_for(b"Authentication failed\nUsername: ", mark)
        await client.lost.addTimeout(10, reactor)
        self.assertIn(b"Authentication failed", clean(client.data[mark:]))
        self.assertNotIn(b">>>", client.data)
        self.assertEqual(len(self.log.logins("telnet")), 3)

    async def test_unix_socket_mode_600(self) -> None:
        path = self.base / "manhole.sock"
        server = self.server(telnet=f"unix:{path}", passwords=str(self.passwords))
        await self.start(server)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertTrue(stat.S_ISSOCK(os.stat(path).st_mode))
        client = await self.telnet(UNIXClientEndpoint(reactor, str(path)))
        await self.login(client, "root", PASSWORD)
        await client.wait_for(b">>> ")
        answer = await client.wait_for(b">>> ", client.send("6 * 7"))
        self.assertIn(b"\n42\n", answer)
        [event] = self.log.logins("telnet")
        self.assertEqual(event["peer"], f"unix pid={os.getpid()} uid={os.getuid()}")


class SSHTests(ManholeTestCase):
    timeout = 60

    def setUp(self) -> None:
        super().setUp()
        self.ssh = shutil.which("ssh")
        if self.ssh is None:
            raise SkipTest("the OpenSSH client (ssh) is not installed")
        self.key = self.client_key("alice")
        self.other_key = self.client_key("mallory")
        self.authorized = self.base / "authorized_keys"
        self.authorized.write_text(f"# manhole admins\n{self.public_line('alice')}\n")

    def client_key(self, name: str) -> Path:
        key = ed25519.Ed25519PrivateKey.generate()
        path = self.base / f"{name}_key"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as stream:
            stream.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                           serialization.NoEncryption()))
        public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                               serialization.PublicFormat.OpenSSH)
        (self.base / f"{name}_key.pub").write_bytes(public + f" {name}@laptop\n".encode())
        return path

    def public_line(self, name: str) -> str:
        return (self.base / f"{name}_key.pub").read_text().strip()

    async def start_ssh(self) -> tuple[ServerService, int]:
        server = self.server(ssh="tcp:0:interface=127.0.0.1",
                             authorized_keys=str(self.authorized))
        [svc] = await self.start(server)
        return server, svc.port.getHost().port

    async def run_ssh(self, port: int, command: str | None = None, *, options: tuple[str, ...] = (),
                      key: Path | None = None, user: str = "alice",
                      stdin: bytes = b"") -> tuple[bytes, bytes, int]:
        """``ssh [options] user@127.0.0.1 [command]`` with ``stdin``: (out, err, exit code)."""
        argv = ["-F", "/dev/null", "-p", str(port), "-i", str(key or self.key),
                "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none",
                "-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR", *options, f"{user}@127.0.0.1",
                *([command] if command is not None else [])]
        d = getProcessOutputAndValue(self.ssh, argv, env={"PATH": os.environ.get("PATH", "")},
                                     path=str(self.base), reactor=reactor, stdinBytes=stdin)
        return await d.addTimeout(30, reactor)

    async def test_script_on_stdin(self) -> None:
        server, port = await self.start_ssh()
        self.submit(server)
        script = b"len(farm.jobs)\nfor j in farm.jobs.values():\n    print(j.name, j.user_name)\n\nuser\n"
        out, err, code = await self.run_ssh(port, options=("-T",), stdin=script)
        self.assertEqual((out, code), (b"1\njob anna\n'alice'\n", 0), err)

        [event] = self.log.logins("ssh")
        self.assertEqual((event["user"], event["success"]), ("alice", True))
        self.assertRegex(event["peer"], r"^127\.0\.0\.1:\d+$")
        self.assertRegex(event["key"], r"^SHA256:\S+ alice@laptop$")

        host_key = self.base / "store" / "manhole_host_key"
        self.assertEqual(stat.S_IMODE(os.stat(host_key).st_mode), 0o600)

    async def test_command_and_exit_status(self) -> None:
        server, port = await self.start_ssh()
        self.submit(server)
        self.submit(server)
        out, err, code = await self.run_ssh(port, "len(farm.jobs)")
        self.assertEqual((out, code), (b"2\n", 0), err)
        out, err, code = await self.run_ssh(port, "farm.job(99)")
        self.assertEqual(code, 1)
        self.assertIn(b"UnknownJob: no job 99", out)

    async def test_with_a_terminal(self) -> None:
        """-tt: the colored manhole; its prompt, echo and escape codes around the answer."""
        server, port = await self.start_ssh()
        self.submit(server)
        out, err, code = await self.run_ssh(port, options=("-tt",), stdin=b"len(farm.jobs) + 100\r\x04")
        self.assertIn(b"\n101\n>>> ", clean(out), (out, err))
        self.assertEqual(code, 0, err)  # ^D ended the manhole, and the session with status 0

    async def test_unknown_key_refused(self) -> None:
        _, port = await self.start_ssh()
        out, err, code = await self.run_ssh(port, "1 + 1", key=self.other_key)
        self.assertEqual((out, code), (b"", 255))
        self.assertIn(b"Permission denied (publickey)", err)
        refused = self.log.logins("ssh")
        self.assertTrue(refused)
        self.assertEqual({(e["user"], e["success"], e["reason"]) for e in refused},
                         {("alice", False, "key not in the authorized keys")})

    async def test_login_name_must_be_an_admin(self) -> None:
        _, port = await self.start_ssh()
        out, err, code = await self.run_ssh(port, "1 + 1", user="bob")
        self.assertEqual((out, code), (b"", 255))
        self.assertEqual({(e["user"], e["success"], e["reason"]) for e in self.log.logins("ssh")},
                         {("bob", False, "not an admin (server.scheduling.admins)")})

    async def test_authorized_keys_reread(self) -> None:
        _, port = await self.start_ssh()
        self.assertEqual((await self.run_ssh(port, "1", key=self.other_key))[2], 255)
        with self.authorized.open("a") as stream:
            stream.write(self.public_line("mallory") + "\n")
        out, err, code = await self.run_ssh(port, "1 + 1", key=self.other_key)
        self.assertEqual((out, code), (b"2\n", 0), err)


    async def test_sessions_and_shutdown_leave_no_time_wait(self) -> None:
        """Client-first close: SSH sessions that end, and one still open when the listener
        closes its connections (a disconnect message, then close_wait), leave no TIME-WAIT
        socket on the manhole's port."""
        server, port = await self.start_ssh()
        for _ in range(3):
            out, err, code = await self.run_ssh(port, "6 * 7")
            self.assertEqual((out, code), (b"42\n", 0), err)
        held = _HeldStdin()
        argv = [self.ssh, "-F", "/dev/null", "-p", str(port), "-i", str(self.key), "-T",
                "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none",
                "-o", "LogLevel=ERROR", "alice@127.0.0.1"]
        reactor.spawnProcess(held, self.ssh, argv, env={"PATH": os.environ.get("PATH", "")},
                             path=str(self.base))
        self.addCleanup(held.stop)
        held.transport.write(b"print('in')\n")
        await held.saw(b"in")
        [listener] = [svc for svc in self._services if svc.port is not None]
        await listener.close_connections()
        await held.ended.addTimeout(10, reactor)
        self.assertEqual(await time_wait_sockets(port, "sport"), set())


class _HeldStdin(protocol.ProcessProtocol):
    """An ssh client whose stdin stays open: a session that never ends by itself."""

    def __init__(self) -> None:
        self.out = b""
        self.ended: defer.Deferred[None] = defer.Deferred()
        self._waiting: list[tuple[bytes, defer.Deferred[None]]] = []

    def outReceived(self, data: bytes) -> None:
        self.out += data
        for text, d in list(self._waiting):
            if text in self.out:
                self._waiting.remove((text, d))
                d.callback(None)

    def saw(self, text: bytes) -> defer.Deferred[None]:
        d: defer.Deferred[None] = defer.Deferred()
        self._waiting.append((text, d))
        self.outReceived(b"")
        return d.addTimeout(20, reactor)

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(None)

    def stop(self) -> None:
        if not self.ended.called:
            self.transport.signalProcess("KILL")


class ConfigTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="farmnet-manhole-"))
        self.addCleanup(shutil.rmtree, self.base, True)

    def services(self, **kw: Any) -> list[Any]:
        """The manhole services of a ManholeConfig(**kw), with no admins."""
        return make_manhole_services(reactor, ManholeConfig(**kw), {}, admins=(), store=self.base / "store")

    def test_off_by_default(self) -> None:
        self.assertEqual(self.services(), [])

    def test_telnet_must_be_loopback_or_unix(self) -> None:
        for good in ("tcp:1234:interface=127.0.0.1", "tcp:1234:interface=localhost",
                     r"tcp6:1234:interface=\:\:1", "tcp:1234:interface=127.0.0.2"):
            self.assertEqual(telnet_endpoint(good), (good, None))
        self.assertEqual(telnet_endpoint("unix:/run/m.sock"), ("unix:/run/m.sock:mode=600", "/run/m.sock"))
        self.assertEqual(telnet_endpoint("unix:/run/m.sock:mode=0600"), ("unix:/run/m.sock:mode=0600",
                                                                         "/run/m.sock"))
        for bad in ("tcp:1234", "tcp:1234:interface=0.0.0.0", "tcp:1234:interface=192.168.1.2",
                    "ssl:1234:interface=127.0.0.1", "unix:/run/m.sock:mode=666"):
            self.assertRaises(ValueError, telnet_endpoint, bad)

    def test_problems_reported_together(self) -> None:
        keys = self.base / "keys"
        keys.write_text('no-pty ssh-ed25519 AAAA x\n')
        with self.assertRaises(ConfigError) as caught:
            self.services(telnet="tcp:1234", ssh="tcp:2222", authorized_keys=str(keys))
        errors = caught.exception.errors
        self.assertEqual([e.split(":")[0] for e in errors], [
            "server.manhole.telnet", "server.manhole.passwords", "server.scheduling.admins",
            "server.manhole.authorized_keys"])
        self.assertIn(f"{keys}:1: not a public key line", errors[3])

    def test_bad_password_file(self) -> None:
        path = self.base / "pw"
        path.write_text("alice:$scrypt$nonsense\nbob\n")
        with self.assertRaises(ConfigError) as caught:
            self.services(telnet="tcp:0:interface=127.0.0.1", passwords=str(path))
        self.assertEqual(caught.exception.errors, [
            f"server.manhole.passwords: {path}:1: user 'alice': not a $scrypt$ln=..,r=..,p=..$salt$key hash",
            f"server.manhole.passwords: {path}:2: expected user:hash"])

    def test_host_key_created_once_mode_600(self) -> None:
        path = self.base / "sub" / "host_key"
        key = load_or_create_host_key(path)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertEqual(key.sshType(), b"ssh-ed25519")
        self.assertEqual(load_or_create_host_key(path), key)
        os.chmod(path, 0o644)
        self.assertRaises(ManholeError, load_or_create_host_key, path)


class NamespaceTests(SynchronousTestCase):
    def test_helpers(self) -> None:
        base = tempfile.mkdtemp(prefix="farmnet-manhole-")
        self.addCleanup(shutil.rmtree, base, True)
        server = ServerService(reactor, ServerConfig(store=StoreConfig(path=base), web=WebConfig(listen=""),
                                                     scheduling=SchedulingConfig(admins=("alice",))))
        self.addCleanup(server.farm.stop)
        namespace = manhole_namespace(server)
        self.assertEqual({"farm", "scheduler", "server", "service", "config", "outputs", "jobs", "renders",
                          "drain", "explain", "show"} - set(namespace), set())
        self.assertIs(namespace["scheduler"], server.farm.scheduler)
        mine = session_namespace(namespace, "alice")
        self.assertEqual(mine["user"], "alice")
        self.assertEqual(mine["helpers"].user, "alice")
        self.assertEqual(mine["drain"].__self__.user, "alice")
        self.assertNotIn("user", namespace)

        render = server.farm.register_render("r1", capacity=1100)
        mine["drain"]("r1")
        self.assertTrue(render.paused)
        self.assertRaises(errors.PermissionDenied, session_namespace(namespace, "bob")["drain"], "r1")

    def test_tables_and_show(self) -> None:
        base = tempfile.mkdtemp(prefix="farmnet-manhole-")
        self.addCleanup(shutil.rmtree, base, True)
        server = ServerService(reactor, ServerConfig(store=StoreConfig(path=base), web=WebConfig(listen="")))
        self.addCleanup(server.farm.stop)
        namespace = manhole_namespace(server)

        def output(f: Any, *args: Any) -> str:
            stream = io.StringIO()
            with contextlib.redirect_stdout(stream):
                f(*args)
            return stream.getvalue()

        self.assertEqual(output(namespace["jobs"]), "(no jobs)\n")
        self.assertEqual(output(namespace["renders"]), "(no renders)\n")
        spec, _ = parse_job(job_doc("shot010", frames=5))
        job = server.farm.submit(spec, "anna")
        server.farm.register_render("r1", capacity=1100)
        self.assertRegex(output(namespace["jobs"]), r"1\s+shot010\s+anna\s+RDY\s+\d+\s+0%\s+5\s+RDY:5")
        self.assertRegex(output(namespace["renders"]), r"(?m)^1\s+r1\s+\w+\s+0/1100\s+0\s+")
        self.assertIn("'name': 'shot010'", output(namespace["show"], job))
        server.farm.job_action("anna", [job.id], "pause")
        self.assertIn("job is paused", output(namespace["explain"], job.id))


class PasswordTests(SynchronousTestCase):
    def test_hash_and_verify(self) -> None:
        stored = passwords.hash_password("s3cret")
        self.assertTrue(stored.startswith("$scrypt$ln=14,r=8,p=1$"))
        self.assertTrue(passwords.verify(stored, "s3cret"))
        self.assertTrue(passwords.verify(stored, b"s3cret"))
        self.assertFalse(passwords.verify(stored, "s3cret "))
        self.assertFalse(passwords.verify("garbage", "s3cret"))
        self.assertNotEqual(passwords.hash_password("s3cret"), stored)  # a fresh salt each time

    def test_file(self) -> None:
        base = Path(tempfile.mkdtemp(prefix="farmnet-pw-"))
        self.addCleanup(shutil.rmtree, base, True)
        path = base / "pw"
        a, b = passwords.hash_password("a"), passwords.hash_password("b")
        path.write_text(f"# comment\n\nalice:{a}\n  bob : {b}  \n")
        self.assertEqual(passwords.load_password_file(str(path)), {"alice": a, "bob": b})
        path.write_text(f"alice:{a}\nalice:{b}\n")
        with self.assertRaises(passwords.PasswordFileError) as caught:
            passwords.load_password_file(str(path))
        self.assertEqual(caught.exception.errors, [f"{path}:2: user 'alice' again (first on line 1)"])
        with self.assertRaises(passwords.PasswordFileError):
            passwords.load_password_file(str(base / "missing"))


class PasswordCLITests(TestCase):
    timeout = 30

    async def test_prints_a_line(self) -> None:
        out, err, code = await getProcessOutputAndValue(
            sys.executable, ["-m", "farmnet.server.passwords", "carol"], env=dict(os.environ),
            path=str(Path(__file__).resolve().parent.parent), reactor=reactor, stdinBytes=b"hunter2\n")
        self.assertEqual(code, 0, err)
        user, _, stored = out.decode().strip().partition(":")
        self.assertEqual(user, "carol")
        self.assertTrue(passwords.verify(stored, "hunter2"))
