"""Declarative Modbus register maps: a meter model is a TOML file in ``maps/``.

A map file names the model (the config's ``meter.model``), its limits, the
serial number register and one ``[[register]]`` table per quantity::

    model = "eastron-sdm120"          # what a board config writes
    description = "..."
    phases = 1
    max_current_a = 45                # breaker/Imax per phase: plausible delta bound
    register_max_wh = 99_999_990      # the energy register rolls over after this
    max_read_registers = 60           # optional, default 125 (the protocol's limit)
    word_order = "big"                # optional: "big" = high word first (Eastron)
    [serial]                          # optional
    function = 3
    address = 0xFC00
    type = "uint32"
    [[register]]
    quantity = "v_dv"                 # one of agent.drivers.reading.QUANTITIES
    function = 4                      # 3 holding, 4 input registers
    address = 0x0000
    type = "float32"                  # float32 | uint32 | int32 | uint16 | int16
    scale = 10                        # register value x scale = contract units (int or "0.1")

Values become ints as ``round(Decimal(value) * scale)``: the exact binary
value of the float, scaled, rounded half-even once; floats are never kept.
The decode part (``decode``, ``decode_serial``, ``plan_reads``, ``ReadPlan``) is
pure. A meter decodes through ``ReadPlan``: its reads' answers straight to
quantities, with the struct formats worked out once per map.
"""

from __future__ import annotations

import struct
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from functools import cache
from importlib import resources
from operator import itemgetter
from typing import Any, Final

from agent.drivers.reading import QUANTITIES
from agent.errors import DriverError, ProtocolError

# The protocol's own limit for function 3/4 (Application Protocol V1.1b3 §6.3).
MAX_READ_REGISTERS: Final = 125
# A gap of unmapped registers is read along when it joins two reads into one:
# at 9600 baud 20 extra words (40 bytes, ~46 ms) still cost less than a frame
# more (13 bytes, two silent intervals and the meter's own ~50-100 ms latency).
MAX_GAP_REGISTERS: Final = 20

_TYPES: Final = {"float32": ">f", "uint32": ">I", "int32": ">i", "uint16": ">H", "int16": ">h"}
# Where round(Decimal(raw) * scale) can be had from plain arithmetic (_scaled). A
# float32 is m * 2**e with |m| < 2**24, so times an integral scale s below 2**29 the
# float64 product is exact (m * s < 2**53; an int's product is an exact int), and
# round() rounds it half-even. The Decimal formula, whose 28 digits may round a long
# fraction, gets the same int below 2**53: a tie there has at most 17 digits, and any
# other fraction is a multiple of 2**e, so at least product / 2**53 from a half, far
# more than 28 digits round off. Anything else takes the formula itself.
_EXACT_SCALE: Final = 2**29
_EXACT_PRODUCT: Final = 2**53
_TOP_KEYS: Final = frozenset(
    {
        "model",
        "description",
        "phases",
        "max_current_a",
        "register_max_wh",
        "max_read_registers",
        "word_order",
        "serial",
        "register",
    }
)
_REGISTER_KEYS: Final = frozenset({"quantity", "function", "address", "type", "scale"})
_SERIAL_KEYS: Final = frozenset({"function", "address", "type"})


@dataclass(frozen=True, slots=True)
class RegisterSpec:
    quantity: str  # a QUANTITIES name, or "serial"
    function: int
    address: int
    type: str
    scale: Decimal
    # scale as an int when _scaled may use plain arithmetic, else None (see _EXACT_SCALE)
    int_scale: int | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        integral = self.scale == self.scale.to_integral_value() and self.scale < _EXACT_SCALE
        object.__setattr__(self, "int_scale", int(self.scale) if integral else None)

    @property
    def words(self) -> int:
        return 2 if self.type.endswith("32") else 1

    @property
    def end(self) -> int:
        return self.address + self.words


@dataclass(frozen=True, slots=True)
class RegisterMap:
    model: str
    description: str
    phases: int
    max_current_a: int
    register_max_wh: int
    max_read_registers: int
    word_order: str
    registers: tuple[RegisterSpec, ...]
    serial: RegisterSpec | None


@dataclass(frozen=True, slots=True)
class ReadBlock:
    """One read request's worth of registers (function 3 or 4)."""

    function: int
    address: int
    count: int


def known_models() -> tuple[str, ...]:
    return tuple(sorted(_all_maps()))


def load_map(model: str) -> RegisterMap:
    maps = _all_maps()
    if model not in maps:
        raise DriverError(f"unknown meter model {model!r}; known: {', '.join(sorted(maps))}")
    return maps[model]


@cache
def read_plan(model: str) -> ReadPlan:
    """The model's ``ReadPlan``, one for every meter of that model."""
    return ReadPlan(load_map(model))


@cache
def _all_maps() -> dict[str, RegisterMap]:
    found: dict[str, RegisterMap] = {}
    folder = resources.files("agent.drivers.modbus").joinpath("maps")
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".toml"):
            continue
        try:
            rmap = parse_map(tomllib.loads(entry.read_text(encoding="utf-8")))
        except (tomllib.TOMLDecodeError, DriverError) as exc:
            raise DriverError(f"register map {entry.name}: {exc}") from exc
        if rmap.model in found:
            raise DriverError(f"register map {entry.name}: model {rmap.model!r} defined twice")
        found[rmap.model] = rmap
    return found


def _get(table: dict[str, Any], key: str, kind: type, where: str) -> Any:
    value = table.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise DriverError(f"{where}{key}: expected {kind.__name__}, got {value!r}")
    return value


def _spec(table: Any, where: str, allowed: frozenset[str], quantity: str | None) -> RegisterSpec:
    if not isinstance(table, dict):
        raise DriverError(f"{where}: expected a table")
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise DriverError(f"{where}: unknown keys {unknown}")
    where += "."
    name = quantity if quantity is not None else _get(table, "quantity", str, where)
    if quantity is None and name not in QUANTITIES:
        raise DriverError(f"{where}quantity: {name!r} is not one of {QUANTITIES}")
    function = _get(table, "function", int, where)
    address = _get(table, "address", int, where)
    type_ = _get(table, "type", str, where)
    if function not in (3, 4):
        raise DriverError(f"{where}function: must be 3 or 4, got {function}")
    if type_ not in _TYPES:
        raise DriverError(f"{where}type: must be one of {sorted(_TYPES)}, got {type_!r}")
    raw_scale = table.get("scale", 1)
    try:
        scale = Decimal(raw_scale) if isinstance(raw_scale, int | str) else None
    except InvalidOperation:
        scale = None
    if scale is None or isinstance(raw_scale, bool) or not scale.is_finite() or scale <= 0:
        raise DriverError(f"{where}scale: must be a positive int or decimal string")
    spec = RegisterSpec(name, function, address, type_, scale)
    if not 0 <= address or spec.end > 0x10000:
        raise DriverError(f"{where}address: {address:#x} outside 0..0xFFFF")
    return spec


def parse_map(doc: dict[str, Any]) -> RegisterMap:
    """Validate one map document (already TOML-decoded); errors name the key."""
    unknown = sorted(set(doc) - _TOP_KEYS)
    if unknown:
        raise DriverError(f"unknown keys {unknown}")
    registers = doc.get("register", [])
    if not isinstance(registers, list) or not registers:
        raise DriverError("register: at least one [[register]] table is required")
    specs = tuple(
        _spec(table, f"register[{i}]", _REGISTER_KEYS, None) for i, table in enumerate(registers)
    )
    names = [s.quantity for s in specs]
    if len(set(names)) != len(names):
        raise DriverError(f"register: a quantity appears twice in {names}")
    # decode() takes one address -> word dict, so mapped ranges must not overlap
    # even across functions 3 and 4.
    ordered = sorted(specs, key=lambda s: s.address)
    for before, after in zip(ordered, ordered[1:], strict=False):
        if after.address < before.end:
            raise DriverError(f"register: {before.quantity} and {after.quantity} overlap")
    serial = _spec(doc["serial"], "serial", _SERIAL_KEYS, "serial") if "serial" in doc else None
    if serial is not None and not serial.type.startswith("uint"):
        raise DriverError("serial.type: must be uint16 or uint32")
    limit = doc.get("max_read_registers", MAX_READ_REGISTERS)
    if not isinstance(limit, int) or not 2 <= limit <= MAX_READ_REGISTERS:
        raise DriverError(f"max_read_registers: must be 2..{MAX_READ_REGISTERS}")
    word_order = doc.get("word_order", "big")
    if word_order not in ("big", "little"):
        raise DriverError("word_order: must be 'big' or 'little'")
    phases = _get(doc, "phases", int, "")
    if phases not in (1, 3):
        raise DriverError("phases: must be 1 or 3")
    max_current_a = _get(doc, "max_current_a", int, "")
    register_max_wh = _get(doc, "register_max_wh", int, "")
    if max_current_a <= 0 or register_max_wh <= 0:
        raise DriverError("max_current_a and register_max_wh must be positive")
    return RegisterMap(
        model=_get(doc, "model", str, ""),
        description=str(doc.get("description", "")),
        phases=phases,
        max_current_a=max_current_a,
        register_max_wh=register_max_wh,
        max_read_registers=limit,
        word_order=word_order,
        registers=specs,
        serial=serial,
    )


def plan_reads(rmap: RegisterMap) -> tuple[ReadBlock, ...]:
    """The fewest reads that cover every mapped register (serial excluded).

    Greedy in address order, per function: a register joins the current block
    when the gap before it is at most MAX_GAP_REGISTERS and the block stays
    within the model's max_read_registers. Because any run of registers that
    fits in one block still fits after dropping its ends, extending as far as
    possible is optimal: no other split needs fewer frames.
    """
    blocks: list[ReadBlock] = []
    for spec in sorted(rmap.registers, key=lambda s: (s.function, s.address)):
        last = blocks[-1] if blocks else None
        if (
            last is not None
            and last.function == spec.function
            and spec.address - (last.address + last.count) <= MAX_GAP_REGISTERS
            and spec.end - last.address <= rmap.max_read_registers
        ):
            blocks[-1] = ReadBlock(last.function, last.address, spec.end - last.address)
        else:
            blocks.append(ReadBlock(spec.function, spec.address, spec.words))
    return tuple(blocks)


def serial_read(rmap: RegisterMap) -> ReadBlock | None:
    if rmap.serial is None:
        return None
    return ReadBlock(rmap.serial.function, rmap.serial.address, rmap.serial.words)


def _raw(rmap: RegisterMap, spec: RegisterSpec, words_by_address: dict[int, int]) -> int | float:
    try:
        words = [words_by_address[spec.address + i] for i in range(spec.words)]
    except KeyError as exc:
        raise DriverError(f"{rmap.model}: register {exc.args[0]:#06x} was not read") from exc
    if spec.words == 2 and rmap.word_order == "little":
        words.reverse()
    packed = struct.pack(f">{len(words)}H", *words)
    value: int | float = struct.unpack(_TYPES[spec.type], packed)[0]
    return value


def _scaled(rmap: RegisterMap, spec: RegisterSpec, raw: int | float) -> int:
    scale = spec.int_scale
    if scale is not None:
        product = raw * scale  # NaN and inf fail the test: Decimal below raises for them
        if -_EXACT_PRODUCT < product < _EXACT_PRODUCT:
            return round(product)  # the Decimal formula's result: see _EXACT_SCALE
    exact = Decimal(raw)  # exact binary value of a float: no decimal rounding before scaling
    if not exact.is_finite():
        raise ProtocolError(f"{rmap.model}: {spec.quantity} register holds {raw}")
    return round(exact * spec.scale)


def decode(rmap: RegisterMap, words_by_address: dict[int, int]) -> dict[str, int]:
    """Every mapped quantity in contract units, from the 16-bit words read."""
    return {
        spec.quantity: _scaled(rmap, spec, _raw(rmap, spec, words_by_address))
        for spec in rmap.registers
    }


_Swap = Callable[[tuple[int, ...]], tuple[int, ...]]


class ReadPlan:
    """``plan_reads(rmap)`` and the quantities from its answers, as ``decode`` gives them.

    What does not change between readings is worked out once: per block, the struct
    format that unpacks every mapped value of its answer in one call (gap words skipped)
    and, for ``word_order = "little"``, which words to swap first. Each register is
    decoded from the answer of its own block (its function's read).
    """

    def __init__(self, rmap: RegisterMap) -> None:
        self.rmap = rmap
        self.blocks = plan_reads(rmap)
        by_block: list[list[RegisterSpec]] = [[] for _ in self.blocks]
        for spec in rmap.registers:
            i = next(i for i, b in enumerate(self.blocks) if _covers(b, spec))
            by_block[i].append(spec)
        self._unpackers: list[tuple[_Swap | None, struct.Struct, struct.Struct]] = []
        position: dict[str, int] = {}  # quantity -> index in all blocks' unpacked values
        for block, specs in zip(self.blocks, by_block, strict=True):
            fmt, at, order = ">", block.address, list(range(block.count))
            for spec in sorted(specs, key=lambda s: s.address):
                gap_bytes = 2 * (spec.address - at)
                # the type's struct code, without its byte order
                fmt += (f"{gap_bytes}x" if gap_bytes else "") + _TYPES[spec.type][1]
                at = spec.end
                if spec.words == 2 and rmap.word_order == "little":
                    w = spec.address - block.address
                    order[w], order[w + 1] = order[w + 1], order[w]
                position[spec.quantity] = len(position)
            swap = itemgetter(*order) if order != list(range(block.count)) else None
            self._unpackers.append((swap, struct.Struct(f">{block.count}H"), struct.Struct(fmt)))
        self._fields = tuple((position[s.quantity], s) for s in rmap.registers)

    def decode(self, answers: Sequence[tuple[int, ...]]) -> dict[str, int]:
        """Every mapped quantity, from the words read: one tuple per block, in order."""
        raws: list[int | float] = []
        for (swap, words, values), answer in zip(self._unpackers, answers, strict=True):
            raws += values.unpack(words.pack(*(answer if swap is None else swap(answer))))
        rmap = self.rmap
        return {spec.quantity: _scaled(rmap, spec, raws[i]) for i, spec in self._fields}


def _covers(block: ReadBlock, spec: RegisterSpec) -> bool:
    return (block.function == spec.function and block.address <= spec.address
            and spec.end <= block.address + block.count)


def decode_serial(rmap: RegisterMap, words_by_address: dict[int, int]) -> str:
    if rmap.serial is None:
        raise DriverError(f"{rmap.model}: the map has no serial register")
    return str(_raw(rmap, rmap.serial, words_by_address))
