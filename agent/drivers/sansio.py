"""What every sans-IO reader shares (STYLE rule 1): the ``NEED_DATA`` answer.

A reader is fed bytes (``receive_data``) and asked for its next event
(``next_event``): a frame, or ``NEED_DATA`` when the bytes so far are a valid
beginning and more may come, or an error of its codec when they cannot be one.
"Not yet complete" is an answer, not an error (h11's convention); only at a
deadline does a reader turn a part-frame into its codec's ``…IncompleteError``.

The Modbus, IEC 62056-21 and DLMS/COSEM readers all answer this one sentinel,
so a caller tests ``event is NEED_DATA`` whatever the protocol. Pure: no imports
but typing, so it runs wherever the codecs run (MicroPython included).
"""

from __future__ import annotations

from typing import Final


class NeedData:
    """The type of ``NEED_DATA`` (one instance; compare with ``is``)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = NeedData()
