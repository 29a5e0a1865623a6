"""Client endpoints for the server's AMP port, plain or TLS-verified.

Without a CA, an endpoint string goes to Twisted's `clientFromString` as is, so every
Twisted client endpoint works, TLS included: ``tls:farm.example.com:51100`` verifies the
server's certificate against the system's trust store, and
``tls:farm.example.com:51100:trustRoots=/etc/farmnet/ca`` against the PEM files of that
directory (with service-identity checking the host name or IP address).

With ``ca`` (the path of one PEM CA certificate, the ``ca`` setting of renders and
clients), ``tcp:HOST:PORT`` or ``tls:HOST:PORT`` connects with TLS and accepts only a
server certificate signed by that CA for HOST. The server side is a Twisted ``ssl:``
server endpoint: ``listen: "ssl:51100:privateKey=server.key:certKey=server.pem"``.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint, clientFromString, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.ssl import Certificate, optionsForClientTLS, trustRootFromCertificates
from zope.interface import implementer

__all__ = ["DEFAULT_PORT", "FirstReachable", "client_endpoint", "expand_shorthand", "loopback_only",
           "set_keepalive", "socket_of", "split_description", "split_servers"]

#: The server's AMP port when a ``HOST`` is given without one.
DEFAULT_PORT = 51100
_SHORTHAND = re.compile(r"(?P<host>[A-Za-z0-9_.-]+)(?::(?P<port>[0-9]+))?")
_ENDPOINT_KINDS = frozenset({"tcp", "tcp6", "ssl", "tls", "unix"})


def expand_shorthand(description: str) -> str:
    """``HOST`` or ``HOST:PORT`` → ``tcp:HOST:PORT``, so a workstation can say
    ``--server farm`` or ``FARMNET_SERVER=10.0.0.5:51100``; an endpoint string stays as it is."""
    match = _SHORTHAND.fullmatch(description.strip())
    if match is None or match["host"].lower() in _ENDPOINT_KINDS:
        return description
    return f"tcp:{match['host']}:{match['port'] or DEFAULT_PORT}"


def split_description(description: str) -> tuple[list[str], dict[str, str]]:
    """``kind:a:b:k=v`` → (["kind", "a", "b"], {"k": "v"}), with Twisted's ``\\:`` escapes."""
    parts: list[str] = []
    current: list[str] = []
    chars = iter(description)
    for char in chars:
        if char == "\\":
            current.append(next(chars, ""))
        elif char == ":":
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    args: list[str] = []
    kwargs: dict[str, str] = {}
    for part in parts:
        key, sep, value = part.partition("=")
        if sep and args:
            kwargs[key] = value
        else:
            args.append(part)
    return args, kwargs


def loopback_only(description: str) -> bool:
    """A server endpoint string that only this machine can reach: a unix socket, or TCP
    bound to a loopback ``interface`` (the default ``tcp:51100:interface=127.0.0.1``)."""
    args, kwargs = split_description(description)
    kind = args[0].lower() if args else ""
    if kind == "unix":
        return True
    if kind not in ("tcp", "tcp6", "ssl"):
        return False
    interface = kwargs.get("interface", "")
    if interface == "localhost":
        return True
    try:
        return ipaddress.ip_address(interface).is_loopback
    except ValueError:
        return False


def split_servers(description: str) -> list[str]:
    """``a,b`` → ["a", "b"]: several servers on one PostgreSQL store (one active, the
    others standing by), in the order they are tried."""
    return [part.strip() for part in description.split(",") if part.strip()]


@implementer(IStreamClientEndpoint)
class FirstReachable:
    """Several servers, of which one serves (the active) and the others refuse connections
    (standbys do not listen): a connection tries each in turn, starting with the one that
    answered last, and fails only when none answers (with the last one's error)."""

    def __init__(self, endpoints: list[IStreamClientEndpoint]) -> None:
        self.endpoints = endpoints
        self._first = 0

    def connect(self, factory: Any) -> defer.Deferred[Any]:
        return defer.ensureDeferred(self._connect(factory))

    async def _connect(self, factory: Any) -> Any:
        failure: BaseException | None = None
        count = len(self.endpoints)
        for i in range(count):
            index = (self._first + i) % count
            try:
                protocol = await self.endpoints[index].connect(factory)
            except Exception as e:  # refused, unreachable, timed out: the next one
                failure = e
                continue
            self._first = index
            return protocol
        assert failure is not None
        raise failure


def client_endpoint(reactor: Any, description: str, ca: str = "") -> IStreamClientEndpoint:
    """The endpoint for ``description``; with ``ca``, TLS verified against that CA.
    A comma-separated list is several servers (:class:`FirstReachable`).

    Raises ValueError (bad description, unreadable or invalid CA file)."""
    servers = split_servers(description)
    if len(servers) > 1:
        return FirstReachable([client_endpoint(reactor, server, ca) for server in servers])
    description = expand_shorthand(description)
    if not ca:
        return clientFromString(reactor, description)
    args, kwargs = split_description(description)
    kind = args[0].lower() if args else ""
    if kind not in ("tcp", "tls") or len(args) != 3:
        raise ValueError(f"with a CA the server must be tcp:HOST:PORT or tls:HOST:PORT, not {description!r}")
    unknown = set(kwargs) - {"timeout", "bindAddress"}
    if unknown:
        raise ValueError(f"{description!r}: options {', '.join(sorted(unknown))} cannot go with a CA")
    host, port = args[1], int(args[2])
    try:
        authority = Certificate.loadPEM(Path(ca).read_bytes())
    except OSError as e:
        raise ValueError(f"CA certificate {ca}: cannot read: {e.strerror or e}") from None
    except Exception as e:  # OpenSSL's errors
        raise ValueError(f"CA certificate {ca}: not a PEM certificate ({e})") from None
    options = optionsForClientTLS(host, trustRoot=trustRootFromCertificates([authority]))
    bind = kwargs.get("bindAddress")
    inner = HostnameEndpoint(reactor, host.encode("idna") if not _is_ip(host) else host.encode("ascii"),
                             port, timeout=float(kwargs.get("timeout", 30)),
                             bindAddress=(bind, 0) if bind else None)
    return wrapClientTLS(options, inner)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def socket_of(transport: Any) -> socket.socket | None:
    """The socket under a transport, through TLS wrappers (whose handle is not one)."""
    for _ in range(4):
        if transport is None:
            return None
        get = getattr(transport, "getHandle", None)
        handle = get() if get is not None else None
        if isinstance(handle, socket.socket):
            return handle
        transport = getattr(transport, "transport", None)
    return None


def set_keepalive(transport: Any, idle: float, interval: float, count: int) -> None:
    """TCP keepalive on a connection's socket: a peer that vanished without a FIN (power
    off, cable, NAT) is found out after about ``idle + interval * count`` seconds of
    silence, by the kernel (no Python runs for it)."""
    sock = socket_of(transport)
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for option, value in (("TCP_KEEPIDLE", idle), ("TCP_KEEPINTVL", interval), ("TCP_KEEPCNT", count)):
            if hasattr(socket, option):
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), max(1, int(value)))
    except OSError:
        pass
