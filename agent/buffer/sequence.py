"""The framing of the store's rows: a row is a CBOR sequence (RFC 8742) of items.

The store keeps items as opaque bytes (their forms are uplink/forming.py's; a reading
is queued with its meter, its run key, so writing never reads an item). Reading one
back takes two facts of the framing, named here, the one module of buffer/ that reads
CBOR (cbor2 directly: these are the store's own bytes, and buffer/ does not import
uplink/, whose hardened reader is for bytes from outside):

  split_sequence  where each item of a row ends: ``Store.pending_items`` (tools and
                  tests) and the simulation's observer; forming reads whole rows
  meter_of        the meter of a reading item (``[m, t, ...]``, or schema 1's
                  ``{"m", "t", "v"}`` map): only the schema-1 migration, whose rows
                  had no meter column
"""

from __future__ import annotations

import io

import cbor2  # our own bytes: the hardened reader (uplink/cbor.py) is for bytes from outside


def meter_of(item: bytes) -> str:
    """The meter of a reading item: ``[m, t, ...]`` (schema 1: ``{"m": ...}``)."""
    d = cbor2.loads(item)
    meter = d["m"] if isinstance(d, dict) else d[0]
    assert isinstance(meter, str), meter
    return meter


def split_sequence(data: bytes) -> list[bytes]:
    """The items of a CBOR sequence (RFC 8742), each as its own bytes."""
    fp = io.BytesIO(data)
    decoder = cbor2.CBORDecoder(fp)
    out = []
    start = 0
    while start < len(data):
        decoder.decode()
        out.append(data[start:fp.tell()])
        start = fp.tell()
    return out
