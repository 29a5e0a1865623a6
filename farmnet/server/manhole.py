"""The admin manhole: a Python prompt inside the running server, over telnet or SSH.

Off by default; ``server.manhole.telnet`` and ``server.manhole.ssh`` (Twisted server
endpoint strings) turn it on. Both give Twisted's ``ColoredManhole``; each session has
its own copy of the namespace of :mod:`farmnet.server.manhole_namespace` (live objects:
whatever is typed runs in the server's reactor thread, so keep it short, never block).

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

Wiring (farmnet.app)::

    for manhole in make_manhole_services(reactor, config.manhole, manhole_namespace(self),
                                         admins=config.scheduling.admins, store=store):
        manhole.setServiceParent(self)
"""

from __future__ import annotations

import ipaddress
import os
import socket
import stat
import struct
from collections.abc import Iterable
from functools import partial
from pathlib import Path
from typing import Any

import attrs
from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.conch import manhole, manhole_tap, telnet
from twisted.conch.checkers import InMemorySSHKeyDB, SSHPublicKeyChecker
from twisted.conch.error import ConchError, IgnoreAuthentication
from twisted.conch.insults import insults
from twisted.conch.interfaces import IConchUser
from twisted.conch.manhole_ssh import ConchFactory, TerminalRealm, TerminalSession, TerminalSessionTransport
from twisted.conch.ssh import keys, session, userauth
from twisted.conch.ssh import transport as ssh_transport
from twisted.conch.ssh.common import getNS
from twisted.cred import portal
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import ISSHPrivateKey
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer, error, protocol
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import ServerFactory
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.protocols import policies
from twisted.python.failure import Failure
from zope.interface import implementer

from farmnet.config import ConfigError, ManholeConfig
from farmnet.protocol.endpoints import split_description
from farmnet.server.listening import ClientFirstConnection, ConnectionBudget, Listener
from farmnet.server.manhole_namespace import manhole_namespace, session_namespace
from farmnet.server.passwords import PasswordFileChecker, PasswordFileError, load_password_file

__all__ = [
    "AuthorizedKeysChecker",
    "ManholeError",
    "load_or_create_host_key",
    "make_manhole_services",
    "manhole_namespace",
    "read_authorized_keys",
    "session_namespace",
    "telnet_endpoint",
]

log = Logger()

HOST_KEY_NAME = "manhole_host_key"
#: Telnet logins: seconds before a wrong password is answered, refusals before the
#: connection is closed, seconds a login may take.
FAILURE_DELAY = 1.0
MAX_FAILURES = 3
LOGIN_TIMEOUT = 60.0


class ManholeError(Exception):
    """The SSH host key cannot be used."""


# --- logging -----------------------------------------------------------------------------


def describe_peer(transport: Any) -> str:
    """``host:port`` of a TCP peer; ``unix pid=.. uid=..`` of a unix one (Linux SO_PEERCRED)."""
    address = transport.getPeer()
    if isinstance(address, IPv4Address):
        return f"{address.host}:{address.port}"
    if isinstance(address, IPv6Address):
        return f"[{address.host}]:{address.port}"
    if isinstance(address, UNIXAddress):
        try:
            handle = transport.getHandle()
            pid, uid, _gid = struct.unpack("3i", handle.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
        except (AttributeError, OSError, struct.error):
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


# --- telnet ------------------------------------------------------------------------------


def _is_loopback(interface: str) -> bool:
    try:
        return interface.lower() == "localhost" or ipaddress.ip_address(interface).is_loopback
    except ValueError:
        return False


def telnet_endpoint(description: str) -> tuple[str, str | None]:
    """The endpoint string to listen on for telnet and, for a unix socket, its path.

    Only a loopback TCP interface or a unix socket (forced to mode 600) is accepted:
    telnet sends passwords in clear text. Raises ValueError saying what is wrong.
    """
    args, kwargs = split_description(description)
    kind, args = args[0].strip().lower(), args[1:]
    if kind in ("tcp", "tcp6"):
        interface = kwargs.get("interface", args[1] if len(args) > 1 else "")
        if not _is_loopback(interface):
            where = repr(interface) if interface else "every interface"
            raise ValueError("telnet sends passwords in clear text: listen on a loopback interface "
                             f"(add :interface=127.0.0.1) or a unix socket, not on {where}")
        return description, None
    if kind == "unix":
        path = kwargs.get("address", args[0] if args else "")
        mode = kwargs.get("mode")
        if mode is None:
            return f"{description}:mode=600", path
        if mode.lstrip("0") != "600":
            raise ValueError(f"the telnet unix socket must be mode 600, not {mode}")
        return description, path
    raise ValueError("telnet must listen on a loopback tcp endpoint (tcp:PORT:interface=127.0.0.1) "
                     "or a unix socket (unix:PATH)")


class _TelnetTransport(telnet.TelnetTransport):
    def wont(self, option: bytes) -> defer.Deferred[Any]:
        """Never fails: conch logs in only once the client agreed to echo again, so a client
        that does not negotiate (``nc -U`` on the unix socket) would never get in."""
        return super().wont(option).addErrback(lambda _: None)


class _TelnetLogin(telnet.AuthenticatingTelnetProtocol, policies.TimeoutMixin):
    """Conch's username and password prompt; each attempt is logged with the peer, a
    refusal is answered after FAILURE_DELAY s, the MAX_FAILURES-th closes the connection,
    and so does a login not done within LOGIN_TIMEOUT s."""

    def __init__(self, checked: portal.Portal, clock: Any) -> None:
        super().__init__(self)  # conch logs in with self.portal.login: ours, below
        self.checked = checked
        self.clock = clock
        self.failures = 0
        self.peer = "?"

    def callLater(self, period: float, func: Any) -> Any:  # TimeoutMixin's timer
        return self.clock.callLater(period, func)

    def connectionMade(self) -> None:
        self.peer = describe_peer(self.transport.transport)
        self.setTimeout(LOGIN_TIMEOUT)
        super().connectionMade()

    def connectionLost(self, reason: Failure) -> None:
        self.setTimeout(None)
        super().connectionLost(reason)

    def timeoutConnection(self) -> None:
        log.info("manhole telnet login from {peer} timed out", kind="telnet", peer=self.peer)
        self.transport.write(b"\nLogin timed out\n")
        self.transport.loseConnection()

    def login(self, credentials: Any, mind: Any, *interfaces: Any) -> defer.Deferred[Any]:
        user = _text(credentials.username)
        d = self.checked.login(credentials, self.peer, *interfaces)
        return d.addCallbacks(self._logged_in, self._refused, (user,), None, (user,))

    def _logged_in(self, result: Any, user: str) -> Any:
        _log_login("telnet", user, self.peer, True)
        self.setTimeout(None)
        return result

    def _refused(self, failure: Failure, user: str) -> Any:
        if not failure.check(UnauthorizedLogin):
            log.failure("manhole telnet: error checking the login of {user!r}", failure, user=user)
        _log_login("telnet", user, self.peer, False, failure.getErrorMessage())
        self.failures += 1
        if self.failures >= MAX_FAILURES:
            self.transport.write(b"\nAuthentication failed\n")
            self.transport.loseConnection()
            return defer.Deferred()  # never fires: no prompt again
        return deferLater(self.clock, FAILURE_DELAY, lambda: failure)


class _TelnetSession(telnet.TelnetBootstrapProtocol):
    """The colored manhole after a telnet login. It logs its end itself: conch never calls
    the realm's logout once the session has taken over the connection."""

    def __init__(self, namespace: dict[str, Any], ended: Any) -> None:
        super().__init__(insults.ServerProtocol, manhole.ColoredManhole, namespace)
        self.ended = ended

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)
        self.ended()


@implementer(portal.IRealm)
@attrs.frozen
class _TelnetRealm:
    """A login gets a session over its own namespace."""

    namespace: dict[str, Any]

    def requestAvatar(self, avatarId: Any, mind: Any, *interfaces: Any) -> tuple[Any, Any, Any]:
        if telnet.ITelnetProtocol not in interfaces:
            raise NotImplementedError("the telnet manhole only provides ITelnetProtocol")
        user = _text(avatarId)
        ended = partial(log.info, "manhole telnet session of {user} from {peer} ended", kind="telnet",
                        user=user, peer=mind)
        session = _TelnetSession(session_namespace(self.namespace, user), ended)
        return telnet.ITelnetProtocol, session, lambda: None


def make_telnet_factory(reactor: Any, passwords_path: str, namespace: dict[str, Any]) -> ServerFactory:
    """The telnet manhole's factory: logins checked against ``passwords_path``."""
    checked = portal.Portal(_TelnetRealm(namespace), [PasswordFileChecker(passwords_path, reactor)])
    return ServerFactory.forProtocol(partial(_TelnetTransport, _TelnetLogin, checked, reactor))


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
    if path.exists():
        return _read_host_key(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as stream:
        stream.write(keys.Key(ed25519.Ed25519PrivateKey.generate()).toString("OPENSSH"))
    key = _read_host_key(path)
    log.info("manhole: generated SSH host key {path} ({fingerprint})", path=str(path),
             fingerprint=_fingerprint(key))
    return key


def read_authorized_keys(path: str) -> tuple[list[tuple[keys.Key, str]], list[str]]:
    """The (key, comment) pairs of an authorized_keys file and its bad lines (``path:line: ...``).

    Conch's ``readAuthorizedKeyFile`` drops comments and line numbers, which the log and
    the configuration errors need. An unreadable file is an OSError; ``TYPE BASE64
    [COMMENT]`` lines only (no options before the key type).
    """
    found: list[tuple[keys.Key, str]] = []
    problems: list[str] = []
    with open(path, "rb") as stream:
        for number, line in enumerate(stream, 1):
            fields = line.split(None, 2)
            if not fields or fields[0].startswith(b"#"):
                continue
            try:
                found.append((keys.Key.fromString(b" ".join(fields[:2])),
                               _text(fields[2]).strip() if len(fields) > 2 else ""))
            except (keys.BadKeyError, ValueError, TypeError) as exc:
                problems.append(f"{path}:{number}: not a public key line ({exc}; options before the key "
                                "type are not supported)")
    return found, problems


@implementer(ICredentialsChecker)
@attrs.frozen
class AuthorizedKeysChecker:
    """Admins' keys from an authorized_keys file, re-read at every login; signatures
    checked by conch's SSHPublicKeyChecker. Refusals say why, and a key not listed is
    refused before the client signs with it, so clients move on to their next key."""

    credentialInterfaces = (ISSHPrivateKey,)
    path: str
    admins: frozenset[str]

    def authorized(self) -> list[tuple[keys.Key, str]]:
        try:
            found, problems = read_authorized_keys(self.path)
        except OSError as exc:
            log.error("manhole: cannot read authorized keys {path}: {error}", path=self.path,
                      error=exc.strerror or str(exc))
            return []
        for problem in problems:
            log.warn("manhole: {problem}", problem=problem)
        return found

    def describe(self, key: keys.Key) -> str:
        """The key's fingerprint, and its comment in the file."""
        comment = next((comment for listed, comment in self.authorized() if listed == key), "")
        return f"{_fingerprint(key)} {comment}".rstrip()

    def requestAvatarId(self, credentials: Any) -> defer.Deferred[Any]:
        if _text(credentials.username) not in self.admins:
            return defer.fail(UnauthorizedLogin("not an admin (server.scheduling.admins)"))
        try:
            key = keys.Key.fromString(credentials.blob)
        except keys.BadKeyError:
            return defer.fail(UnauthorizedLogin("unsupported key"))
        if all(listed != key for listed, _ in self.authorized()):
            return defer.fail(UnauthorizedLogin("key not in the authorized keys"))
        verifier = SSHPublicKeyChecker(InMemorySSHKeyDB({credentials.username: [key]}))
        return verifier.requestAvatarId(credentials)


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


class _LineManhole(protocol.Protocol):
    """The manhole without a terminal, for scripts (conch has only the terminal one):
    lines in, output out, no prompts, echo or escape codes. Its transport is the SSH
    session's process protocol; :meth:`end` ends the session with an exit status."""

    def __init__(self, namespace: dict[str, Any], clock: Any) -> None:
        self.clock = clock
        self.interpreter = _Interpreter(self, dict(namespace))
        self.buffer = b""
        self.more = False
        self.ended = False
        self.at_line_start = True

    def dataReceived(self, data: bytes) -> None:
        *lines, self.buffer = (self.buffer + data).split(b"\n")
        for line in lines:
            self._push(line)

    def _push(self, line: bytes) -> None:
        if not self.ended:
            text = line.rstrip(b"\r").decode("utf-8", "replace").encode("utf-8")
            self.more = bool(self.interpreter.push(text))
            self._end_line()

    def addOutput(self, data: str | bytes, isAsync: bool | None = None) -> None:
        """Output of the interpreter."""
        if self.ended or not data:
            return
        raw = data.encode("utf-8") if isinstance(data, str) else data
        self.transport.write(raw)
        self.at_line_start = raw.endswith(b"\n")
        if isAsync:
            self._end_line()

    def _end_line(self) -> None:
        if not self.at_line_start and not self.ended:
            self.transport.write(b"\n")
            self.at_line_start = True

    def end(self) -> None:
        """End of input: run what is left, then exit with status 0 (1 if anything raised)."""
        if self.ended:
            return
        rest, self.buffer = self.buffer, b""
        if rest:
            self._push(rest)
        if self.more:
            self._push(b"")
        self.ended = True
        status = 1 if self.interpreter.failed else 0
        reason = error.ProcessDone(0) if status == 0 else error.ProcessTerminated(exitCode=status)
        # Next turn: the exec request that may have led here is answered first.
        self.clock.callLater(0, self.transport.processEnded, Failure(reason))

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.ended = True


@attrs.frozen
class _ExitZero:
    """An SSH session's process protocol, ended with exit status 0 when the colored
    manhole ends (^D, quit): conch closes without one, and ssh exits 255."""

    proto: Any

    def __getattr__(self, name: str) -> Any:
        return getattr(self.proto, name)

    def loseConnection(self) -> None:
        self.proto.processEnded(Failure(error.ProcessDone(0)))


class ManholeSession(TerminalSession):
    """Conch's terminal session (the colored manhole) when a pty was asked for; without
    one (``ssh -T``, a command) the line manhole."""

    pty = False
    terminal: TerminalSessionTransport | None = None
    lines: _LineManhole | None = None

    def __init__(self, namespace: dict[str, Any], clock: Any, avatar: Any) -> None:
        super().__init__(avatar)
        self.namespace = namespace
        self.clock = clock

    def getPty(self, term: bytes, windowSize: tuple[int, ...], modes: Any) -> None:
        rows, cols = windowSize[:2]
        self.pty, self.height, self.width = True, rows or 24, cols or 80

    def openShell(self, proto: Any) -> None:
        if self.pty:
            self.terminal = TerminalSessionTransport(_ExitZero(proto), self.chainedProtocolFactory(),
                                                     IConchUser(self.original), self.width, self.height)
        else:
            self._lines(proto)

    def _lines(self, proto: Any) -> _LineManhole:
        self.lines = lines = _LineManhole(self.namespace, self.clock)
        lines.makeConnection(proto)
        proto.makeConnection(session.wrapProtocol(lines))
        return lines

    def execCommand(self, proto: Any, command: bytes) -> None:
        lines = self._lines(proto)
        lines.dataReceived(command + b"\n")
        lines.end()

    def windowChanged(self, newWindowSize: tuple[int, ...]) -> None:
        if self.terminal is not None:
            rows, cols = newWindowSize[:2]
            self.terminal.chainedProtocol.terminalProtocol.terminalSize(cols, rows)

    def eofReceived(self) -> None:
        if self.lines is not None:
            self.lines.end()
        elif self.terminal is not None:
            self.terminal.chainedProtocol.loseConnection()


@implementer(portal.IRealm)
@attrs.frozen
class _SSHRealm:
    """Conch's TerminalRealm for each login, over that admin's namespace."""

    namespace: dict[str, Any]
    clock: Any

    def requestAvatar(self, avatarId: Any, mind: Any, *interfaces: Any) -> tuple[Any, Any, Any]:
        user = _text(avatarId)
        namespace = session_namespace(self.namespace, user)
        realm = TerminalRealm()
        realm.chainedProtocolFactory = manhole_tap.chainedProtocolFactory(namespace)
        realm.sessionFactory = partial(ManholeSession, namespace, self.clock)
        interface, avatar, _ = realm.requestAvatar(avatarId, mind, *interfaces)
        ended = partial(log.info, "manhole ssh session of {user} ended", kind="ssh", user=user)
        return interface, avatar, ended


class _UserAuth(userauth.SSHUserAuthServer):
    """Conch's ssh-userauth, logging each login attempt (not the probes)."""

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
        checker = self.portal.checkers.get(ISSHPrivateKey)
        if kind != b"publickey" or not isinstance(checker, AuthorizedKeysChecker):
            return ""
        try:
            return checker.describe(keys.Key.fromString(getNS(data[1:], 2)[1]))
        except Exception:
            return "(unparsable key)"


class _SSHFactory(ConchFactory):
    """ConchFactory with its own host key (ConchFactory's key dicts are class-level),
    read or made when it starts listening, as the server's user; logins are logged."""

    def __init__(self, checked: portal.Portal, host_key_path: Path) -> None:
        super().__init__(checked)
        self.host_key_path = host_key_path
        self.services = {**self.services, b"ssh-userauth": _UserAuth}

    def startFactory(self) -> None:
        key = load_or_create_host_key(self.host_key_path)
        self.publicKeys = {key.sshType(): key.public()}
        self.privateKeys = {key.sshType(): key}
        super().startFactory()


# --- the services ------------------------------------------------------------------------


SHUTDOWN_MESSAGE = b"farmnet server shutting down"


def _ask_telnet(proto: Any, conn: ClientFirstConnection) -> None:
    """A telnet client never closes on its own: say why, and the listener resets it."""
    conn.write(b"\r\n" + SHUTDOWN_MESSAGE + b"\r\n")
    conn.loseConnection()


def _ask_ssh(proto: Any, conn: ClientFirstConnection) -> None:
    """An SSH client closes once it gets the disconnect message (conch's close after
    sending it is the listener's client-first close)."""
    proto.sendDisconnect(ssh_transport.DISCONNECT_BY_APPLICATION, SHUTDOWN_MESSAGE)


def make_manhole_services(reactor: Any, config: ManholeConfig, namespace: dict[str, Any], *,
                          admins: Iterable[str], store: Path | str,
                          close_wait: float = 2.0) -> list[Listener]:
    """The manhole's listeners per ``config`` (``server.manhole``): none
    when both ``telnet`` and ``ssh`` are empty; ``admins`` may log in over SSH, whose host key is
    kept in ``store`` by default. Raises ConfigError listing every
    problem with the manhole settings (files are checked here, before anything starts).

    Their connections close client first (:mod:`farmnet.server.listening`): an SSH client
    has ``close_wait`` s to close after a disconnect; a telnet client (which never closes
    on its own) is reset as soon as the server's last words have left."""
    problems: list[str] = []
    services: list[Listener] = []

    if config.telnet:
        try:
            description, _ = telnet_endpoint(config.telnet)
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
            budget = ConnectionBudget(close_wait=0.0, max_connections=config.max_connections,
                                      ask=_ask_telnet)
            services.append(Listener(reactor, description, factory, Path(store) / "manhole-telnet.address",
                                     name="manhole-telnet", budget=budget))

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
            checker = AuthorizedKeysChecker(keys_path, frozenset(admins))
            checked = portal.Portal(_SSHRealm(namespace, reactor), [checker])
            budget = ConnectionBudget(close_wait=close_wait, max_connections=config.max_connections,
                                      ask=_ask_ssh)
            services.append(Listener(reactor, config.ssh, _SSHFactory(checked, host_key_path),
                                     Path(store) / "manhole-ssh.address", name="manhole-ssh", budget=budget))

    if problems:
        raise ConfigError(problems)
    return services
