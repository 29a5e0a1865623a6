"""Hashed passwords: scrypt hashes, ``user:hash`` files and a twisted.cred checker.

A hash is a PHC-style string, ``$scrypt$ln=14,r=8,p=1$<salt>$<key>`` (salt and key in
unpadded base64), made by :func:`hash_password` with a fresh 16-byte random salt for
every password; :func:`verify` checks a password against one in constant time. A
password file holds one ``user:hash`` line per user; blank lines and lines starting
with ``#`` are ignored. Keep the file readable by the server's user only (mode 600):
the hashes are slow to attack, not impossible.

Create a line with::

    python -m farmnet.server.passwords USER >> /etc/farmnet/manhole.passwords

which asks for the password twice (without echo) and prints ``USER:hash``. When stdin is
not a terminal the password is the first line read from it (``printf '%s\\n' "$PW" |
python -m farmnet.server.passwords USER``), for scripts.

:class:`PasswordFileChecker` is an ``ICredentialsChecker`` for ``IUsernamePassword``
that re-reads its file on every login (adding or removing a user needs no restart) and
runs scrypt in the reactor's thread pool, so a login never stalls the reactor.
"""

from __future__ import annotations

import base64
import binascii
import getpass
import hashlib
import hmac
import os
import re
import sys
from collections.abc import Sequence
from typing import Any

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer, threads
from twisted.logger import Logger
from zope.interface import implementer

__all__ = [
    "PasswordFileChecker",
    "PasswordFileError",
    "hash_password",
    "load_password_file",
    "verify",
]

log = Logger()

#: Work factors of new hashes: N = 2**14, r = 8 takes 16 MiB and ~50 ms per check.
SCRYPT_LOG2_N = 14
SCRYPT_R = 8
SCRYPT_P = 1
SALT_BYTES = 16
KEY_BYTES = 32
# Limits on what a hash read from a file may ask for: a typo must not cost gigabytes.
_MAX_LOG2_N = 20
_MAX_R = 32
_MAX_P = 16
_MAX_MEMORY = 2**30

_HASH = re.compile(
    r"\$scrypt\$ln=(?P<ln>[0-9]{1,2}),r=(?P<r>[0-9]{1,3}),p=(?P<p>[0-9]{1,3})"
    r"\$(?P<salt>[A-Za-z0-9+/]+)\$(?P<key>[A-Za-z0-9+/]+)"
)
_USER = re.compile(r"[^\s:#][^\s:]*")

#: Checked when a user is unknown, so that "no such user" takes as long as "wrong password".
_DUMMY_HASH = "$scrypt$ln=14,r=8,p=1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _b64decode(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def _password_bytes(password: str | bytes) -> bytes:
    return password.encode("utf-8") if isinstance(password, str) else password


def _scrypt(password: bytes, salt: bytes, log2_n: int, r: int, p: int, length: int) -> bytes:
    n = 2**log2_n
    return hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, dklen=length,
                          maxmem=min(_MAX_MEMORY, 256 * r * (n + p) + 2**20))


def hash_password(password: str | bytes) -> str:
    """A new hash of ``password`` (str is UTF-8 encoded), with a fresh random salt."""
    salt = os.urandom(SALT_BYTES)
    key = _scrypt(_password_bytes(password), salt, SCRYPT_LOG2_N, SCRYPT_R, SCRYPT_P, KEY_BYTES)
    return (f"$scrypt$ln={SCRYPT_LOG2_N},r={SCRYPT_R},p={SCRYPT_P}"
            f"${_b64encode(salt)}${_b64encode(key)}")


def _parse_hash(stored: str) -> tuple[int, int, int, bytes, bytes]:
    """(log2 N, r, p, salt, key) of a hash; ValueError says what is wrong with it."""
    match = _HASH.fullmatch(stored.strip())
    if match is None:
        raise ValueError("not a $scrypt$ln=..,r=..,p=..$salt$key hash")
    log2_n, r, p = int(match["ln"]), int(match["r"]), int(match["p"])
    if not (1 <= log2_n <= _MAX_LOG2_N and 1 <= r <= _MAX_R and 1 <= p <= _MAX_P):
        raise ValueError(
            f"scrypt parameters out of range (ln <= {_MAX_LOG2_N}, r <= {_MAX_R}, p <= {_MAX_P})")
    try:
        salt, key = _b64decode(match["salt"]), _b64decode(match["key"])
    except (binascii.Error, ValueError):
        raise ValueError("bad base64 in salt or key") from None
    if len(salt) < 8 or len(key) < 16:
        raise ValueError("salt or key too short")
    return log2_n, r, p, salt, key


def verify(stored: str, password: str | bytes) -> bool:
    """Whether ``password`` matches the hash ``stored``; False for a malformed hash."""
    try:
        log2_n, r, p, salt, key = _parse_hash(stored)
    except ValueError:
        return False
    candidate = _scrypt(_password_bytes(password), salt, log2_n, r, p, len(key))
    return hmac.compare_digest(candidate, key)


class PasswordFileError(Exception):
    """Everything wrong with a password file, one ``path:line: problem`` per entry."""

    def __init__(self, path: str, errors: Sequence[str]) -> None:
        self.path = path
        self.errors = list(errors)
        super().__init__(self.errors)

    def __str__(self) -> str:
        return "; ".join(self.errors)


def load_password_file(path: str) -> dict[str, str]:
    """Read ``user:hash`` lines: user -> hash. Raises PasswordFileError listing every
    problem (unreadable file, malformed line, bad hash, user given twice)."""
    try:
        with open(path, encoding="utf-8") as stream:
            lines = stream.read().splitlines()
    except OSError as exc:
        raise PasswordFileError(path, [f"{path}: cannot read: {exc.strerror or exc}"]) from exc
    except UnicodeDecodeError as exc:
        raise PasswordFileError(path, [f"{path}: not UTF-8 text"]) from exc
    users: dict[str, str] = {}
    first_line: dict[str, int] = {}
    errors: list[str] = []
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, stored = (part.strip() for part in line.partition(":"))
        where = f"{path}:{number}"
        if not sep or not _USER.fullmatch(user):
            errors.append(f"{where}: expected user:hash")
            continue
        try:
            _parse_hash(stored)
        except ValueError as exc:
            errors.append(f"{where}: user {user!r}: {exc}")
            continue
        if user in users:
            errors.append(f"{where}: user {user!r} again (first on line {first_line[user]})")
            continue
        users[user] = stored
        first_line[user] = number
    if errors:
        raise PasswordFileError(path, errors)
    return users


@implementer(ICredentialsChecker)
class PasswordFileChecker:
    """Usernames and passwords checked against a :func:`load_password_file` file.

    The avatar ID is the username as given (bytes from Twisted's protocols). The file is
    read at every login; an unreadable or broken file refuses everyone (and says why
    in the log). ``reactor`` provides the thread pool scrypt runs in.
    """

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, path: str, reactor: Any) -> None:
        self.path = path
        self.reactor = reactor

    def requestAvatarId(self, credentials: Any) -> defer.Deferred[Any]:
        return defer.ensureDeferred(self._check(credentials))

    async def _check(self, credentials: Any) -> Any:
        username = credentials.username
        try:
            name = username.decode("utf-8") if isinstance(username, bytes) else str(username)
        except UnicodeDecodeError:
            raise UnauthorizedLogin("user name is not UTF-8") from None
        try:
            users = load_password_file(self.path)
        except PasswordFileError as exc:
            log.error("password file {path} unusable, refusing logins: {problems}",
                      path=self.path, problems=str(exc))
            raise UnauthorizedLogin("password file unusable") from None
        stored = users.get(name)
        ok = await threads.deferToThreadPool(
            self.reactor, self.reactor.getThreadPool(), verify,
            _DUMMY_HASH if stored is None else stored, credentials.password)
        if stored is None or not ok:
            raise UnauthorizedLogin("unknown user or wrong password")
        return username


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m farmnet.server.passwords USER``: print ``USER:hash`` for a password."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1 or args[0] in ("-h", "--help"):
        print(__doc__.split("\n\n")[0], file=sys.stderr)
        print("usage: python -m farmnet.server.passwords USER", file=sys.stderr)
        return 2
    user = args[0]
    if not _USER.fullmatch(user):
        print(f"passwords: bad user name {user!r} (no spaces or ':', not starting with '#')",
              file=sys.stderr)
        return 2
    if sys.stdin.isatty():
        try:
            password = getpass.getpass(f"Password for {user}: ")
            again = getpass.getpass("Again: ")
        except (EOFError, KeyboardInterrupt):
            print(file=sys.stderr)
            return 1
        if password != again:
            print("passwords: the passwords differ", file=sys.stderr)
            return 1
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        print("passwords: empty password", file=sys.stderr)
        return 1
    print(f"{user}:{hash_password(password)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
