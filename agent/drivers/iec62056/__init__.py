"""IEC 62056-21 mode C: codec (sans-IO), OBIS mapping, device."""
