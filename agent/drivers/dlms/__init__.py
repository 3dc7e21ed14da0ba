"""DLMS/COSEM over HDLC (IEC 62056-46/-5-3/-6-2; India's companion spec IS 15959).

    hdlc.py        HDLC frame format type 3: frames, addresses, FCS, a stream reader
    axdr.py        A-XDR data (the ``Data`` CHOICE of IEC 62056-6-2 §4.1.5)
    acse.py        AARQ/AARE (LLS, HLS, ciphered InitiateRequest/-Response), RLRQ/RLRE
    apdu.py        xDLMS APDUs: GET, ACTION, exceptions; ``decode_apdu`` for every APDU
    ciphered.py    the ciphered APDUs' layout (glo-, ded-, general-glo/ded-ciphering)
    ciphering.py   security suite 0: AES-GCM-128 and HLS-GMAC (pyca/cryptography)
    security.py    HLS-GMAC and the protection of one association (``DlmsSecurity``)
    connection.py  the client's connection state machine (a table) and HDLC link, sans-IO
    session.py     one client's association over a ``Transport``: GET, blocks, ACTION
    device.py      ``DlmsMeter`` and ``probe``: the driver over a ``Transport``
    counters.py    durable invocation counters (a file per meter)
    keys.py        key files and system titles
    params.py      ``dlms_meter_from_config``: a ``DlmsMeter`` from a ``[[meter]]``
    errors.py      the package's exceptions (drawn there)

Nothing is imported here, so the pure codecs can be imported without pyserial.
"""
