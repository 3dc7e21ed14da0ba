"""Frozen records that run on CPython and on MicroPython.

The ledger's value types are written as ``@dataclass(frozen=True, slots=True)``
classes. On CPython ``dataclass`` here *is* ``dataclasses.dataclass`` (mypy sees
the real thing too). MicroPython has no ``dataclasses`` and drops every
annotation at compile time, so a class cannot say its fields through
annotations there: each record therefore also lists them, in order, in a
``FIELDS`` tuple, and ``portable_dataclass`` builds the class from that. A test
checks that ``FIELDS`` equals the dataclass fields of every ledger record, so the
two never drift.

What the fallback keeps: keyword and positional constructors, defaults (the
class attributes that ``name: T = default`` leaves behind), ``__post_init__``,
equality, hashing and a dataclass-like ``repr``. It makes instances frozen where
``object.__setattr__`` exists to store past the class's refusing ``__setattr__``
(CPython without dataclasses, as the tests run it). On MicroPython they are
immutable by convention only: most builds lack ``object.__setattr__``, and
MicroPython decides when a class is created whether its instances consult
``__setattr__`` at all. Nothing in agent/ledger assigns to a record, and the
CPython suite proves it, because there every record is a real frozen dataclass.
"""

from __future__ import annotations

TYPE_CHECKING = False  # mypy treats any name TYPE_CHECKING as true; no `typing` at run time
if TYPE_CHECKING:
    from collections.abc import Callable
    from dataclasses import dataclass as dataclass


# object.__setattr__ lets __init__ store values past the class's own refusal.
_CAN_FREEZE = hasattr(object, "__setattr__")


def _frozen_setattr(self: object, name: str, value: object) -> None:
    raise AttributeError("cannot assign to field " + repr(name) + " of a frozen record")


def _frozen_delattr(self: object, name: str) -> None:
    raise AttributeError("cannot delete field " + repr(name) + " of a frozen record")


def portable_dataclass(
    frozen: bool = True, slots: bool = True, freeze: bool = _CAN_FREEZE
) -> Callable[[type], type]:
    """A small stand-in for ``dataclass(frozen=True, slots=True)`` driven by ``cls.FIELDS``.

    ``slots`` is accepted and ignored (MicroPython ignores ``__slots__``);
    ``freeze`` exists so CPython tests can exercise both MicroPython variants.
    """
    if not frozen:
        raise TypeError("only frozen records are supported")

    def build(cls: type) -> type:
        names = getattr(cls, "FIELDS", None)
        if not isinstance(names, tuple) or not names:
            raise TypeError(cls.__name__ + " needs a FIELDS tuple to be a record")
        # A class attribute named like a field is that field's default.
        defaults = {}
        for name in names:
            if hasattr(cls, name):
                defaults[name] = getattr(cls, name)
        required_seen_default = False
        for name in names:
            if name in defaults:
                required_seen_default = True
            elif required_seen_default:
                raise TypeError("non-default field " + repr(name) + " follows a default one")
        post_init = getattr(cls, "__post_init__", None)

        def __init__(self: object, *args: object, **kwargs: object) -> None:
            if len(args) > len(names):
                raise TypeError(cls.__name__ + " takes at most " + str(len(names)) + " arguments")
            values = {}
            for i, value in enumerate(args):
                values[names[i]] = value
            for key, value in kwargs.items():
                if key not in names:
                    raise TypeError(cls.__name__ + " got an unexpected keyword " + repr(key))
                if key in values:
                    raise TypeError(cls.__name__ + " got multiple values for " + repr(key))
                values[key] = value
            for name in names:
                if name not in values:
                    if name not in defaults:
                        raise TypeError(cls.__name__ + " missing argument " + repr(name))
                    values[name] = defaults[name]
                if freeze:
                    object.__setattr__(self, name, values[name])
                else:
                    setattr(self, name, values[name])
            if post_init is not None:
                post_init(self)

        def _values(self: object) -> tuple[object, ...]:
            return tuple(getattr(self, name) for name in names)

        def __eq__(self: object, other: object) -> bool:
            # False rather than NotImplemented: records only ever equal their own kind.
            return other.__class__ is self.__class__ and _values(self) == _values(other)

        def __ne__(self: object, other: object) -> bool:
            return not __eq__(self, other)

        def __hash__(self: object) -> int:
            return hash(_values(self))

        def __repr__(self: object) -> str:
            parts = [name + "=" + repr(getattr(self, name)) for name in names]
            return cls.__name__ + "(" + ", ".join(parts) + ")"

        setattr(cls, "__init__", __init__)  # noqa: B010 - assigning methods onto the class
        setattr(cls, "__eq__", __eq__)  # noqa: B010
        setattr(cls, "__ne__", __ne__)  # noqa: B010
        setattr(cls, "__hash__", __hash__)  # noqa: B010
        setattr(cls, "__repr__", __repr__)  # noqa: B010
        if freeze:
            setattr(cls, "__setattr__", _frozen_setattr)  # noqa: B010
            setattr(cls, "__delattr__", _frozen_delattr)  # noqa: B010
        return cls

    return build


if not TYPE_CHECKING:
    try:
        from dataclasses import dataclass
    except ImportError:  # MicroPython: no dataclasses module
        dataclass = portable_dataclass
