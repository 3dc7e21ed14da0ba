"""The DLMS package's exceptions, under ``agent.errors``.

    DriverError
     ├── ProtocolError
     │    └── DlmsProtocolError          bytes or APDUs that break DLMS/COSEM or HDLC rules
     │         ├── DlmsChecksumError     HCS or FCS mismatch (also an agent ChecksumError)
     │         ├── DlmsIncompleteError   nothing, or part of a frame, before the deadline
     │         └── DlmsStateError        an event the connection table does not allow
     ├── DlmsAssociationError            the meter refused the association (AARE result)
     ├── SecurityError                   (agent.errors)
     │    └── DlmsSecurityError          HLS or ciphering failed; ``why`` says how (below)
     └── DeviceException                 (agent.errors) a GET/ACTION answered with an error code

``device.py`` turns ``DlmsIncompleteError`` into ``agent.errors.TimeoutError_``.

``DlmsSecurityError.why`` is one of ``SECURITY_WHY`` (the agent puts it in an uplink
event, so the vocabulary is fixed):
    auth_failed            HLS pass 4 did not verify, or the meter refused ours (pass 3, or
                           an AARE with authentication-failure)
    bad_tag                a GCM tag does not verify (wrong key, tampered frame), or a
                           response that had to be authenticated was not
    replayed_counter       a response's invocation counter is not above the last one seen
                           (or the meter refused ours as used)
    system_title_mismatch  the AARE's responding-AP-title is not the configured one (a
                           swapped meter), or a ciphered response names another title
    counter_exhausted      no unused invocation counter value is left (2^32-1 reached, or
                           the counter file cannot prove which values were used)
    key_missing            a key, key file or system title needed for HLS is not there
A security error is never retried by the bus and never leads to a relay change: the
ACTION is only sent once the association's HLS has verified both ways.
"""

from __future__ import annotations

from typing import Final

from agent.errors import ChecksumError, DriverError, ProtocolError, SecurityError

SECURITY_WHY: Final = ("auth_failed", "bad_tag", "replayed_counter", "system_title_mismatch",
                       "counter_exhausted", "key_missing")


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


class DlmsSecurityError(SecurityError):
    """HLS authentication or APDU protection failed; ``why`` is one of ``SECURITY_WHY``.

    The message names what failed and never carries key bytes.
    """

    def __init__(self, message: str, why: str) -> None:
        if why not in SECURITY_WHY:
            raise ValueError(f"DlmsSecurityError why {why!r} is not one of {SECURITY_WHY}")
        super().__init__(message, why)
