"""The SAMD validating admission webhook, imported as ``samd.webhook``."""
