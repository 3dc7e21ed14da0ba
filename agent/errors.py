"""The agent's one exception tree, every class the package defines (where each lives
is in brackets when it is not this module).

    AgentError
     ├── ConfigError          a config file is wrong; carries every (key path, message)
     ├── DriverError          something on a meter bus went wrong
     │    ├── ProtocolError   bytes that do not form a valid frame of the protocol
     │    │    ├── ChecksumError   a frame whose CRC/BCC does not match
     │    │    ├── ModbusProtocolError               [drivers/modbus/codec.py]
     │    │    │    ├── ModbusChecksumError (also a ChecksumError)
     │    │    │    └── ModbusIncompleteError        silence at the deadline
     │    │    ├── IecProtocolError                  [drivers/iec62056/codec.py]
     │    │    │    ├── IecChecksumError (also a ChecksumError)
     │    │    │    └── IecIncompleteError
     │    │    └── DlmsProtocolError                 [drivers/dlms/errors.py]
     │    │         ├── DlmsChecksumError (also a ChecksumError)
     │    │         ├── DlmsIncompleteError
     │    │         └── DlmsStateError  an event the connection's state does not allow
     │    ├── TimeoutError_   no (complete) answer within the timeout
     │    ├── DeviceException the device answered with a protocol exception
     │    ├── DlmsAssociationError  the meter refused the association [drivers/dlms/errors.py]
     │    ├── SecurityError   a meter's authentication or message protection failed
     │    │    │              (``why``); never retried, never a relay change
     │    │    └── DlmsSecurityError                 [drivers/dlms/errors.py]
     │    └── PortError       the serial port itself failed (adapter unplugged, I/O
     │                        error): the bus closes it and opens it again
     ├── LedgerError          a ledger rule would be broken (never a partial change)
     ├── RelayError           a relay could not be switched or read back
     ├── StoreError           the durable store failed or is full
     │    └── StoreFullError  no room to write: SQLite's SQLITE_FULL, or ENOSPC (the
     │                        disk is full); the runtime makes room and goes on
     │                        [raised in buffer/store.py, handled with buffer/disk.py]
     ├── CommandError         a command is refused; carries the reply code
     ├── WireError            an uplink or command payload breaks CONTRACT 4-7
     │    │                   [uplink/wire.py]
     │    └── CborError       bytes that are not the CBOR the contract allows
     │                        [uplink/cbor.py]
     └── ControlError         a request on the local control socket is refused
                              [control.py]

Outside the tree, on purpose, because they never leave their module's caller:
    UsageError(Exception)     bad input on the command line: one line, exit 2 [cli.py]
    HttpError(Exception)      a status-page request that cannot be served; the
                              server answers with its ``code`` [web/request.py]
    KeyFileError(ValueError)  a DLMS key file that cannot be used; config turns it into
                              a ConfigError naming the key [drivers/dlms/keys.py]

A per-codec "incomplete" error means the read's deadline passed with nothing, or with
part of a frame; while bytes may still come, the readers answer ``NEED_DATA`` instead.

Lower-layer errors (pyserial, sqlite3, paho) are re-raised as these with
``raise ... from exc`` so callers only ever catch the project's own types.
Each codec defines its own ``ProtocolError`` subclass so that a fuzz test can
assert "parses, or raises this codec's ProtocolError, nothing else".
"""

from __future__ import annotations

from agent.vocab import REPLY_CODES


class AgentError(Exception):
    """Root of every error the agent raises on purpose."""


class ConfigError(AgentError):
    """A config is invalid. ``errors`` lists every ``(key_path, message)``."""

    def __init__(self, errors: list[tuple[str, str]]) -> None:
        self.errors = list(errors)
        super().__init__("; ".join(f"{path}: {msg}" for path, msg in self.errors))


class DriverError(AgentError):
    """A meter bus or meter protocol failure."""


class ProtocolError(DriverError):
    """Bytes that are not a valid frame of the protocol."""


class ChecksumError(ProtocolError):
    """A frame whose checksum (CRC-16, BCC, FCS) does not match."""


class TimeoutError_(DriverError):  # noqa: N801, N818 - the underscore avoids the builtin
    """No complete answer arrived within the timeout."""


class DeviceException(DriverError):  # noqa: N818 - the name protocols give it (Modbus)
    """The device answered with a protocol-level exception (e.g. Modbus exception code)."""

    def __init__(self, message: str, code: int) -> None:
        self.code = code
        super().__init__(message)


class SecurityError(DriverError):
    """A meter's authentication or message protection failed (DLMS HLS, ciphering):
    a wrong key, a replayed counter, a swapped meter. ``why`` names which (a fixed
    vocabulary per protocol: it goes on the wire in a ``meter_security`` event)."""

    def __init__(self, message: str, why: str) -> None:
        self.why = why
        super().__init__(message)


class PortError(DriverError):
    """The serial port failed (open, read, write, flush): no meter can be reached on it
    until it is opened again."""


class LedgerError(AgentError):
    """A ledger operation would break an invariant; nothing was changed."""


class RelayError(AgentError):
    """A relay could not be switched, or its read-back state disagrees."""


class StoreError(AgentError):
    """The durable store failed, or a storage bound was reached."""


class StoreFullError(StoreError):
    """A write found no room: the disk (or the store's page limit) is full. Nothing of
    the failed transaction was kept; after room is made the same work can run again."""


class CommandError(AgentError):
    """A command is refused. ``code`` is the CONTRACT 7 reply code."""

    CODES = frozenset(REPLY_CODES) - {"ok"}

    def __init__(self, code: str, message: str, command_id: str | None = None) -> None:
        assert code in self.CODES, code
        self.code = code
        self.command_id = command_id
        super().__init__(message)
