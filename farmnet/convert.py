"""The one converter between JSON-like data and farmnet's attrs classes (cattrs).

Structuring is strict where cattrs is lenient by default: an ``int`` must be an int (not
``"5"``, not ``True``), a ``str`` a string, a ``float`` a number. Every problem in a value
is reported at once, each with its key path, what was expected and, for an unknown key,
the nearest known one::

    running[0].job_id: expected an integer, got 'x'
    orders[1]: unknown order 'dance' (known: close, exit, kill, reconnect, sleep, start)
    resources: expected a mapping, got [1, 2]

A condition beyond the type goes in ``Annotated``: ``Annotated[int, in_range(0, 250)]``,
``Annotated[str, one_of("order", "need")]``; its problem is
reported like a type's, with the key path.

The converter is built once, at import, and never changed afterwards: cattrs compiles a
structuring function per class on first use, so a heartbeat's values cost a few function
calls, not reflection.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator, Mapping
from types import UnionType
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

import attrs
import cattrs
from cattrs.cols import (
    homogenous_tuple_structure_factory,
    is_mapping,
    is_mutable_sequence,
    is_sequence,
    list_structure_factory,
    mapping_structure_factory,
)
from cattrs.errors import (
    AttributeValidationNote,
    ClassValidationError,
    ForbiddenExtraKeysError,
    IterableValidationError,
    IterableValidationNote,
)
from cattrs.fns import identity
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override
from cattrs.strategies import configure_tagged_union

from farmnet import messages

__all__ = ["Check", "ConversionError", "converter", "in_range", "one_of", "structure", "unstructure"]

T = TypeVar("T")


class ConversionError(ValueError):
    """A value does not fit its class; ``problems`` are lines like ``a.b[2]: expected ...``."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class _Mismatch(TypeError):
    """A primitive of the wrong type; its text is what was expected."""

    def __init__(self, expected: str, value: Any) -> None:
        super().__init__(f"expected {expected}, got {_show(value)}")


class _UnknownOrder(ValueError):
    pass


@attrs.frozen
class Check:
    """A condition on a value, for ``Annotated[T, Check(...)]``: ``problem`` returns what is
    wrong with a value of T, or None."""

    problem: Callable[[Any], str | None]


def in_range(low: int, high: int | None = None) -> Check:
    """At least ``low``, and at most ``high`` when given."""
    wanted = f"at least {low}" if high is None else f"{low}..{high}"

    def problem(value: Any) -> str | None:
        if value < low or (high is not None and value > high):
            return f"must be {wanted}, got {value}"
        return None

    return Check(problem)


def one_of(*choices: str) -> Check:
    wanted = ", ".join(map(repr, choices))

    def problem(value: Any) -> str | None:
        return None if value in choices else f"expected one of {wanted}, got {_show(value)}"

    return Check(problem)




def _checked_by(cls: Any) -> bool:
    return get_origin(cls) is Annotated and any(isinstance(m, Check) for m in cls.__metadata__)


def _show(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _strict_int(value: Any, _: type) -> int:
    if type(value) is not int:
        raise _Mismatch("an integer", value)
    return value


def _strict_float(value: Any, _: type) -> float:
    if type(value) not in (int, float):
        raise _Mismatch("a number", value)
    return float(value)


def _strict_str(value: Any, _: type) -> str:
    if not isinstance(value, str):
        raise _Mismatch("a string", value)
    return value


def _strict_bool(value: Any, _: type) -> bool:
    if not isinstance(value, bool):
        raise _Mismatch("true or false", value)
    return value


def _make() -> cattrs.Converter:
    conv = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)
    conv.register_structure_hook(int, _strict_int)
    conv.register_structure_hook(float, _strict_float)
    conv.register_structure_hook(str, _strict_str)
    conv.register_structure_hook(bool, _strict_bool)
    # Say "expected a mapping" / "a list" instead of cattrs' TypeError on ``x[key]``, and never
    # take a string for a list of its characters.
    conv.register_structure_hook_factory(attrs.has, lambda cls: _checked(
        make_dict_structure_fn(cls, conv, _cattrs_forbid_extra_keys=cls not in messages.LENIENT),
        Mapping, "a mapping"))
    conv.register_structure_hook_factory(is_mapping, lambda cls: _checked(
        mapping_structure_factory(cls, conv), Mapping, "a mapping"))
    conv.register_structure_hook_factory(is_mutable_sequence, lambda cls: _checked(
        list_structure_factory(cls, conv), (list, tuple), "a list"))
    conv.register_structure_hook_factory(
        lambda t: is_sequence(t) and not is_mutable_sequence(t),
        lambda cls: _checked(homogenous_tuple_structure_factory(cls, conv), (list, tuple), "a list"))
    conv.register_structure_hook_factory(_checked_by, lambda cls: _with_checks(conv, cls))
    orders = {cls.order: cls for cls in messages.ORDER_CLASSES}

    def unknown_order(value: Any, _: type) -> Any:
        tag = value.get("order") if isinstance(value, Mapping) else None
        raise _UnknownOrder(f"unknown order {_show(tag)} (known: {', '.join(sorted(orders))})")

    omitted = {name: override(omit_if_default=True) for name in messages.StartOrder.SENT_WHEN_SET}
    conv.register_unstructure_hook(messages.StartOrder, make_dict_unstructure_fn(
        messages.StartOrder, conv, **omitted))
    configure_tagged_union(messages.Order, conv, tag_generator=lambda cls: cls.order, tag_name="order")
    union_hook = conv.get_structure_hook(messages.Order)

    def structure_order(value: Any, cls: type) -> Any:
        if not isinstance(value, Mapping):
            raise _Mismatch("a mapping", value)
        if value.get("order") not in orders:
            unknown_order(value, cls)
        return union_hook(value, cls)

    conv.register_structure_hook(messages.Order, structure_order)
    _listing_hooks(conv)
    configure_tagged_union(messages.Event, conv, tag_generator=_kind, tag_name="kind")
    return conv


def _listing_hooks(conv: cattrs.Converter) -> None:
    """Listings and events are hot (10,000 jobs in one answer, an event per task state
    change): their unstructuring functions are compiled here, once, and write a field that is
    JSON already (numbers, strings, Any, lists and mappings of them) as it is, not copied: the
    views build every record afresh. A list of attrs objects is a list comprehension (cattrs'
    default feeds a generator to ``list``). An event's ``kind``, a field __init__ does not
    take, is written; on the way in it picks the class."""

    def list_of_objects(cls: Any) -> Any:
        hook = conv.get_unstructure_hook(get_args(cls)[0])

        def unstructure_list(rows: Any) -> list[Any]:
            return [hook(row) for row in rows]

        return unstructure_list

    def is_list_of_objects(cls: Any) -> bool:
        return get_origin(cls) is list and len(get_args(cls)) == 1 and attrs.has(get_args(cls)[0])

    conv.register_unstructure_hook_factory(is_list_of_objects, list_of_objects)
    for cls in (*messages.RECORD_CLASSES, *messages.EVENT_CLASSES):
        attrs.resolve_types(cls)
        same = {f.name: override(unstruct_hook=identity) for f in attrs.fields(cls) if _json_ready(f.type)}
        hook = make_dict_unstructure_fn(cls, conv, _cattrs_include_init_false=True, **same)
        conv.register_unstructure_hook(cls, hook)


def _json_ready(cls: Any) -> bool:
    if cls in (int, float, str, bool, type(None), Any) or get_origin(cls) is Literal:
        return True
    if get_origin(cls) in (list, tuple, dict, UnionType, Union):
        return all(_json_ready(arg) for arg in get_args(cls) if arg is not Ellipsis)
    return False


def _kind(cls: Any) -> str:
    return attrs.fields(cls).kind.default


def _with_checks(conv: cattrs.Converter, cls: Any) -> Any:
    base = get_args(cls)[0]
    hook = conv.get_structure_hook(base)
    checks = [m for m in cls.__metadata__ if isinstance(m, Check)]

    def structure(value: Any, _: type) -> Any:
        result = hook(value, base)
        for check in checks:
            problem = check.problem(result)
            if problem:
                raise ValueError(problem)
        return result

    return structure


def _checked(hook: Any, kinds: Any, expected: str) -> Any:
    def structure(value: Any, cls: type) -> Any:
        if not isinstance(value, kinds):
            raise _Mismatch(expected, value)
        return hook(value, cls)

    return structure


#: The converter (configured here, once; read-only afterwards).
converter = _make()


def structure(value: Any, cls: type[T] | Any, where: str = "") -> T:
    """``value`` as ``cls``; raises ConversionError naming every problem, paths from ``where``."""
    try:
        return converter.structure(value, cls)
    except Exception as e:  # cattrs' exception groups, or a hook's error
        raise ConversionError(list(problems(e, where)) or [f"{where or 'value'}: {e}"]) from None


def unstructure(value: Any, cls: type | Any = None) -> Any:
    """``value`` as JSON-ready data (the inverse of `structure`)."""
    return converter.unstructure(value, cls)


def problems(error: BaseException, path: str = "") -> Iterator[str]:
    """Lines ``path: what was wrong`` for a cattrs error (a tree of exception groups)."""
    if isinstance(error, ClassValidationError | IterableValidationError):
        for sub, note in _with_notes(error):
            if isinstance(note, AttributeValidationNote):
                if isinstance(sub, KeyError):
                    yield f"{_join(path, note.name)}: required, missing"
                    continue
                yield from problems(sub, _join(path, note.name))
            elif isinstance(note, IterableValidationNote):
                yield from problems(sub, f"{path}[{note.index!r}]")
            else:
                yield from problems(sub, path)
    elif isinstance(error, ForbiddenExtraKeysError):
        known = [a.name for a in attrs.fields(error.cl)] if attrs.has(error.cl) else []
        for key in sorted(error.extra_fields):
            hint = did_you_mean(key, known) or (f"; known: {', '.join(sorted(known))}" if known else "")
            yield f"{_join(path, key)}: unknown key{hint}"
    elif isinstance(error, BaseExceptionGroup):
        for sub in error.exceptions:
            yield from problems(sub, path)
    else:
        yield f"{path or 'value'}: {error}"


def _with_notes(error: Any) -> list[tuple[BaseException, Any]]:
    return error.group_exceptions()[0] + [(e, None) for e in error.group_exceptions()[1]]


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def did_you_mean(word: str, known: list[str]) -> str:
    """`` (did you mean 'x'?)`` when a known word is close to ``word``, else ``""``."""
    close = difflib.get_close_matches(word, known, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
