"""The framing of the store's rows: a row is a CBOR sequence (RFC 8742) of items.

The store keeps items as opaque bytes (their forms are uplink/forming.py's); only two
facts of the framing are its own: where one item of a row ends (``split_sequence``,
for tools and the simulation's observer) and the meter a reading item belongs to (its
run key, ``meter_of``: the first field of ``[m, t, ...]``, or ``m`` of a schema-1
``{"m", "t", "v"}`` map). This is the one module of buffer/ that reads CBOR.
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
