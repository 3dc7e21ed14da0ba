"""What the runtime checks at start, before it opens the store: the installation has
what the config needs, and the key files the config names can be read. Either fails as
a ConfigError naming the config key, so the technician sees which line to mend."""

from __future__ import annotations

import importlib.util

from agent.config import Config
from agent.errors import AgentError, ConfigError
from agent.uplink.cose import read_hex_key


def read_keys(cfg: Config) -> tuple[bytes, bytes]:
    """(the command key, the token key) from the files the config names."""
    errors = []
    keys = []
    for name, path in (("security.command_key_file", cfg.security.command_key_file),
                       ("security.token_key_file", cfg.security.token_key_file)):
        try:
            keys.append(read_hex_key(path))
        except AgentError as exc:
            errors.append((name, str(exc)))
    if errors:
        raise ConfigError(errors)
    return keys[0], keys[1]


def check_installed(cfg: Config) -> None:
    """What the config needs that the installation may lack; ConfigError naming the key.
    (Not in check-config: flash.sh runs that on the technician's machine, before the
    board's own packages are installed.) pyca/cryptography has no PyPI wheel for 32-bit
    ARM, where it is the dlms-security extra: there a board may be without it."""
    if importlib.util.find_spec("cryptography") is not None:
        return
    missing = [(f"meter[{i}].ek_file", "DLMS security needs the cryptography package, which "
                "is not installed (on 32-bit ARM: pip install 'meter-agent[dlms-security]')")
               for i, m in enumerate(cfg.meters) if m.ek_file is not None]
    if missing:
        raise ConfigError(missing)

