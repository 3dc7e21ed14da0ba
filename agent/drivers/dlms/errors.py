"""The DLMS package's exceptions, under ``agent.errors``.

    DriverError
     ├── ProtocolError
     │    └── DlmsProtocolError          bytes or APDUs that break DLMS/COSEM or HDLC rules
     │         ├── DlmsChecksumError     HCS or FCS mismatch (also an agent ChecksumError)
     │         ├── DlmsIncompleteError   nothing, or part of a frame, before the deadline
     │         └── DlmsStateError        an event the connection table does not allow
     ├── DlmsAssociationError            the meter refused the association (AARE result)
     └── DeviceException                 (agent.errors) a GET/ACTION answered with an error code

``device.py`` turns ``DlmsIncompleteError`` into ``agent.errors.TimeoutError_``.
"""

from __future__ import annotations

from agent.errors import ChecksumError, DriverError, ProtocolError


class DlmsProtocolError(ProtocolError):
    """Bytes, a frame or an APDU that is not valid DLMS/COSEM over HDLC."""


class DlmsChecksumError(DlmsProtocolError, ChecksumError):
    """An HDLC frame whose HCS or FCS does not match."""


class DlmsIncompleteError(DlmsProtocolError):
    """The deadline passed with no frame, or inside one."""


class DlmsStateError(DlmsProtocolError):
    """An event the client state table has no transition for."""


class DlmsAssociationError(DriverError):
    """The meter answered the AARQ with a rejection.

    ``result`` is the AARE result (1 rejected-permanent, 2 rejected-transient),
    ``diagnostic`` the result-source-diagnostic (13: authentication failure).
    """

    def __init__(self, message: str, result: int, diagnostic: int) -> None:
        self.result = result
        self.diagnostic = diagnostic
        super().__init__(message)
