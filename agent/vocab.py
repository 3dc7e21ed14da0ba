"""The contract's words, written once: pure tuples, no imports (portable to
MicroPython like uplink/wire.py, which imports them).

Order matters only where it is said: QUANTITIES is the wire order of a series
(CONTRACT 4); the others are sets written in the contract's own order.
"""

# The quantities a reading may carry, in wire order (CONTRACT 4). A quantity the
# meter does not measure is absent, never zero.
QUANTITIES = ("import_wh", "export_wh", "p_w", "v_dv", "i_ma", "f_chz", "pf_milli")
# the instantaneous ones, stripped first at the storage bound (data_dropped
# detail.quantities, CONTRACT 5): the energy registers stay
INSTANTANEOUS = ("p_w", "v_dv", "i_ma", "f_chz", "pf_milli")
# tamper detail.kind (CONTRACT 5)
TAMPER_KINDS = ("cover_open", "magnet", "neutral_missing", "reverse_current", "other")
# relay detail.state (CONTRACT 5), also a relay's intent and its read-back state
RELAY_STATES = ("open", "closed", "armed")
# ledger entry kinds (CONTRACT 6)
ENTRY_KINDS = ("topup", "token", "energy", "fixed", "duty", "adjust")
# reply codes (CONTRACT 7): "ok", then every code a CommandError may carry
REPLY_CODES = (
    "ok", "bad_mac", "expired", "malformed", "unknown_op", "invalid_args",
    "unknown_account", "unknown_meter", "failed",
)
# meter protocols a bus may speak (CONTRACT 2)
PROTOCOLS = ("modbus", "iec62056-21", "dlms")
