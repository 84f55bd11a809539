"""Room events: room versions, the PDU format (hashes, redaction, signing, IDs) and auth rules."""
