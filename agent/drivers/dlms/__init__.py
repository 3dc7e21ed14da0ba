"""DLMS/COSEM over HDLC (IEC 62056-46/-5-3/-6-2; India's companion spec IS 15959).

    hdlc.py        HDLC frame format type 3: frames, addresses, FCS, a stream reader
    axdr.py        A-XDR data (the ``Data`` CHOICE of IEC 62056-6-2 §4.1.5)
    apdu.py        ACSE and xDLMS APDUs: AARQ/AARE (LLS), GET, ACTION, RLRQ/RLRE
    connection.py  the client's connection state machine (a table) and HDLC link, sans-IO
    device.py      ``DlmsMeter`` and ``probe``: the driver over a ``Transport``
    errors.py      the package's exceptions (drawn there)

Nothing is imported here, so the pure codecs can be imported without pyserial.
"""
