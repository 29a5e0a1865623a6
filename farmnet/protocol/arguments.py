"""AMP argument types for values of any size.

AMP refuses any single value over 65,535 bytes (`TooLong`). A job of 100,000 tasks, a
listing of every render or a burst of task output is larger than that, so these types
split one logical value over several keys of the same box: ``name`` holds the number of
parts and ``name.0`` … ``name.N-1`` the parts. A box has no size limit of its own; the
receiver bounds what it buffers per connection.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.protocols import amp

from farmnet.convert import structure, unstructure

PART = amp.MAX_VALUE_LENGTH


def _split(data: bytes) -> list[bytes]:
    return [data[i : i + PART] for i in range(0, len(data), PART)] or [b""]


class BigBytes(amp.Argument):
    """Bytes of any length, split over as many AMP values as needed."""

    def toBox(self, name: bytes, strings: dict, objects: dict, proto: Any) -> None:
        value = objects.pop(name.decode("ascii"), None)
        if value is None:
            if not self.optional:
                raise amp.InvalidSignature(f"{name!r} is required")
            return
        parts = _split(self.encode(value))
        strings[name] = str(len(parts)).encode("ascii")
        for i, part in enumerate(parts):
            strings[name + b"." + str(i).encode("ascii")] = part

    def fromBox(self, name: bytes, strings: dict, objects: dict, proto: Any) -> None:
        key = name.decode("ascii")
        count = strings.pop(name, None)
        if count is None:
            if not self.optional:
                raise KeyError(name)
            objects[key] = None
            return
        n = int(count)
        if n < 0 or n > 1_000_000:
            raise amp.MalformedAmpBox(f"{key}: bad part count {n}")
        data = b"".join(strings.pop(name + b"." + str(i).encode("ascii")) for i in range(n))
        objects[key] = self.decode(data)

    def encode(self, value: Any) -> bytes:
        return bytes(value)

    def decode(self, data: bytes) -> Any:
        return data


#: json.dumps builds an encoder per call; this one is built once (it keeps no state).
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


class BigJSON(BigBytes):
    """Any JSON value (dicts, lists, strings, numbers), compact UTF-8 on the wire."""

    def encode(self, value: Any) -> bytes:
        return _ENCODER.encode(value).encode("utf-8")

    def decode(self, data: bytes) -> Any:
        return json.loads(data)


class BigUnicode(BigBytes):
    """Text of any length."""

    def encode(self, value: Any) -> bytes:
        return str(value).encode("utf-8")

    def decode(self, data: bytes) -> Any:
        return data.decode("utf-8")


class Typed(BigJSON):
    """A value of an attrs class (or a list, union, ... of them) as JSON, through the one
    converter of `farmnet.convert`: the sender's objects are unstructured, the receiver's
    structured and checked, so a responder or caller gets typed objects. A value that does
    not fit raises `ConversionError` naming each bad key (the server resets such a peer;
    a caller's Deferred fails with it).

    ``structured=False`` (listings, events): the receiver gets the plain JSON. Their reader
    is the client library, whose public API gives dicts, and which must keep reading what a
    newer server adds (keys, event kinds) without an upgrade."""

    def __init__(self, cls: Any, optional: bool = False, structured: bool = True) -> None:
        super().__init__(optional)
        self.cls = cls
        self.structured = structured

    def encode(self, value: Any) -> bytes:
        return super().encode(unstructure(value, self.cls))

    def fromBox(self, name: bytes, strings: dict, objects: dict, proto: Any) -> None:
        super().fromBox(name, strings, objects, proto)
        if not self.structured:
            return
        key = name.decode("ascii")
        if objects[key] is not None or not self.optional:
            objects[key] = structure(objects[key], self.cls, key)
