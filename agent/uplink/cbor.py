"""CBOR (RFC 8949) for the uplink and commands: the one adapter over cbor2.

``dumps`` writes RFC 8949 section 4.2.1 "core deterministic" encoding, so one map
always gives the same bytes (CONTRACT 4: a ``seq`` always names the same bytes; COSE
MACs are over bytes). cbor2 already writes the shortest integer heads and definite
lengths; its ``canonical=True`` however sorts map keys length-first (RFC 7049 3.9,
kept as RFC 8949 4.2.3) in both 5.x and 6.x - {10, -1, 100} comes out 10, -1, 100,
where 4.2.1 wants 10, 100, -1. So this module sorts every map's keys by the bytewise
order of their encodings itself and encodes with ``canonical=False``, which keeps
insertion order. Floats are refused: nothing on our wire is a float (money and energy
are ints), and refusing them spares the shortest-float rule of 4.2.1.

``loads`` turns ANY bad input into ``CborError``: not CBOR, trailing bytes, too large,
too deep, or items that decode to something other than plain data (datetimes, sets,
simple values, maps with array keys...). Unknown tags stay ``cbor2.CBORTag`` (COSE
needs tag 17). It works with cbor2 6.x (C extension) and 5.x (pure Python, used on
armv7): only ``dumps(canonical=)``, ``CBORDecoder(fp)``, ``CBORTag`` and ``CBORError``
are relied on, and ``allow_duplicate_keys=False`` is used where the decoder has it (6.x;
on 5.x a repeated key keeps its last value - RFC 8949 calls such a map invalid, and a
command's MAC still covers the exact bytes).
"""

from __future__ import annotations

import inspect
import io
import re
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar, cast

import cbor2

from agent.uplink.wire import WireError

MAX_COMMAND_BYTES = 64 * 1024  # a `cmd` payload; larger is refused before decoding
MAX_UPLINK_BYTES = 1024 * 1024  # an `up/*` message read by a head-end; larger is refused
MAX_DEPTH = 32  # nesting of arrays/maps we write; our deepest message is 4 levels

Tag = cbor2.CBORTag
K = TypeVar("K")

# Exceptions cbor2 5.x/6.x can raise on hostile input besides its own CBORError: the
# pure-Python decoder lets some through (unhashable map keys, tag 4/5 Decimal
# arithmetic, tag 100 dates, recursion on deep nesting).
_DECODE_FAILURES: tuple[type[BaseException], ...] = (
    cbor2.CBORError, ValueError, TypeError, LookupError, ArithmeticError, RecursionError,
    EOFError, MemoryError, re.error,
)
_DECODER_KW: dict[str, Any] = (
    {"allow_duplicate_keys": False}
    if "allow_duplicate_keys" in inspect.signature(cbor2.CBORDecoder).parameters
    else {}
)


class CborError(WireError):
    """Bytes that are not a CBOR item we accept, or a value we refuse to encode."""


def dumps(obj: object) -> bytes:
    """Deterministic (RFC 8949 4.2.1) CBOR of plain data: None, bool, int, str, bytes,
    list/tuple, dict (keys int, str or bytes) and ``Tag``."""
    try:
        return bytes(cbor2.dumps(_ordered(obj, 0), canonical=False))
    except cbor2.CBORError as exc:  # an int beyond 64 bits is our own check; belt and braces
        raise CborError(f"cannot encode: {exc}") from exc


def dumps_record(obj: dict[str, int | str]) -> bytes:
    """``dumps(obj)`` for the agent's own fixed-shape records (a journal entry), whose
    caller has put the keys in core deterministic order already and whose values are
    ints of 64 bits and texts: encoded as they are, without the walk. A test checks
    that it gives what ``dumps`` gives for every record the caller builds."""
    return bytes(cbor2.dumps(obj, canonical=False))


def dumps_reading_row(row: list[str | int | None]) -> bytes:
    """``dumps(row)`` for a reading item: an array of a text, ints below 2**62 and
    nulls has one encoding (no map to order), so cbor2 writes it directly, byte for
    byte what ``dumps`` writes (a test checks)."""
    return bytes(cbor2.dumps(row))


def dumps_ordered(obj: dict[str, Any]) -> bytes:
    """``dumps(obj)`` for a message whose maps the caller has put in core deterministic
    key order already and whose arrays hold only int64s (wire.series checks them): cbor2
    writes it as it is, without the walk over every integer (a test checks)."""
    return bytes(cbor2.dumps(obj, canonical=False))


def loads_trusted(data: bytes) -> Any:
    """One item of the agent's OWN bytes (from its store), by cbor2's C decoder directly:
    ``loads`` is the hardened reader for bytes from outside."""
    return cbor2.loads(data)


def loads_trusted_sequence(data: bytes) -> list[Any]:
    """Every item of a CBOR sequence (RFC 8742) of the agent's own bytes, at once: read
    as the items of one indefinite-length array."""
    return cast("list[Any]", cbor2.loads(b"\x9f" + data + b"\xff"))


def dumps_with_items(obj: dict[str, Any], key: str, items: list[bytes],
                     count: int | None = None) -> bytes:
    """``dumps({**obj, key: [the items]})``, byte for byte, where ``items`` are CBOR
    items already in core deterministic encoding (the agent's own, from its store):
    they are spliced in, not decoded and encoded again. Each of ``items`` may be a
    sequence of several: ``count`` then says how many there are in all."""
    assert key not in obj
    order = key_order({**obj, key: None})
    out = [_head(5, len(order))]
    for k in order:
        out.append(cbor2.dumps(k))
        if k == key:
            out.append(_head(4, len(items) if count is None else count))
            out.extend(items)
        else:
            out.append(dumps(obj[k]))
    return b"".join(out)


def _head(major: int, n: int) -> bytes:
    """The initial byte and argument of a data item (RFC 8949 3, shortest form, 4.2.1)."""
    if n < 24:
        return bytes([major << 5 | n])
    for extra, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if n < 1 << (8 * size):
            return bytes([major << 5 | extra]) + n.to_bytes(size, "big")
    raise CborError(f"length {n} does not fit a CBOR head")


def _ordered_item(value: object, depth: int) -> object:
    """An item of a map or array at ``depth``: plain scalars (a journal entry, an event,
    a reading item are flat) without a call of their own."""
    vkind = type(value)
    if vkind is str or vkind is bytes or value is None or vkind is bool or (
            vkind is int and -(2**64) <= value < 2**64):  # type: ignore[operator]
        return value
    return _ordered(value, depth + 1)


def _ordered(obj: object, depth: int) -> object:
    """A copy of ``obj`` whose maps iterate in core deterministic key order."""
    kind = type(obj)
    if kind is str or kind is bytes or obj is None or kind is bool:  # the usual, first
        return obj
    if kind is int:
        if not -(2**64) <= obj < 2**64:  # type: ignore[operator]
            raise CborError(f"integer {obj} does not fit CBOR major types 0/1")
        return obj
    if depth > MAX_DEPTH:
        raise CborError(f"nesting deeper than {MAX_DEPTH}")
    if kind is dict:
        mapping = cast("dict[object, object]", obj)
        return {key: _ordered_item(mapping[key], depth) for key in key_order(mapping)}
    if kind is list:
        return [_ordered_item(x, depth) for x in cast("list[object]", obj)]
    if isinstance(obj, (bool, str, bytes)):  # subclasses
        return obj
    if isinstance(obj, int):
        if not -(2**64) <= obj < 2**64:  # beyond that cbor2 writes a bignum tag: not ours
            raise CborError(f"integer {obj} does not fit CBOR major types 0/1")
        return obj
    if isinstance(obj, (bytearray, memoryview)):
        return bytes(obj)
    if isinstance(obj, (list, tuple)):
        return [_ordered(x, depth + 1) for x in obj]
    if isinstance(obj, dict):
        return {key: _ordered(obj[key], depth + 1) for key in key_order(obj)}
    if isinstance(obj, cbor2.CBORTag):
        return cbor2.CBORTag(obj.tag, _ordered(obj.value, depth + 1))
    if isinstance(obj, float):
        raise CborError("floats are not used on this wire (money and energy are ints)")
    raise CborError(f"cannot encode a {type(obj).__name__}")


# A message has a handful of shapes, each with the same keys every time: the sorted key
# order of a shape is kept, so encoding a map does not encode its keys again. Only
# shapes of text keys are kept (True == 1 and 1.0 == 1 would let a refused key match a
# kept int shape); at most _ORDER_CACHE_MAX of them, past that a new shape is sorted
# each time (still correct, only slower).
_ORDER_CACHE_MAX = 512
_order_cache: dict[tuple[object, ...], tuple[object, ...]] = {}


def key_order(obj: dict[K, Any]) -> tuple[K, ...]:
    """The keys of ``obj`` in RFC 8949 4.2.1 order: bytewise by their encodings."""
    try:
        shape = tuple(obj)
        return _order_cache[shape]  # type: ignore[return-value]
    except (KeyError, TypeError):  # TypeError: an unhashable key, refused below
        pass
    items = []
    for key in obj:
        if isinstance(key, bool) or not isinstance(key, (int, str, bytes)):
            raise CborError(f"map key {key!r}: only int, str and bytes keys")
        if isinstance(key, int) and not -(2**64) <= key < 2**64:
            raise CborError(f"integer {key} does not fit CBOR major types 0/1")
        items.append((cbor2.dumps(key), key))
    items.sort(key=lambda item: item[0])
    order: tuple[K, ...] = tuple(key for _, key in items)
    if len(_order_cache) < _ORDER_CACHE_MAX and all(type(k) is str for k in order):
        _order_cache[tuple(obj)] = order
    return order


def loads(data: bytes, *, max_bytes: int = MAX_COMMAND_BYTES) -> object:
    """Exactly one CBOR item of plain data; CborError on anything else."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CborError(f"expected bytes, got {type(data).__name__}")
    if len(data) > max_bytes:
        raise CborError(f"{len(data)} bytes is over the {max_bytes}-byte limit")
    if len(data) == 0:
        raise CborError("empty input")
    fp = io.BytesIO(bytes(data))
    try:
        obj = cbor2.CBORDecoder(fp, **_DECODER_KW).decode()
    except _DECODE_FAILURES as exc:
        raise CborError(f"not valid CBOR: {exc}") from exc
    if fp.tell() != len(data):
        raise CborError(f"{len(data) - fp.tell()} bytes after the CBOR item")
    if _is_plain(obj, 0):  # the usual: nothing to copy or refuse
        return obj
    return _plain(obj, 0)


_SCALARS = frozenset({int, str, bytes, bool, float, type(None)})
_KEYS = frozenset({int, str, bytes})
_PLAIN_DEPTH = 16  # our messages nest 4 deep; deeper goes the long way (_plain)


def _is_plain(obj: object, depth: int) -> bool:
    """Is ``obj`` already what ``_plain`` would return (lists, dicts with int, text or
    bytes keys, scalars, of exact built-in types, at most _PLAIN_DEPTH deep)? Checked
    without a copy; False only means "not sure": _plain decides and says why."""
    kind = type(obj)
    if kind is list:
        items: Iterable[object] = cast("list[object]", obj)
    elif kind is dict:
        mapping = cast("dict[object, object]", obj)
        if not _KEYS.issuperset(map(type, mapping)):
            return False
        items = mapping.values()
    else:
        return kind in _SCALARS
    if _SCALARS.issuperset(map(type, items)):
        return True
    if depth >= _PLAIN_DEPTH:
        return False
    return all(type(x) in _SCALARS or _is_plain(x, depth + 1) for x in items)


def _plain(obj: object, depth: int, in_tag: bool = False) -> object:
    """``obj`` as plain mutable data, or CborError. cbor2 decodes everything under a tag
    as immutable (arrays as tuples, maps as frozendict), in case it becomes a map key; a
    tuple or frozen map elsewhere came from an array or map used as a map key, which we
    refuse along with every other non-plain item."""
    if depth > 400:  # cbor2 6.x stops at 400 itself; 5.x would hit RecursionError first
        raise CborError("nesting too deep")
    if obj is None or isinstance(obj, (bool, int, float, str, bytes)):
        return obj
    if isinstance(obj, list) or (in_tag and isinstance(obj, tuple)):
        return [_plain(x, depth + 1, in_tag) for x in obj]
    if type(obj) is dict or (in_tag and isinstance(obj, Mapping)):
        out = {}
        for key, value in obj.items():
            if isinstance(key, bool) or not isinstance(key, (int, str, bytes)):
                raise CborError(f"map key of type {type(key).__name__} is not accepted")
            out[key] = _plain(value, depth + 1, in_tag)
        return out
    if isinstance(obj, cbor2.CBORTag):
        return cbor2.CBORTag(obj.tag, _plain(obj.value, depth + 1, True))
    raise CborError(f"a CBOR item that decodes to {type(obj).__name__} is not accepted")
