"""The meter model catalogue: every model a config may name, for every protocol.

A model says what billing needs to know about a meter, whatever it speaks:
how many phases it has and how much current its breaker can pass (the
plausibility bound of a register delta, DOMAIN "Billing") and where its
energy register rolls over. Config validation, charging, scan and the
simulator ask this module; none of them opens a protocol package to learn it.

Modbus models are the declarative register maps (``modbus/maps/*.toml``); the
IEC 62056-21 OBIS readout and the DLMS/COSEM (IS 15959) object model are
standard, so one model name each covers every such meter, with declared
ratings (docs/meters.md says why these values):

  iec62056-21    3 phases x 100 A (the largest whole-current meters); the
                 register's width is not in the readout, so no rollover is
                 assumed (a register that goes back is a bad reading, and a
                 reset is recognised by the register-reset rule)
  dlms-is15959   1 phase x 60 A (IS 13779 whole-current 10-60 A); energy is a
                 double-long-unsigned in Wh, so it rolls over at 2**32 Wh

A leaf, as ``protocol.py`` is: it imports the Modbus maps and nothing above the
drivers, so config imports it without a cycle.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Final

from agent.errors import DriverError

MAX_LINE_VOLTAGE_V: Final = 300  # with the rated current: the most a meter can pass


@dataclass(frozen=True, slots=True)
class MeterModel:
    name: str
    protocol: str  # modbus | iec62056-21 | dlms
    phases: int
    max_current_a: int  # per phase
    register_max_wh: int | None  # the first value the energy register cannot show; None: unknown

    @property
    def max_power_w(self) -> int:
        """The most the meter could pass: a register delta above it is implausible."""
        return self.max_current_a * MAX_LINE_VOLTAGE_V * self.phases


_STANDARD: Final = (
    MeterModel("iec62056-21", "iec62056-21", phases=3, max_current_a=100, register_max_wh=None),
    MeterModel("dlms-is15959", "dlms", phases=1, max_current_a=60, register_max_wh=2**32),
)


@cache
def catalogue() -> dict[str, MeterModel]:
    """Every known model by name (the Modbus maps are read once)."""
    from agent.drivers.modbus.maps import known_models as modbus_models
    from agent.drivers.modbus.maps import load_map

    found: dict[str, MeterModel] = {}
    for name in modbus_models():
        rmap = load_map(name)
        found[name] = MeterModel(name, "modbus", rmap.phases, rmap.max_current_a,
                                 rmap.register_max_wh)
    for model in _STANDARD:
        assert model.name not in found, f"model {model.name} defined twice"
        found[model.name] = model
    return found


def model(name: str) -> MeterModel:
    """The model ``name``; DriverError naming the known ones if there is none."""
    models = catalogue()
    if name not in models:
        raise DriverError(f"unknown meter model {name!r}; known: {', '.join(sorted(models))}")
    return models[name]


def models_for(protocol: str | None = None) -> tuple[str, ...]:
    """Model names a config may give for ``protocol`` (every protocol's if None)."""
    return tuple(sorted(m.name for m in catalogue().values()
                        if protocol is None or m.protocol == protocol))
