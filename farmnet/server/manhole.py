"""The admin manhole: a Python prompt inside the running server, over telnet or SSH.

Off by default; ``server.manhole.telnet`` and ``server.manhole.ssh`` (Twisted server
endpoint strings) turn it on. Both give Twisted's ``ColoredManhole`` over the namespace
of :func:`manhole_namespace`: ``farm``, ``scheduler``, ``server``, ``service``,
``config``, ``outputs``, ``user`` (who logged in) and the helpers ``jobs()``,
``renders()``, ``drain(render_name)``, ``explain(job_id)`` and ``show(obj)``. Each
session has its own copy of the namespace; the objects in it are the live ones, so
whatever is typed runs in the server's reactor thread: keep it short, never block.

Telnet (clear text) must listen on a loopback interface or on a unix socket, which is
always mode 600 (``mode=600`` is added to the endpoint; any other mode is an error).
Users and passwords come from ``server.manhole.passwords``, ``user:hash`` lines made by
``python -m farmnet.server.passwords USER`` (see :mod:`farmnet.server.passwords`),
re-read at every login. Three wrong passwords and the connection is closed; a login not
done within a minute is dropped too.

SSH takes public keys only, from ``server.manhole.authorized_keys`` (OpenSSH
authorized_keys lines ``TYPE BASE64 [COMMENT]``, no option prefixes; re-read at every
login). Any listed key may log in, and the login name must be one of ``server.scheduling.admins``:
that name is the session's ``user``; the key's fingerprint and comment go to the log.
The host key is ``server.manhole.ssh_host_key`` (default ``<store>/manhole_host_key``),
an ed25519 key generated with mode 600 on first start; a key file readable by others is
refused. With a terminal (``ssh -p PORT admin@host``) it is the full colored manhole;
without one (``ssh -T``, piped input, or a command: ``ssh admin@host 'len(farm.jobs)'``)
it is a plain interpreter for scripts: lines in, results out, no prompts or escape codes,
the session ends at end of input with exit status 1 if any statement raised. Results of
Deferreds that fire after the end of input are lost there; use a terminal for those.

Every login attempt is logged with the structured fields ``kind`` ("telnet"/"ssh"),
``user``, ``peer`` (``host:port``, or ``unix pid=.. uid=..`` from SO_PEERCRED) and
``success``; refusals carry ``reason``, SSH logins ``key`` (fingerprint and comment).

Wiring (farmnet.server.service)::

    for manhole in make_manhole_services(reactor, config.manhole, manhole_namespace(self),
                                         admins=config.scheduling.admins, store=store):
        manhole.setServiceParent(self)
"""

from __future__ import annotations

import ipaddress
import os
import pprint
import socket
import stat
import struct
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import attrs
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.application import service
from twisted.conch import manhole, manhole_tap, telnet
from twisted.conch.checkers import SSHPublicKeyChecker
from twisted.conch.error import ConchError, IgnoreAuthentication, ValidPublicKey
from twisted.conch.insults import insults
from twisted.conch.interfaces import IConchUser, ISession
from twisted.conch.manhole_ssh import ConchFactory, TerminalUser
from twisted.conch.ssh import keys, userauth
from twisted.conch.ssh.common import getNS
from twisted.cred import credentials, portal
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import ISSHPrivateKey
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer, error
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IProtocolFactory
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger
from twisted.python import components
from twisted.python.failure import Failure
from zope.interface import implementer

from farmnet.config import ConfigError, ManholeConfig
from farmnet.protocol.endpoints import split_description
from farmnet.server.netstats import server_statistics, statistics_line
from farmnet.server.passwords import PasswordFileChecker, PasswordFileError, load_password_file

__all__ = [
    "AuthorizedKeysChecker",
    "Helpers",
    "ManholeError",
    "ManholeListener",
    "load_or_create_host_key",
    "make_manhole_services",
    "manhole_namespace",
    "read_authorized_keys",
    "session_namespace",
]

log = Logger()

_AvatarTuple = tuple[Any, Any, Callable[[], None]]

HELPER_NAMES = ("jobs", "renders", "drain", "explain", "show")
HOST_KEY_NAME = "manhole_host_key"


class ManholeError(Exception):
    """A manhole helper or setup step that cannot do what was asked."""


# --- the namespace -----------------------------------------------------------------------


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max([len(title), *(len(row[i]) for row in rows)]) for i, title in enumerate(header)]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
                     for row in [header, *rows])


@attrs.frozen
class Helpers:
    """The manhole's helper functions, acting as ``user`` (who logged in)."""

    service: Any
    user: str = "manhole"

    @property
    def farm(self) -> Any:
        return self.service.farm

    def jobs(self) -> None:
        """Print a table of the jobs."""
        rows = []
        for job in sorted(self.farm.list_jobs(), key=lambda j: j["id"]):
            counts = " ".join(f"{state}:{n}" for state, n in sorted(job.get("counts", {}).items()))
            rows.append([str(job["id"]), str(job.get("name", "")), str(job.get("user_name", "")),
                         str(job.get("state", "")), str(job.get("priority", "")),
                         f"{job.get('progress', 0)}%", str(job.get("tasks", "")), counts])
        if not rows:
            print("(no jobs)")
            return
        print(_table(["ID", "NAME", "USER", "STATE", "PRI", "DONE", "TASKS", "COUNTS"], rows))

    def renders(self) -> None:
        """Print a table of the renders."""
        now = self.farm.clock.seconds()
        rows = []
        for render in sorted(self.farm.list_renders(), key=lambda r: r["id"]):
            seen = render.get("time_seen") or 0.0
            rows.append([str(render["id"]), str(render.get("name", "")), str(render.get("state", "")),
                         f"{render.get('capacity_used', 0)}/{render.get('capacity', 0)}",
                         str(len(render.get("tasks", ()))), str(render.get("platform", "")),
                         f"{now - seen:.0f}s ago" if seen else "never"])
        if not rows:
            print("(no renders)")
            return
        print(_table(["ID", "NAME", "STATE", "CAPACITY", "TASKS", "PLATFORM", "SEEN"], rows))

    def drain(self, render_name: str) -> Any:
        """Stop giving ``render_name`` new tasks (running ones finish): pause the render."""
        result = self.farm.render_action(self.user, [render_name], "pause")
        log.info("manhole: {user} drained render {render}", user=self.user, render=render_name)
        return result

    def explain(self, job_id: int) -> None:
        """Print why job ``job_id`` runs or waits (``Farm.explain``)."""
        self.show(self.farm.explain(job_id))

    def show(self, obj: Any) -> None:
        """Pretty-print ``obj`` (its ``to_dict()`` when it has one)."""
        if callable(getattr(obj, "to_dict", None)):
            obj = obj.to_dict()
        elif attrs.has(type(obj)):
            obj = attrs.asdict(obj, recurse=False)
        pprint.pprint(obj, width=100, sort_dicts=False)


def manhole_namespace(server_service: Any) -> dict[str, Any]:
    """The manhole's namespace for a ``ServerService`` (anything with ``farm``, ``server``,
    ``outputs`` and ``config``)."""
    farm = server_service.farm
    helpers = Helpers(server_service)
    namespace: dict[str, Any] = {
        "farm": farm,
        "scheduler": farm.scheduler,
        "server": server_service.server,
        "service": server_service,
        "config": server_service.config,
        "outputs": server_service.outputs,
        "helpers": helpers,
    }
    namespace.update({name: getattr(helpers, name) for name in HELPER_NAMES})
    namespace["statistics"] = lambda: statistics_line(server_statistics(server_service))
    namespace["connections"] = lambda: [c.label for c in server_service.server.registry]
    namespace["eject"] = server_service.server.eject  # eject(connection_id, reason)
    return namespace


def session_namespace(namespace: dict[str, Any], user: str) -> dict[str, Any]:
    """A copy of ``namespace`` for one session of ``user``: ``user`` set, helpers acting as them."""
    result = dict(namespace)
    result["user"] = user
    helpers = namespace.get("helpers")
    if isinstance(helpers, Helpers):
        bound = attrs.evolve(helpers, user=user)
        result["helpers"] = bound
        for name in HELPER_NAMES:
            if result.get(name) == getattr(helpers, name):
                result[name] = getattr(bound, name)
    return result


# --- logging -----------------------------------------------------------------------------


def describe_peer(transport: Any) -> str:
    """``host:port`` of a TCP peer; ``unix pid=.. uid=..`` of a unix one (Linux SO_PEERCRED)."""
    try:
        address = transport.getPeer()
    except Exception:
        return "?"
    if isinstance(address, IPv4Address):
        return f"{address.host}:{address.port}"
    if isinstance(address, IPv6Address):
        return f"[{address.host}]:{address.port}"
    if isinstance(address, UNIXAddress):
        option = getattr(socket, "SO_PEERCRED", None)
        try:
            raw = transport.getHandle().getsockopt(socket.SOL_SOCKET, option, struct.calcsize("3i"))
            pid, uid, _gid = struct.unpack("3i", raw)
        except (AttributeError, OSError, TypeError, struct.error):
            return "unix"
        return f"unix pid={pid} uid={uid}"
    return str(address)


def _log_login(kind: str, user: str, peer: str, success: bool, reason: str = "", key: str = "") -> None:
    if success:
        log.info("manhole {kind} login: {user} from {peer}" + (" with key {key}" if key else ""),
                 kind=kind, user=user, peer=peer, success=True, key=key)
    else:
        log.warn("manhole {kind} login refused: {user!r} from {peer}: {reason}",
                 kind=kind, user=user, peer=peer, success=False, reason=reason, key=key)


def _text(name: bytes | str) -> str:
    return name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)


# --- endpoints ---------------------------------------------------------------------------


def _endpoint_fields(description: str) -> tuple[str, list[str], dict[str, str]]:
    """(type, positional arguments, keyword arguments) of an endpoint string, ``\\:`` unescaped."""
    args, kwargs = split_description(description)
    return args[0].strip().lower(), args[1:], kwargs


def _is_loopback(interface: str) -> bool:
    if interface.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(interface).is_loopback
    except ValueError:
        return False


def telnet_endpoint(description: str) -> tuple[str, str | None]:
    """The endpoint string to listen on for telnet and, for a unix socket, its path.

    Only a loopback TCP interface or a unix socket (forced to mode 600) is accepted:
    telnet sends passwords in clear text. Raises ValueError saying what is wrong.
    """
    kind, args, kwargs = _endpoint_fields(description)
    if kind in ("tcp", "tcp6"):
        interface = kwargs.get("interface", args[1] if len(args) > 1 else "")
        if not _is_loopback(interface):
            where = repr(interface) if interface else "every interface"
            raise ValueError("telnet sends passwords in clear text: listen on a loopback interface "
                             f"(add :interface=127.0.0.1) or a unix socket, not on {where}")
        return description, None
    if kind == "unix":
        path = kwargs.get("address", args[0] if args else "")
        if "mode" not in kwargs:
            description = f"{description}:mode=600"
        else:
            try:
                mode = int(kwargs["mode"], 8)
            except ValueError:
                mode = -1
            if mode != 0o600:
                raise ValueError(f"the telnet unix socket must be mode 600, not {kwargs['mode']}")
        return description, path
    raise ValueError("telnet must listen on a loopback tcp endpoint (tcp:PORT:interface=127.0.0.1) "
                     "or a unix socket (unix:PATH)")


class ManholeListener(service.Service):
    """Listens on ``description`` with the factory ``make_factory()`` builds at start.

    ``ready`` fires with the listening port (or None after a failure, which is logged
    and stops the reactor, as the server's other listeners do). With ``unix_path`` the
    socket's mode is checked to be 600 after listening.
    """

    def __init__(self, reactor: Any, kind: str, description: str,
                 make_factory: Callable[[], IProtocolFactory], unix_path: str | None = None) -> None:
        self.reactor = reactor
        self.kind = kind
        self.description = description
        self.make_factory = make_factory
        self.unix_path = unix_path
        self.port: IListeningPort | None = None
        self.ready: defer.Deferred[IListeningPort | None] | None = None
        self.setName(f"manhole-{kind}")

    async def _listen(self) -> IListeningPort:
        factory = self.make_factory()
        port = await serverFromString(self.reactor, self.description).listen(factory)
        if self.unix_path is not None:
            mode = stat.S_IMODE(os.stat(self.unix_path).st_mode)
            if mode != 0o600:
                await port.stopListening()
                raise ManholeError(f"{self.unix_path}: socket is mode {mode:o}, not 600")
        self.port = port
        log.info("manhole ({kind}) listening on {endpoint}", kind=self.kind, endpoint=self.description)
        return port

    def startService(self) -> None:
        super().startService()
        self.ready = defer.ensureDeferred(self._listen())
        self.ready.addErrback(self._failed)

    def _failed(self, failure: Failure) -> None:
        log.failure("manhole ({kind}): cannot listen on {endpoint}", failure, kind=self.kind,
                    endpoint=self.description)
        self.reactor.callWhenRunning(self.reactor.stop)
        return None

    def stopService(self) -> Any:
        super().stopService()
        if self.port is not None:
            port, self.port = self.port, None
            return port.stopListening()
        return None


# --- telnet ------------------------------------------------------------------------------


class _TelnetSession(telnet.TelnetBootstrapProtocol):
    """The REPL after a telnet login; logs the session's end."""

    def __init__(self, user: str, peer: str, namespace: dict[str, Any]) -> None:
        super().__init__(insults.ServerProtocol, manhole.ColoredManhole, namespace)
        self.user = user
        self.peer = peer

    def connectionLost(self, reason: Any) -> None:
        log.info("manhole telnet session of {user} from {peer} ended", kind="telnet",
                 user=self.user, peer=self.peer)
        super().connectionLost(reason)


@implementer(portal.IRealm)
class _TelnetRealm:
    def __init__(self, namespace: dict[str, Any]) -> None:
        self.namespace = namespace

    def requestAvatar(self, avatarId: Any, mind: Any, *interfaces: Any) -> _AvatarTuple:
        if telnet.ITelnetProtocol not in interfaces:
            raise NotImplementedError("the telnet manhole only provides ITelnetProtocol")
        user = _text(avatarId)
        peer = mind if isinstance(mind, str) else "?"
        session = _TelnetSession(user, peer, session_namespace(self.namespace, user))
        return telnet.ITelnetProtocol, session, lambda: None


class _TelnetLogin(telnet.AuthenticatingTelnetProtocol):
    """Twisted's username/password prompt, with logging, a login timeout, a delay after a
    wrong password and a limit on attempts."""

    def __init__(self, portal: portal.Portal, clock: Any, failure_delay: float,
                 login_timeout: float, max_failures: int) -> None:
        super().__init__(portal)
        self.clock = clock
        self.failure_delay = failure_delay
        self.login_timeout = login_timeout
        self.max_failures = max_failures
        self.failures = 0
        self.peer = "?"
        self.lost = False
        self._calls: list[Any] = []

    def _later(self, delay: float, f: Callable[[], None]) -> None:
        self._calls = [call for call in self._calls if call.active()]
        self._calls.append(self.clock.callLater(delay, f))

    def _cancel_calls(self) -> None:
        for call in self._calls:
            if call.active():
                call.cancel()
        self._calls = []

    def connectionMade(self) -> None:
        self.peer = describe_peer(self.transport.transport)
        self._later(self.login_timeout, self._timed_out)
        super().connectionMade()

    def connectionLost(self, reason: Any) -> None:
        self.lost = True
        self._cancel_calls()
        super().connectionLost(reason)

    def _timed_out(self) -> None:
        log.info("manhole telnet login from {peer} timed out", kind="telnet", peer=self.peer)
        self.transport.write(b"\nLogin timed out\n")
        self.transport.loseConnection()

    def telnet_Password(self, line: bytes) -> str:
        username, password = self.username, line
        del self.username

        def login(_: object) -> None:
            if self.lost:
                return
            d = self.portal.login(credentials.UsernamePassword(username, password), self.peer,
                                  telnet.ITelnetProtocol)
            d.addCallbacks(self._logged_in, self._refused, callbackArgs=(username,),
                           errbackArgs=(username,))

        # Once the client stopped hiding the password; if it never agreed to hide it, at once.
        self.transport.wont(telnet.ECHO).addBoth(login)
        return "Discard"

    def _logged_in(self, result: tuple[Any, Any, Callable[[], None]], username: bytes) -> None:
        interface, protocol, logout = result
        if self.lost:
            logout()
            return
        self._cancel_calls()
        _log_login("telnet", _text(username), self.peer, True)
        self.protocol = protocol
        self.logout = logout
        self.state = "Command"
        protocol.makeConnection(self.transport)
        self.transport.protocol = protocol

    def _refused(self, failure: Failure, username: bytes) -> None:
        if not failure.check(UnauthorizedLogin):
            log.failure("manhole telnet: error checking the login of {user!r}", failure,
                        user=_text(username))
        _log_login("telnet", _text(username), self.peer, False, failure.getErrorMessage())
        if self.lost:
            return
        self.failures += 1
        if self.failures >= self.max_failures:
            self.transport.write(b"\nAuthentication failed\n")
            self.transport.loseConnection()
            return
        self._later(self.failure_delay, self._prompt_again)

    def _prompt_again(self) -> None:
        self.transport.write(b"\nAuthentication failed\nUsername: ")
        self.state = "User"


class _TelnetFactory(ServerFactory):
    def __init__(self, portal: portal.Portal, clock: Any, failure_delay: float = 1.0,
                 login_timeout: float = 60.0, max_failures: int = 3) -> None:
        self.portal = portal
        self.clock = clock
        self.failure_delay = failure_delay
        self.login_timeout = login_timeout
        self.max_failures = max_failures

    def buildProtocol(self, addr: Any) -> telnet.TelnetTransport:
        protocol = telnet.TelnetTransport(_TelnetLogin, self.portal, self.clock, self.failure_delay,
                                          self.login_timeout, self.max_failures)
        protocol.factory = self
        return protocol


def make_telnet_factory(reactor: Any, passwords_path: str, namespace: dict[str, Any], *,
                        failure_delay: float = 1.0, login_timeout: float = 60.0,
                        max_failures: int = 3) -> ServerFactory:
    """The telnet manhole's factory: logins checked against ``passwords_path``."""
    checker = PasswordFileChecker(passwords_path, reactor)
    return _TelnetFactory(portal.Portal(_TelnetRealm(namespace), [checker]), reactor,
                          failure_delay, login_timeout, max_failures)


# --- SSH keys ----------------------------------------------------------------------------


def _fingerprint(key: keys.Key) -> str:
    return "SHA256:" + key.fingerprint(keys.FingerprintFormats.SHA256_BASE64).rstrip("=")


def _read_host_key(path: Path) -> keys.Key:
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & 0o077:
        raise ManholeError(f"{path}: the SSH host key is readable by others (mode {mode:o}); chmod 600 it")
    try:
        key = keys.Key.fromString(path.read_bytes())
    except keys.EncryptedKeyError:
        raise ManholeError(f"{path}: the SSH host key must not have a passphrase") from None
    except (keys.BadKeyError, ValueError) as exc:
        raise ManholeError(f"{path}: not a private key: {exc}") from None
    if key.isPublic():
        raise ManholeError(f"{path}: a public key, not the private host key")
    return key


def load_or_create_host_key(path: str | Path) -> keys.Key:
    """The private host key in ``path``; a new ed25519 key (mode 600) if there is none."""
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        pem = ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption())
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as stream:
            stream.write(pem)
        key = _read_host_key(path)
        log.info("manhole: generated SSH host key {path} ({fingerprint})", path=str(path),
                 fingerprint=_fingerprint(key))
        return key
    return _read_host_key(path)


@attrs.frozen
class AuthorizedKey:
    key: keys.Key
    comment: str
    line: int


def read_authorized_keys(path: str) -> tuple[list[AuthorizedKey], list[str]]:
    """The keys of an authorized_keys file and its problems (``path:line: ...``).

    An unreadable file is an OSError. Lines are ``TYPE BASE64 [COMMENT]``; blank lines and
    ``#`` comments are skipped; a line with options before the key type is a problem.
    """
    with open(path, "rb") as stream:
        lines = stream.read().splitlines()
    found: list[AuthorizedKey] = []
    problems: list[str] = []
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith(b"#"):
            continue
        fields = line.split(None, 2)
        try:
            if len(fields) < 2:
                raise keys.BadKeyError("expected TYPE BASE64 [COMMENT]")
            key = keys.Key.fromString(fields[0] + b" " + fields[1])
            if not key.isPublic():
                raise keys.BadKeyError("not a public key")
        except (keys.BadKeyError, ValueError, TypeError) as exc:
            problems.append(f"{path}:{number}: not a public key line ({exc}; options before the key "
                            "type are not supported)")
            continue
        comment = _text(fields[2]) if len(fields) > 2 else ""
        found.append(AuthorizedKey(key, comment, number))
    return found, problems


@attrs.define
class AuthorizedKeys:
    """An IAuthorizedKeysDB: the keys of ``path`` (re-read at every lookup) for ``users``."""

    path: str
    users: frozenset[str]

    def read(self) -> list[AuthorizedKey]:
        try:
            found, problems = read_authorized_keys(self.path)
        except OSError as exc:
            log.error("manhole: cannot read authorized keys {path}: {error}", path=self.path,
                      error=exc.strerror or str(exc))
            return []
        for problem in problems:
            log.warn("manhole: {problem}", problem=problem)
        return found

    def getAuthorizedKeys(self, username: bytes) -> list[keys.Key]:
        if _text(username) not in self.users:
            return []
        return [entry.key for entry in self.read()]

    def find(self, key: keys.Key) -> AuthorizedKey | None:
        return next((entry for entry in self.read() if entry.key == key), None)


@implementer(ICredentialsChecker)
class AuthorizedKeysChecker:
    """SSH public keys from :class:`AuthorizedKeys`; signatures checked by Twisted's
    ``SSHPublicKeyChecker``. Unlike that checker alone, a key offered without a signature
    is accepted only if it would be authorized, so clients move on to their next key."""

    credentialInterfaces = (ISSHPrivateKey,)

    def __init__(self, keys_db: AuthorizedKeys) -> None:
        self.keys_db = keys_db
        self._verifier = SSHPublicKeyChecker(keys_db)

    def _refusal(self, credentials: Any) -> str | None:
        if _text(credentials.username) not in self.keys_db.users:
            return "not an admin (server.scheduling.admins)"
        try:
            key = keys.Key.fromString(credentials.blob)
        except keys.BadKeyError:
            return "unsupported key"
        if self.keys_db.find(key) is None:
            return "key not in the authorized keys"
        return None

    def requestAvatarId(self, credentials: Any) -> defer.Deferred[Any]:
        refusal = self._refusal(credentials)
        if refusal is not None:
            return defer.fail(UnauthorizedLogin(refusal))
        if not credentials.signature:
            return defer.fail(ValidPublicKey())
        return self._verifier.requestAvatarId(credentials)


# --- SSH sessions ------------------------------------------------------------------------


class _Interpreter(manhole.ManholeInterpreter):
    """ManholeInterpreter that notes errors, for the exit status of scripted sessions."""

    failed = False

    def showtraceback(self) -> None:
        self.failed = True
        super().showtraceback()

    def showsyntaxerror(self, filename: str | None = None, **kwargs: Any) -> None:
        self.failed = True
        super().showsyntaxerror(filename, **kwargs)


class _LineManhole:
    """The manhole without a terminal: each input line goes to a ManholeInterpreter,
    output goes back as it is (no prompts, no escape codes, no echo).

    It is the transport of the SSH session's process protocol ``proto``: ``write`` is
    input from the client; ``finish`` ends the session with an exit status.
    """

    def __init__(self, proto: Any, namespace: dict[str, Any], clock: Any) -> None:
        self.proto = proto
        self.clock = clock
        self.buffer = b""
        self.more = False
        self.finished = False
        self.at_line_start = True
        self.interpreter = _Interpreter(self, dict(namespace))

    # input (the client's data)
    def write(self, data: bytes) -> None:
        if self.finished:
            return
        self.buffer += data
        while b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            self._push(line)

    def writeSequence(self, seq: list[bytes]) -> None:
        self.write(b"".join(seq))

    def loseConnection(self) -> None:
        self.finished = True

    def _push(self, line: bytes) -> None:
        text = line.rstrip(b"\r").decode("utf-8", "replace").encode("utf-8")
        self.more = bool(self.interpreter.push(text))
        self._end_line()

    # output (from ManholeInterpreter)
    def addOutput(self, data: str | bytes, isAsync: bool | None = None) -> None:
        if self.finished or not data:
            return
        raw = data.encode("utf-8") if isinstance(data, str) else data
        self.proto.write(raw)
        self.at_line_start = raw.endswith(b"\n")
        if isAsync:
            self._end_line()

    def _end_line(self) -> None:
        if not self.at_line_start and not self.finished:
            self.proto.write(b"\n")
            self.at_line_start = True

    def finish(self) -> None:
        """End of input: run what is left, then close with exit status 0 (1 if anything raised)."""
        if self.finished:
            return
        if self.buffer:
            line, self.buffer = self.buffer, b""
            self._push(line)
        if self.more:
            self._push(b"")
        self.finished = True
        status = 1 if self.interpreter.failed else 0
        reason = error.ProcessDone(0) if status == 0 else error.ProcessTerminated(exitCode=status)
        # Next turn: the exec request that may have led here is answered first.
        self.clock.callLater(0, self.proto.processEnded, Failure(reason))


@attrs.define
class _Pipe:
    """A minimal transport: ``write`` and ``loseConnection`` call the given functions."""

    write: Callable[[bytes], None]
    loseConnection: Callable[[], None]

    def writeSequence(self, seq: list[bytes]) -> None:
        self.write(b"".join(seq))


@implementer(ISession)
class ManholeSession:
    """An SSH session: the colored manhole with a pty, a :class:`_LineManhole` without."""

    def __init__(self, namespace: dict[str, Any], clock: Any) -> None:
        self.namespace = namespace
        self.clock = clock
        self.size: tuple[int, int] | None = None  # (width, height) once a pty was asked for
        self.terminal: Any = None
        self.lines: _LineManhole | None = None

    def getPty(self, term: bytes, windowSize: tuple[int, ...], modes: Any) -> None:
        rows, cols = windowSize[:2]
        self.size = (cols or 80, rows or 24)

    def openShell(self, proto: Any) -> None:
        if self.size is None:
            self._plain(proto)
            return
        self.terminal = terminal = manhole_tap.chainedProtocolFactory(self.namespace)()
        # As manhole_ssh.TerminalSessionTransport, except that the manhole's end (^D, quit)
        # ends the session with exit status 0, so ssh exits 0 rather than 255.
        ended = False

        def end() -> None:
            nonlocal ended
            if not ended:
                ended = True
                proto.processEnded(Failure(error.ProcessDone(0)))

        def lost() -> None:
            nonlocal ended
            if not ended:
                ended = True
                terminal.connectionLost(Failure(error.ConnectionDone()))

        terminal.makeConnection(_Pipe(proto.write, end))
        proto.makeConnection(_Pipe(terminal.dataReceived, lost))
        terminal.terminalProtocol.terminalSize(*self.size)

    def _plain(self, proto: Any) -> _LineManhole:
        self.lines = _LineManhole(proto, self.namespace, self.clock)
        proto.makeConnection(self.lines)
        return self.lines

    def execCommand(self, proto: Any, command: bytes) -> None:
        lines = self._plain(proto)
        lines.write(command + b"\n")
        lines.finish()

    def windowChanged(self, newWindowSize: tuple[int, ...]) -> None:
        if self.terminal is not None and self.terminal.terminalProtocol is not None:
            rows, cols = newWindowSize[:2]
            self.terminal.terminalProtocol.terminalSize(cols, rows)

    def eofReceived(self) -> None:
        if self.lines is not None:
            self.lines.finish()
        elif self.terminal is not None:
            self.terminal.loseConnection()

    def closed(self) -> None:
        if self.lines is not None:
            self.lines.finished = True


@implementer(portal.IRealm)
class _SSHRealm:
    def __init__(self, namespace: dict[str, Any], clock: Any) -> None:
        self.namespace = namespace
        self.clock = clock

    def requestAvatar(self, avatarId: Any, mind: Any, *interfaces: Any) -> _AvatarTuple:
        if IConchUser not in interfaces:
            raise NotImplementedError("the SSH manhole only provides IConchUser")
        user = _text(avatarId)
        component = components.Componentized()
        avatar = TerminalUser(component, avatarId)
        component.setComponent(IConchUser, avatar)
        component.setComponent(ISession, ManholeSession(session_namespace(self.namespace, user), self.clock))

        def logout() -> None:
            log.info("manhole ssh session of {user} ended", kind="ssh", user=user)

        return IConchUser, avatar, logout


class _UserAuth(userauth.SSHUserAuthServer):
    """The server's ssh-userauth service, logging each login attempt (not the probes)."""

    def tryAuth(self, kind: bytes, user: bytes, data: bytes) -> defer.Deferred[Any]:
        d = super().tryAuth(kind, user, data)
        if kind == b"none":  # what methods are there? not a login attempt
            return d
        peer = describe_peer(self.transport.transport)
        key = self._key_text(kind, data)

        def succeeded(result: Any) -> Any:
            _log_login("ssh", _text(user), peer, True, key=key)
            return result

        def failed(reason: Failure) -> Failure:
            if not reason.check(IgnoreAuthentication):
                message = reason.getErrorMessage() if reason.check(UnauthorizedLogin, ConchError) \
                    else f"error: {reason.getErrorMessage()}"
                _log_login("ssh", _text(user), peer, False, message, key=key)
            return reason

        return d.addCallbacks(succeeded, failed)

    def _key_text(self, kind: bytes, data: bytes) -> str:
        if kind != b"publickey":
            return ""
        try:
            _algorithm, blob, _rest = getNS(data[1:], 2)
            key = keys.Key.fromString(blob)
        except Exception:
            return "(unparsable key)"
        text = _fingerprint(key)
        keys_db = getattr(self.transport.factory, "manhole_keys", None)
        entry = keys_db.find(key) if keys_db is not None else None
        if entry is not None and entry.comment:
            text += f" {entry.comment}"
        return text


def make_ssh_factory(portal_: portal.Portal, host_key: keys.Key,
                     keys_db: AuthorizedKeys | None = None) -> ConchFactory:
    """The SSH manhole's factory, with ``host_key`` and login logging."""
    factory = ConchFactory(portal_)
    key_type = host_key.sshType()
    # Instance attributes: ConchFactory's class-level dicts are shared by every instance.
    factory.publicKeys = {key_type: host_key.public()}
    factory.privateKeys = {key_type: host_key}
    factory.services = {**factory.services, b"ssh-userauth": _UserAuth}
    factory.manhole_keys = keys_db
    return factory


# --- the services ------------------------------------------------------------------------


def make_manhole_services(reactor: Any, config: ManholeConfig, namespace: dict[str, Any], *,
                          admins: Iterable[str], store: Path | str) -> list[service.IService]:
    """The manhole's listening services (``IService``) per ``config`` (``server.manhole``): none
    when both ``telnet`` and ``ssh`` are empty; ``admins`` may log in over SSH, whose host key is
    kept in ``store`` by default. Raises ConfigError listing every
    problem with the manhole settings (files are checked here, before anything starts)."""
    problems: list[str] = []
    services: list[service.IService] = []

    if config.telnet:
        try:
            description, unix_path = telnet_endpoint(config.telnet)
            serverFromString(reactor, description)
        except ValueError as exc:
            problems.append(f"server.manhole.telnet: {exc}")
        if not config.passwords:
            problems.append("server.manhole.passwords: needed by server.manhole.telnet "
                            "(user:hash lines from python -m farmnet.server.passwords USER)")
        else:
            try:
                if not load_password_file(config.passwords):
                    log.warn("manhole: {path} has no users: no one can log in over telnet",
                             path=config.passwords)
            except PasswordFileError as exc:
                problems.extend(f"server.manhole.passwords: {problem}" for problem in exc.errors)
        if not problems:
            factory = make_telnet_factory(reactor, config.passwords, namespace)
            services.append(ManholeListener(reactor, "telnet", description, lambda: factory, unix_path))

    if config.ssh:
        try:
            serverFromString(reactor, config.ssh)
        except ValueError as exc:
            problems.append(f"server.manhole.ssh: {exc}")
        if not admins:
            problems.append("server.scheduling.admins: empty, but server.manhole.ssh needs it "
                            "(SSH manhole logins use an admin's name)")
        keys_path = config.authorized_keys
        if not keys_path:
            problems.append("server.manhole.authorized_keys: needed by server.manhole.ssh")
        else:
            try:
                found, key_problems = read_authorized_keys(keys_path)
            except OSError as exc:
                problems.append(f"server.manhole.authorized_keys: {keys_path}: cannot read: "
                                f"{exc.strerror or exc}")
            else:
                problems.extend(f"server.manhole.authorized_keys: {problem}" for problem in key_problems)
                if not found and not key_problems:
                    log.warn("manhole: {path} has no keys: no one can log in over SSH", path=keys_path)
        host_key_path = Path(config.ssh_host_key or Path(store) / HOST_KEY_NAME)
        if host_key_path.exists():
            try:
                _read_host_key(host_key_path)
            except (OSError, ManholeError) as exc:
                problems.append(f"server.manhole.ssh_host_key: {exc}")
        if not problems:
            keys_db = AuthorizedKeys(keys_path, frozenset(admins))
            ssh_portal = portal.Portal(_SSHRealm(namespace, reactor), [AuthorizedKeysChecker(keys_db)])

            def ssh_factory() -> ConchFactory:
                return make_ssh_factory(ssh_portal, load_or_create_host_key(host_key_path), keys_db)

            services.append(ManholeListener(reactor, "ssh", config.ssh, ssh_factory))

    if problems:
        raise ConfigError(problems)
    return services
