"""A ``DlmsMeter`` from a board config's ``[[meter]]``: password, client, keys, counters.

How the IS 15959 settings of a meter resolve (docs/dlms.md, "Clients and security"):

    security   "none"      no authentication; client 0x10 unless ``client`` says otherwise
               "lls"       the LLS password (``password_file``, else the factory
                           "00000000"); client as configured, default 0x10 (the
                           behaviour before security existed)
               "hls-gmac"  HLS-GMAC and ciphering for the readings too; client 0x30
                           unless ``client`` says otherwise
               not given   "hls-gmac" when ``client`` is 0x30 and both key files are
                           given, else "lls"
    keys       ``ek_file`` and ``ak_file`` given: the relay goes through the
               utility-settings client 0x30 with HLS-GMAC, whatever the readings use
               (with "hls-gmac" readings on another client, through that one)
    titles     the client's (gateway's) system title comes from the caller (the
               ``[gateway] system_title``); ``system_title`` of the meter, if given,
               is the only responding-AP-title accepted
    counters   ``<data_dir>/dlms/<meter id>.ic.json`` (``counters.py``); with no
               data_dir they live in memory only, with a warning (tests)

Errors are ``DriverError``s (the bus thread handles those): a key file that cannot be
read or no client system title is ``DlmsSecurityError`` why "key_missing" (the key
path, never its bytes, in the message).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from agent.drivers.dlms.counters import InvocationCounters
from agent.drivers.dlms.device import UTILITY_SETTINGS_CLIENT, DlmsMeter
from agent.drivers.dlms.errors import DlmsSecurityError
from agent.drivers.dlms.hdlc import PUBLIC_CLIENT
from agent.drivers.dlms.keys import KeyFileError, read_key_file
from agent.drivers.dlms.security import DlmsSecurity
from agent.errors import DriverError

if TYPE_CHECKING:
    from agent.clock import Clock
    from agent.config import MeterConfig
    from agent.drivers.transport import Transport

log = logging.getLogger("agent.dlms")

FACTORY_PASSWORD = b"00000000"  # IS 15959's factory LLS password
SECURITY_MODES = ("none", "lls", "hls-gmac")


def resolve_security(meter: MeterConfig) -> str:
    """The reading association's security: the configured one, or its default."""
    if meter.security is not None:
        return meter.security
    keys = meter.ek_file is not None and meter.ak_file is not None
    return "hls-gmac" if keys and meter.client == UTILITY_SETTINGS_CLIENT else "lls"


def _key(meter: MeterConfig, name: str, path: Path) -> bytes:
    try:
        return read_key_file(path)
    except KeyFileError as exc:
        raise DlmsSecurityError(f"meter {meter.id}: {name}: {exc}", "key_missing") from None


def dlms_meter_from_config(transport: Transport, meter: MeterConfig, *,
                           data_dir: Path | None = None, system_title: bytes | None = None,
                           clock: Clock | None = None) -> DlmsMeter:
    """The driver for one DLMS ``[[meter]]`` (see the module doc)."""
    mode = resolve_security(meter)
    password: bytes | None = None
    if mode == "lls":
        password = FACTORY_PASSWORD
        if meter.password_file is not None:
            try:
                password = meter.password_file.read_bytes().rstrip(b"\r\n")
            except OSError as exc:
                raise DriverError(f"meter {meter.id}: cannot read password_file "
                                  f"{meter.password_file}: {exc.strerror}") from exc
    security = None
    if meter.ek_file is not None and meter.ak_file is not None:
        if system_title is None:
            raise DlmsSecurityError(f"meter {meter.id}: no client system title for HLS "
                                    "([gateway] system_title, passed to the bus)",
                                    "key_missing")
        directory = None if data_dir is None else Path(data_dir) / "dlms"
        if directory is None:
            log.warning("event=dlms_counters_in_memory meter=%s reason=no data_dir: "
                        "invocation counters restart with the agent (tests only)", meter.id)
        security = DlmsSecurity(
            client_title=system_title,
            ek=_key(meter, "ek_file", meter.ek_file),
            ak=_key(meter, "ak_file", meter.ak_file),
            counters=InvocationCounters(directory, meter.id),
            server_title=meter.system_title,
        )
    elif mode == "hls-gmac":  # the config loader refuses this; a hand-built config may not
        raise DlmsSecurityError(f"meter {meter.id}: hls-gmac needs ek_file and ak_file",
                                "key_missing")
    default_client = UTILITY_SETTINGS_CLIENT if mode == "hls-gmac" else PUBLIC_CLIENT
    client = meter.client if meter.client is not None else default_client
    # HLS readings on another client than 0x30 (some meters): the relay shares them.
    settings = client if mode == "hls-gmac" else UTILITY_SETTINGS_CLIENT
    return DlmsMeter(transport, meter.address, password=password, client_address=client,
                     clock=clock, security=security, settings_client=settings)
