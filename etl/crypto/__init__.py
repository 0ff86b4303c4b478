"""Pure cryptography: key decoding, masking, sealing chunks, the vault's envelope, the audit chain."""
