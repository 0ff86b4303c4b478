"""The PII officers' service (reveal, erase, rotations, audit verify) and the audit anchors."""
