"""Who is asking: twisted.cred logins, twisted.web sessions and HTTP Basic.

A :class:`~twisted.cred.portal.Portal` with the server's hashed password file as its
checker (:class:`farmnet.server.passwords.PasswordFileChecker`: scrypt, re-read at every
login, run in the thread pool) turns a user name and password into a :class:`WebUser`.
Browsers log in once through the login form and then carry twisted.web's session cookie,
sent ``HttpOnly; SameSite=Strict`` (and ``Secure`` over TLS); a new session is made at each
login so a session id known before it is worthless after. Scripts send HTTP Basic with
every request instead (its header decoded by twisted.web.guard's BasicCredentialFactory).
Without a password file, the one login is the server's own link with a token
(:class:`TokenChecker`, the way Jupyter prints one): on a localhost farm it makes the
user who runs the server a logged-in admin; else nobody can log in and the site is
read-only.
"""

from __future__ import annotations

import hmac
from typing import Any

import attrs
from twisted.cred import error as cred_error
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import ICredentials, UsernamePassword
from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer
from twisted.web import server
from twisted.web.guard import BasicCredentialFactory
from zope.interface import Attribute, Interface, implementer

from farmnet import errors
from farmnet.server.passwords import PasswordFileChecker
from farmnet.server.throttle import LoginThrottle

__all__ = [
    "FarmRealm",
    "FarmRequest",
    "FarmSession",
    "IFarmUser",
    "LoginFailed",
    "LoginToken",
    "TokenChecker",
    "WebUser",
    "basic_credentials",
    "end_session",
    "login",
    "login_with_token",
    "make_portal",
    "passwords_accepted",
    "request_user",
    "session_user",
    "start_session",
]

#: Seconds a browser session lives without a request.
SESSION_TIMEOUT = 8 * 3600.0
#: The longest user name or password accepted from a form or a header.
MAX_CREDENTIAL = 1024
#: What a 401 answer asks for.
CHALLENGE = b'Basic realm="farmnet", charset="UTF-8"'
#: Decodes ``Authorization: Basic`` (holds only the realm's name).
BASIC = BasicCredentialFactory(b"farmnet")
#: The biggest request body read: past it the connection is dropped (nothing here needs more).
MAX_REQUEST_BODY = 1 << 20


class IFarmUser(Interface):
    """The avatar of a logged-in web user."""

    name = Attribute("The user name the farm knows (job owner, admin).")


@implementer(IFarmUser)
@attrs.frozen
class WebUser:
    name: str


class ILoginToken(ICredentials):
    """The token of the server's login link."""

    token = Attribute("The token the browser brought (str).")


@implementer(ILoginToken)
@attrs.frozen
class LoginToken:
    token: str = attrs.field(repr=False)


@implementer(ICredentialsChecker)
@attrs.frozen
class TokenChecker:
    """Logs the holder of the server's login link in as ``user``."""

    token: str = attrs.field(repr=False)
    user: str
    credentialInterfaces = (ILoginToken,)

    def requestAvatarId(self, credentials: LoginToken) -> defer.Deferred[bytes]:
        if self.token and hmac.compare_digest(credentials.token.encode(), self.token.encode()):
            return defer.succeed(self.user.encode())
        return defer.fail(cred_error.UnauthorizedLogin("wrong login token"))


@implementer(IRealm)
class FarmRealm:
    """Every authenticated name is a farm user; the farm decides what it may do."""

    def requestAvatar(self, avatarId: Any, mind: Any, *interfaces: Any) -> tuple[Any, Any, Any]:
        if IFarmUser not in interfaces:
            raise NotImplementedError("farmnet's web realm only makes IFarmUser avatars")
        name = avatarId.decode("utf-8") if isinstance(avatarId, bytes) else str(avatarId)
        return IFarmUser, WebUser(name), lambda: None


def make_portal(reactor: Any, users_file: str,
                checkers: tuple[ICredentialsChecker, ...] | None = None,
                login_link: TokenChecker | None = None) -> Portal:
    """The web site's portal: the password file's checker (none when ``users_file`` is ""),
    and the server's login link when it has one."""
    if checkers is None:
        checkers = (PasswordFileChecker(users_file, reactor),) if users_file else ()
    if login_link is not None:
        checkers = (*checkers, login_link)
    return Portal(FarmRealm(), list(checkers))


class LoginFailed(Exception):
    """Wrong user or password, or logins are off; the message is fit to show."""


def passwords_accepted(portal: Portal) -> bool:
    return any(interface.implementedBy(UsernamePassword) for interface in portal.listCredentialsInterfaces())


def client_address(request: server.Request) -> str:
    """The peer's address, the key of failed logins' backoff."""
    address = request.getClientAddress()
    return str(getattr(address, "host", None) or "unix")


#: Why a login link is refused.
_STALE_LINK = "this login link is not valid (the server prints a new one at each start)"


async def login_with_token(portal: Portal, token: str, throttle: LoginThrottle | None = None,
                           address: str = "") -> WebUser:
    """The user of the server's login link; a wrong token backs ``address`` off like a password."""
    if ILoginToken not in portal.listCredentialsInterfaces():
        raise LoginFailed(_STALE_LINK)
    if throttle is not None:
        try:
            throttle.check(address)
        except errors.PermissionDenied as e:
            raise LoginFailed(e.message) from None
    try:
        if not token or len(token) > MAX_CREDENTIAL:
            raise cred_error.UnauthorizedLogin()
        _, avatar, _ = await portal.login(LoginToken(token), None, IFarmUser)
    except cred_error.UnauthorizedLogin:
        if throttle is not None:
            throttle.failed(address, "web login link", _STALE_LINK)
        raise LoginFailed(_STALE_LINK) from None
    return avatar


async def login(portal: Portal, credentials: UsernamePassword, throttle: LoginThrottle | None = None,
                address: str = "") -> WebUser:
    """The user of ``credentials``; a wrong password backs ``address`` off (``throttle``)."""
    user, password = credentials.username, credentials.password
    if not passwords_accepted(portal):
        raise LoginFailed("logins are off on this server (no server.web_users_file)")
    if throttle is not None:
        try:
            throttle.check(address)
        except errors.PermissionDenied as e:
            raise LoginFailed(e.message) from None
    try:
        if not user or not password or len(user) > MAX_CREDENTIAL or len(password) > MAX_CREDENTIAL:
            raise cred_error.UnauthorizedLogin()
        _, avatar, _ = await portal.login(credentials, None, IFarmUser)
    except cred_error.UnauthorizedLogin:
        if throttle is not None:
            name = user[:64].decode("utf-8", "replace")
            throttle.failed(address, f"web user {name!r}", "unknown user or wrong password")
        raise LoginFailed("unknown user or wrong password") from None
    except cred_error.UnhandledCredentials:
        raise LoginFailed("logins are off on this server (no server.web_users_file)") from None
    return avatar


def basic_credentials(request: server.Request) -> UsernamePassword | None:
    """The credentials of an ``Authorization: Basic`` header (twisted.web.guard's
    BasicCredentialFactory decodes it); None without one. LoginFailed for another scheme
    or a malformed header."""
    header = request.getHeader(b"authorization")
    if not header:
        return None
    scheme, _, value = header.partition(b" ")
    if scheme.lower() != BASIC.scheme:
        raise LoginFailed("only HTTP Basic authorization is accepted")
    try:
        return BASIC.decode(value.strip(), request)
    except cred_error.LoginFailed:
        raise LoginFailed("malformed Basic authorization") from None


async def request_user(portal: Portal, request: server.Request,
                       throttle: LoginThrottle | None = None) -> tuple[str | None, str | None]:
    """Who asks, and how: HTTP Basic (checked through the portal at every request; a wrong
    one is LoginFailed even on a public page), else the session; (None, None): anonymous."""
    credentials = basic_credentials(request)
    if credentials is not None:
        return (await login(portal, credentials, throttle, client_address(request))).name, "basic"
    user = session_user(request)
    return user, "session" if user else None


class FarmSession(server.Session):
    sessionTimeout = SESSION_TIMEOUT


class FarmRequest(server.Request):
    """Session cookies are HttpOnly and SameSite=Strict, however they are made; a body
    bigger than MAX_REQUEST_BODY is not read (the connection is dropped)."""

    _body_bytes = 0

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > MAX_REQUEST_BODY:
            self.channel.transport.abortConnection()
            length = 0
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        self._body_bytes += len(data)
        if self._body_bytes > MAX_REQUEST_BODY:
            if self.channel is not None and self.channel.transport is not None:
                self.channel.transport.abortConnection()
            return
        super().handleContentChunk(data)

    def addCookie(self, k: Any, v: Any, *args: Any, **kwargs: Any) -> None:
        name = k.encode() if isinstance(k, str) else k
        if name.startswith(b"TWISTED_"):
            kwargs["httpOnly"] = True
            kwargs["sameSite"] = "strict"
        super().addCookie(k, v, *args, **kwargs)


def _cookie_name(request: server.Request) -> bytes:
    # The name twisted.web's Request.getSession uses; read here so a visit without a login
    # does not make a session (getSession would).
    base = b"TWISTED_SECURE_SESSION" if request.isSecure() else b"TWISTED_SESSION"
    return b"_".join([base, *request.sitepath])


def _current_session(request: server.Request) -> server.Session | None:
    uid = request.getCookie(_cookie_name(request))
    if not uid:
        return None
    try:
        session = request.site.getSession(uid)
    except KeyError:
        return None
    session.touch()
    return session


def session_user(request: server.Request) -> str | None:
    """The user of the request's session, if it has one with a login (no session is made)."""
    session = _current_session(request)
    if session is None:
        return None
    user = session.getComponent(IFarmUser)
    return user.name if user is not None else None


def start_session(request: server.Request, user: WebUser) -> None:
    """A fresh session for ``user``: any earlier one of the request ends, so twisted.web's
    ``getSession`` makes (and sends) a new one."""
    old = _current_session(request)
    if old is not None:
        old.expire()
    request.getSession().setComponent(IFarmUser, user)


def end_session(request: server.Request) -> None:
    session = _current_session(request)
    if session is not None:
        session.expire()
    request.addCookie(_cookie_name(request), b"", path=b"/", secure=request.isSecure(), max_age=b"0")
